"""One interface for an LLM role over a Ray Dataset: `generate(role, rows, to_prompt, ...)`.

Backends: `vllm` (Ray Data LLM's vLLM processor, or inside an
lion_distill.llm.serving.job_engines block the job's long-lived Ray Serve LLM engine), `hf` (transformers generate in
an actor pool; the only path for T5) and `openai` (any OpenAI-compatible
endpoint, with a cluster-wide rate limiter, retries, a response cache and a
budget). The batch callables `HFGenerator` and `OpenAIGenerator` import no Ray
and run bare too; import them from their modules (lion_distill.llm.hf,
lion_distill.llm.openai_client) where Ray is not installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lion_distill.config.models import RoleConfig
from lion_distill.data.rundir import RunDir
from lion_distill.llm.parts import Parts, write_parts
from lion_distill.llm.responses import (
    PROMPT_COL,
    accounting_columns,
    attach_prompt,
    decode_prompt,
    fill_record,
    split_accounting,
)
from lion_distill.metrics import StageRecord, stage_timer

if TYPE_CHECKING:
    import ray

STRUCTURED_KINDS = ("regex", "json", "choice")
OVERLAPPING_BATCHES = 4  # API batches one actor runs at once
ACCOUNTING_BLOCKS = 16  # blocks a stage's accounting task reads


def check_structured_output(structured_output: dict | None, backend: str) -> None:
    if structured_output is None:
        return
    if len(structured_output) != 1 or next(iter(structured_output)) not in STRUCTURED_KINDS:
        raise ValueError(
            f"structured_output: expected exactly one of {STRUCTURED_KINDS}, got {sorted(structured_output)}"
        )
    if not BACKENDS[backend].constrains:
        raise ValueError(
            f"structured_output: the {backend} backend cannot constrain decoding; serve the role with vllm or openai"
        )


@dataclass(frozen=True)
class Call:
    """One generate call as a backend reads it: the stage, the role's name, the rows' own columns,
    and the request settings (lion_distill.llm.generate's arguments)."""

    stage: str
    role_name: str
    columns: list[str]
    run_dir: RunDir | None = None
    structured_output: dict | None = None
    logprobs: int | None = None
    draw: str | None = None
    parts: Parts | None = None


def generate(
    role: RoleConfig,
    rows: ray.data.Dataset,
    to_prompt: Callable[[dict], list[dict] | str],
    *,
    stage: str,
    role_name: str,
    run_dir: RunDir | None = None,
    structured_output: dict | None = None,
    logprobs: int | None = None,
    draw: str | None = None,
    parts: Parts | None = None,
) -> tuple[ray.data.Dataset, StageRecord]:
    """Run `role` over every row.

    -> (materialized dataset, StageRecord). The dataset has every input row with
    its columns, plus `role`, `text`, `finish_reason` ("stop" | "length" | "error";
    text None when "error"), `error_kind` (lion_distill.errors.ErrorKind) and `error`
    (the message; both None unless "error"), `prompt_tokens`, `completion_tokens` and,
    when `logprobs=k`, `logprobs`: a JSON string per row,
    a list with one `{token_text: logprob}` map of the top k per generated token.
    Rows in == rows out; callers join on `id` (order is not guaranteed).

    structured_output: {"regex": str} | {"json": json_schema_dict} | {"choice": [str, ...]}
    (vllm and openai backends). openai: the response cache and the usage ledger
    live under run_dir/llm_cache/ when run_dir is given.

    draw: this call's identity in the run when its rows are samples that must be new,
    e.g. "generation/iter_1/round_2". Each row is then the draw "<draw>/<row id>": it
    enters the openai response cache key (a seed instruction drawn again is asked
    again, not answered from the cache), and the request is seeded with
    `lion_distill.llm.cache.request_seed(role seed, that identity)` (vLLM on GPU and the API
    per request; vLLM on CPU, which cannot seed one request, seeds its engine with
    request_seed(role seed, draw); hf seeds each batch from its first row). Without
    `draw` the same prompt is the same request: a teacher's answer is reused.

    parts: where each finished block is written as it finishes (lion_distill.llm.parts), so a
    call killed midway keeps what it answered; the caller asks only the rest again.
    """
    check_structured_output(structured_output, role.backend)
    backend = BACKENDS[role.backend]
    with stage_timer(stage) as rec:
        call = Call(stage, role_name, list(rows.columns()), run_dir, structured_output, logprobs, draw, parts)
        # One block per generation batch: blocks spread over the replicas (a pool read as one
        # block would go to one), and each is written as it finishes (`parts`). A prompt costs
        # microseconds, a Ray task milliseconds: prompts are built a block at a time.
        batch = batch_rows(role)
        prompted = rows.repartition(target_num_rows_per_block=batch).map_batches(
            attach_prompt(to_prompt, draw), batch_format="pyarrow", batch_size=batch
        )
        out, rec.gpus = backend.run(role, prompted, call)
        out = _account(out.materialize(), rec, api=backend.api)
    expected = rows.count()
    if rec.rows != expected:
        raise RuntimeError(f"{stage}: {expected} rows in, {rec.rows} rows out; this is a bug in lion_distill.llm")
    if backend.api and run_dir is not None:
        from lion_distill.llm.ledger import write_ledger

        write_ledger(run_dir, rec, role_name=role_name, model=role.model, endpoint=role.openai)
    return out, rec


def _vllm(role: RoleConfig, prompted: ray.data.Dataset, call: Call) -> tuple[ray.data.Dataset, float]:
    """The job's long-lived engine for this model (lion_distill.llm.serving, started on first use),
    or Ray Data's vLLM processor with engines of this stage's own. Both write their parts."""
    from lion_distill.config.models import ServingConfig
    from lion_distill.llm import serving
    from lion_distill.llm.vllm_backend import run_vllm

    chat = isinstance(decode_prompt(prompted.take(1)[0][PROMPT_COL]), list) if call.columns else True
    asked = {"structured_output": call.structured_output, "logprobs": call.logprobs, "parts": call.parts}
    engines = serving.active()
    if engines is not None and engines.shared:
        return engines.run(role, prompted, role_name=call.role_name, chat=chat, **asked)
    start_timeout_s = (engines.serving if engines is not None else ServingConfig()).ready_timeout_s
    out = run_vllm(
        role,
        prompted,
        chat=chat,
        keep=call.columns,
        role_name=call.role_name,
        draw=call.draw,
        start_timeout_s=start_timeout_s,
        **asked,
    )
    if engines is not None:
        engines.count_per_stage_start(role, call.role_name)
    return out


def _hf(role: RoleConfig, prompted: ray.data.Dataset, call: Call) -> tuple[ray.data.Dataset, float]:
    """transformers generate in an actor pool: a GPU per replica where the cluster has GPUs."""
    import ray

    from lion_distill.llm.fit import engines_on_gpus
    from lion_distill.llm.hf import HFGenerator

    p = role.parallelism
    gpus = 1.0 if engines_on_gpus() else 0.0
    out = prompted.map_batches(
        HFGenerator,
        fn_constructor_kwargs={"role": role, "role_name": call.role_name, "logprobs": call.logprobs},
        batch_size=p.batch_size,
        compute=ray.data.ActorPoolStrategy(size=p.replicas),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    return write_parts(out, call.parts), gpus * p.replicas


def _openai(role: RoleConfig, prompted: ray.data.Dataset, call: Call) -> tuple[ray.data.Dataset, float]:
    """An OpenAI-compatible endpoint through API actors: the run's gate and budget, its cache joined
    first (only the rest is sent)."""
    import ray

    from lion_distill.llm.gate import run_job, shared_gate
    from lion_distill.llm.ledger import spent_by_role
    from lion_distill.llm.openai_client import OpenAIGenerator, resolve_api_key

    run_dir, endpoint = call.run_dir, role.openai
    uri = None if run_dir is None else (run_dir.uri if "://" in run_dir.uri else run_dir.root)
    # A run's budget holds across its stages, iterations and resumed jobs; without a run
    # directory (benchmarks) each call is a job of its own.
    job = uuid.uuid4().hex if uri is None else run_job(uri, call.role_name)
    spent = 0.0 if run_dir is None else spent_by_role(run_dir).get(call.role_name, 0.0)
    kwargs = {
        "role": role,
        "role_name": call.role_name,
        "api_key": resolve_api_key(role),
        "gate": shared_gate(endpoint, role.model, job=job, spent_usd=spent),
        "run_dir_uri": uri,
        "job": job,
        "structured_output": call.structured_output,
        "logprobs": call.logprobs,
        "stage": call.stage,
    }
    if run_dir is not None:
        prompted = _join_cache(
            prompted,
            role,
            stage=call.stage,
            run_dir=run_dir,
            structured_output=call.structured_output,
            logprobs=call.logprobs,
        )
    # Several batches run at once on each actor's event loop (as Ray's own LLM processors
    # overlap batches): the semaphore refills a slot as soon as any request ends, instead of
    # the actor waiting at the end of every batch for its slowest request. Only that many
    # are handed to an actor, so a starting replica is not left idle while the first one
    # holds every batch.
    compute = ray.data.ActorPoolStrategy(
        size=role.parallelism.replicas,
        max_tasks_in_flight_per_actor=OVERLAPPING_BATCHES,
        max_concurrent_calls_per_actor=OVERLAPPING_BATCHES,
    )
    out = prompted.map_batches(
        OpenAIGenerator, fn_constructor_kwargs=kwargs, batch_size=batch_rows(role), compute=compute, num_cpus=0.5
    )
    return write_parts(out, call.parts), 0.0


@dataclass(frozen=True)
class Backend:
    """How a role is served: `run(role, prompted rows, call) -> (lazy dataset in the response
    contract with its parts written, GPUs held)`."""

    run: Callable[[RoleConfig, ray.data.Dataset, Call], tuple[ray.data.Dataset, float]]
    constrains: bool = True  # honours structured_output
    api: bool = False  # per-row API accounting columns: summed, dropped, and written to the run's ledger


# The backends by `role.backend` (lion_distill.config.models.RoleConfig).
BACKENDS = {"vllm": Backend(_vllm), "hf": Backend(_hf, constrains=False), "openai": Backend(_openai, api=True)}


CACHE_DEDUPE_ONE_TASK_BYTES = 256 << 20  # a stage's cache parts deduplicated by one task up to this size


def _join_cache(prompted, role: RoleConfig, *, stage, run_dir: RunDir, structured_output, logprobs):
    """Each row's request key (CACHE_KEY_COL), and, when the stage's cache (lion_distill.llm.cache)
    has parts, its cached answer (CACHED_COL) by a left join on that key: the API actors
    then only send the rest, and none of them loads the cache. No parts (a stage's first
    run): no join, nothing read. The cache side is cut to one row per key first, in one
    task up to CACHE_DEDUPE_ONE_TASK_BYTES of parts (a group-by shuffle costs seconds more
    on a small stage), by a hash group-by above, so a row is never multiplied."""
    import ray

    from lion_distill.llm.cache import attach_cache_key, cache_parts, first_per_key, joinable, sampling_key
    from lion_distill.llm.responses import CACHE_KEY_COL

    keyed = prompted.map_batches(
        attach_cache_key(role.model, sampling_key(role), structured_output, logprobs),
        batch_format="pyarrow",
        batch_size=None,
    )
    parts = cache_parts(run_dir, stage)
    if not parts:
        return keyed
    cached = ray.data.read_parquet([p.path for p in parts], filesystem=run_dir.fs)
    if sum(p.size or 0 for p in parts) <= CACHE_DEDUPE_ONE_TASK_BYTES:
        cached = cached.repartition(1, shuffle=False).map_batches(joinable, batch_format="pyarrow", batch_size=None)
    else:
        cached = (
            cached.groupby("key")
            .map_groups(first_per_key, batch_format="pyarrow")
            .map_batches(joinable, batch_format="pyarrow", batch_size=None)
        )
    return keyed.join(
        cached, join_type="left_outer", num_partitions=max(2, 2 * role.parallelism.replicas), on=(CACHE_KEY_COL,)
    )


def _account(out: ray.data.MaterializedDataset, rec: StageRecord, *, api: bool) -> ray.data.MaterializedDataset:
    """Sum the finished blocks into `rec` and, for an API role, drop the accounting columns,
    in plain Ray tasks of ACCOUNTING_BLOCKS blocks each: a select and a drop as two more
    Ray Data jobs took 2.7-3.2 s over 100 blocks here, these tasks 0.3 s. An API role's
    dataset is rebuilt from the new blocks, so its `stats()` no longer shows the generation
    pipeline: the StageRecord carries the stage's figures."""
    import pyarrow as pa
    import ray

    blocks = out.to_arrow_refs()
    chunks = [blocks[i : i + ACCOUNTING_BLOCKS] for i in range(0, len(blocks), ACCOUNTING_BLOCKS)]
    # A whole CPU: tasks with fractional or zero CPUs make Ray start new worker processes
    # (seconds) instead of reusing the ones Ray Data just used.
    if api:
        split = ray.remote(num_cpus=1)(split_accounting)
        parts = [split.options(num_returns=len(chunk) + 1).remote(*chunk) for chunk in chunks]
        stats, blocks = [p[0] for p in parts], [ref for p in parts for ref in p[1:]]
    else:
        account = ray.remote(num_cpus=1)(accounting_columns)
        stats = [account.remote(*chunk) for chunk in chunks]
    fill_record(rec, pa.concat_tables(ray.get(stats), promote_options="default") if stats else pa.table({}))
    return ray.data.from_arrow_refs(blocks) if api and blocks else out


def batch_rows(role: RoleConfig) -> int:
    """Rows per generation batch; an API batch is big enough to fill max_concurrent_requests twice."""
    if role.backend == "openai":
        return max(role.parallelism.batch_size, 2 * role.openai.max_concurrent_requests)
    return role.parallelism.batch_size


def __getattr__(name: str):
    # Lazy: `lion_distill.llm.prompts` users should not pay for torch or openai imports.
    if name == "HFGenerator":
        from lion_distill.llm.hf import HFGenerator

        return HFGenerator
    if name == "OpenAIGenerator":
        from lion_distill.llm.openai_client import OpenAIGenerator

        return OpenAIGenerator
    raise AttributeError(name)


__all__ = ["generate", "check_structured_output", "HFGenerator", "OpenAIGenerator"]
