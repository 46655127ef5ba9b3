"""The `vllm` backend: Ray's own `ray.data.llm.build_processor` with a
`vLLMEngineProcessorConfig` (chat template, tokenize, vLLM engine, detokenize
stages), wrapped so its rows come out in the engine's response contract.

What Ray's processor does not give, derived here: `finish_reason` (it reports
token counts only: "length" when max_tokens were generated, else "stop"), a
failed row as "failed: <error>" (from `__inference_error__`; error rows bypass
postprocess, so normalising happens in a map after the processor), and logprobs
as the JSON top-k maps of engine.llm.responses.
"""
from __future__ import annotations

import json
from functools import partial

import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig

from engine.config.models import RoleConfig
from engine.llm.cache import request_seed
from engine.llm.parts import write_parts
from engine.llm.responses import DRAW_COL, PROMPT_COL, decode_prompt, failed, finish_reason_from_counts

CPU_MAX_MODEL_LEN = 512
# vLLM on CPU reserves gpu_memory_utilization (0.9) of the node's *total* memory unless the
# KV cache is sized, and refuses to start when less than that is free (a laptop with a
# browser open, a node shared with Ray's object store and other actors). The engine sizes
# it itself, so a config starts the same through make demo, python jobs/lion.py and ray job
# submit; a role's engine_kwargs (kv_cache_memory_bytes) or VLLM_CPU_KVCACHE_SPACE in the
# engine's environment override it.
CPU_KV_CACHE_BYTES = 1 << 30


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


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
    return f"{role.parallelism.replicas} replica(s) of {len(placement['bundles'])} x {placement['bundles'][0]}{one_node}"


def sampling_params(role: RoleConfig, structured_output: dict | None, logprobs: int | None, gpu: bool) -> dict:
    s = role.sampling
    params = {**s.extra, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
    if s.seed is not None and gpu:
        params["seed"] = s.seed
    if logprobs is not None:
        params["logprobs"] = logprobs
    if structured_output:
        # A JSON schema travels as a string: Arrow would widen a dict into a struct.
        params["structured_outputs"] = {k: json.dumps(v) if k == "json" else v for k, v in structured_output.items()}
    return params


def to_engine_request(row: dict, chat: bool, params: dict) -> dict:
    row = dict(row)
    prompt = decode_prompt(row.pop(PROMPT_COL))
    draw = row.pop(DRAW_COL, None)
    if draw is not None and "seed" in params:  # a seeded GPU engine: the draw's own seed
        params = {**params, "seed": request_seed(params["seed"], draw)}
    if isinstance(prompt, list) != chat:
        raise ValueError(f"row id={row.get('id')!r}: to_prompt must return the same kind (messages or string) "
                         "for every row of a vllm stage")
    return {**row, ("messages" if chat else "prompt"): prompt, "sampling_params": params}


def logprob_steps(steps) -> list[dict[str, float]] | None:
    """Ray's [{token_id: {logprob, rank, decoded_token}}] -> [{token_text: logprob}]."""
    if steps is None:
        return None
    return [{v["decoded_token"]: v["logprob"] for v in step.values() if v is not None} for step in steps]


def to_response(row: dict, *, keep: list[str], role_name: str, max_tokens: int, with_logprobs: bool,
                max_model_len: int | None = None) -> dict:
    out = {k: row.get(k) for k in keep}
    error = row.get("__inference_error__") or ""
    out["role"] = role_name
    if error:
        out.update(text=None, finish_reason=failed(str(error)[:200]), prompt_tokens=0, completion_tokens=0)
    else:
        done, prompt = int(row.get("num_generated_tokens") or 0), int(row.get("num_input_tokens") or 0)
        out.update(text=row.get("generated_text"), finish_reason=finish_reason_from_counts(done, max_tokens, prompt, max_model_len),
                   prompt_tokens=prompt, completion_tokens=done)
    if with_logprobs:
        steps = None if error else logprob_steps(row.get("logprobs"))
        out["logprobs"] = None if steps is None else json.dumps(steps, ensure_ascii=False)
    return out


def processor_config(role: RoleConfig, gpu: bool, *, chat: bool, draw: str | None = None) -> vLLMEngineProcessorConfig:
    """Ray Data's vLLM stage for one role: `replicas` engines, each in its engine_placement."""
    # Without GPUs vLLM's Ray metrics would import ray.serve (docs/environment.md).
    extra = {} if gpu else {"log_engine_metrics": False}
    return vLLMEngineProcessorConfig(
        model_source=role.model, engine_kwargs=engine_kwargs(role, gpu, draw), batch_size=role.parallelism.batch_size,
        concurrency=role.parallelism.replicas, chat_template_stage=chat, tokenize_stage=True, detokenize_stage=True,
        should_continue_on_error=True, placement_group_config=engine_placement(role, gpu), **extra,
    )


def run_vllm(role: RoleConfig, prompted: "ray.data.Dataset", *, chat: bool, keep: list[str], role_name: str,
             structured_output: dict | None, logprobs: int | None, start_timeout_s: float,
             draw: str | None = None, parts=None) -> tuple["ray.data.MaterializedDataset", float]:
    """-> (the stage's answers in the response contract, GPUs held). The engines get
    `start_timeout_s` to be placed and loaded (Ray Data waits for its actor pool's first
    actors that long, each of the stage's actor pools in turn: the chat-template and tokenizer
    workers, then the engines); past it the stage ends with engine.llm.fit.WaitedTooLong."""
    from engine.llm.engine_start import ResourceWatch
    from engine.llm.fit import WaitedTooLong, cluster_gpus

    gpu = cluster_has_gpus()
    tp, replicas = role.parallelism.tensor_parallel_size, role.parallelism.replicas
    config = processor_config(role, gpu, chat=chat, draw=draw)
    engine = config.engine_kwargs
    params = sampling_params(role, structured_output, logprobs, gpu)
    processor = build_processor(config, preprocess=partial(to_engine_request, chat=chat, params=params))
    out = processor(prompted).map(partial(
        to_response, keep=keep, role_name=role_name, max_tokens=role.sampling.max_tokens,
        with_logprobs=logprobs is not None, max_model_len=engine.get("max_model_len")))
    out = write_parts(out, parts)  # each block kept as it finishes (engine.llm.parts)
    out.context.wait_for_min_actors_s = start_timeout_s
    with ResourceWatch(for_s=3 * start_timeout_s + 120) as watch:  # three pools' deadlines
        try:
            done = out.materialize()
        except ray.exceptions.GetTimeoutError as e:
            if "starting actors" not in str(e):
                raise
            what = "its engines' resources" if watch.waited() else "its engines to start"
            raise WaitedTooLong(role_name, engine_ask(role, gpu), start_timeout_s, cluster_gpus().describe(),
                                what=what) from None
    return done, float(tp * replicas if gpu else 0)

