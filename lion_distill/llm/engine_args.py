"""A role's vLLM engine as configuration: the engine arguments, the placement group and the
key that tells which roles one engine can serve. Pure functions of the role's config, so the
plan, the fit check and both vLLM backends (per-stage engines in Ray Data, long-lived ones in
Ray Serve LLM) read one definition without importing Ray or vLLM."""

from __future__ import annotations

import hashlib
import json

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


def engine_kwargs(role: RoleConfig, gpu: bool, draw: str | None = None) -> dict:
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


def engine_placement(role: RoleConfig, gpu: bool, cpus_per_rank: int = 1) -> dict:
    """The placement group of one engine (one replica), as Ray Serve LLM's and Ray Data's
    `placement_group_config` take it. On GPUs one bundle per tensor- (x pipeline-) parallel
    rank, STRICT_PACK: every rank on one node, as tensor parallelism's all-reduces need (PACK,
    Ray's default, straddles nodes when no single node has the GPUs free). `cpus_per_rank`:
    Ray Data's engine actors need a CPU in their bundle (as in Ray's own default); Serve adds
    the replica actor's CPU to the first bundle itself. Without GPUs the engine schedules only
    on an explicit CPU bundle (docs/environment.md)."""
    if not gpu:
        return {"bundles": [{"CPU": 1}]}
    ranks = role.parallelism.tensor_parallel_size * role.engine_kwargs.get("pipeline_parallel_size", 1)
    bundle = {"GPU": 1, **({"CPU": cpus_per_rank} if cpus_per_rank else {})}
    return {"bundles": [dict(bundle) for _ in range(ranks)], "strategy": "STRICT_PACK"}


def engine_ask(role: RoleConfig, gpu: bool) -> str:
    """What a role's engines ask Ray for, as a deadline's line says it."""
    placement = engine_placement(role, gpu, cpus_per_rank=0)
    one_node = ", STRICT_PACK (one node)" if placement.get("strategy") == "STRICT_PACK" else ""
    return (
        f"{role.parallelism.replicas} replica(s) of {len(placement['bundles'])} x {placement['bundles'][0]}{one_node}"
    )


def serve_engine_kwargs(role: RoleConfig, gpu: bool) -> dict:
    """vLLM engine arguments of a long-lived engine. The engine-level seed that per-stage
    CPU engines take from the role's sampling is left out (unless engine_kwargs sets it):
    roles that differ only in sampling share an engine, and sampling is per request."""
    kw = engine_kwargs(role, gpu)
    if "seed" not in role.engine_kwargs:
        kw.pop("seed", None)
    if not gpu:
        kw.setdefault("max_model_len", CPU_MAX_MODEL_LEN)
    return kw


def engine_key(role: RoleConfig, gpu: bool) -> str:
    """Equal for roles that one engine can serve: same model, engine settings and replicas."""
    spec = {"model": role.model, "engine": serve_engine_kwargs(role, gpu), "replicas": role.parallelism.replicas}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
