"""The response columns every backend writes, as pure functions over rows and batches.

A row in is a row out: a request that fails gets `text` None, `finish_reason` "error", its
`error_kind` (lion_distill.errors.ErrorKind, set here at the backend's edge by `error_row`) and
its `error` message, never a missing row. Prompts travel through
Ray Data as one JSON string column (`PROMPT_COL`) because a dataset may mix chat
messages and raw strings, which no single Arrow type holds.

The `logprobs` column is a JSON string per row: a list with one entry per
generated token, each a `{token_text: logprob}` map of the top-k candidates at
that position (the sampled token included). `None` when not asked for or failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.errors import ErrorKind
from lion_distill.llm.reasoning import split_reasoning
from lion_distill.metrics import StageRecord

PROMPT_COL = "_llm_prompt"
# A drawn request's identity, "<draw>/<row id>" (see lion_distill.llm.generate's `draw`): the
# backends key their cache on it and derive the request's seed from it.
DRAW_COL = "_llm_draw"
# The openai backend's response cache (lion_distill.llm.cache): a row's request key, and the cached
# response joined to it (JSON; null when the request is not in the stage's cache).
CACHE_KEY_COL = "_llm_key"
CACHED_COL = "_llm_cached"
INTERNAL_COLS = (PROMPT_COL, DRAW_COL, CACHE_KEY_COL, CACHED_COL)
# Per-row API accounting, summed into the StageRecord and then dropped.
API_COLS = ("_api_requests", "_api_retries", "_api_cached", "_api_cost_usd")
RESPONSE_STATS = ("prompt_tokens", "completion_tokens", "finish_reason", "error_kind")
# The response columns a backend fills per row (the row's own columns and `role` besides).
RESPONSE_FIELDS = ("text", "reasoning", "finish_reason", "error_kind", "error", "prompt_tokens", "completion_tokens")

STOP, LENGTH, ERROR = "stop", "length", "error"  # every finish_reason there is
ERROR_CHARS = 500  # of an error's message kept in the row
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")  # user:password@ in a URI a message quotes


# What an engine or API says when a prompt does not fit the model's context (vLLM's
# VLLMValidationError, "maximum context length", OpenAI's context_length_exceeded): read here,
# where a backend meets its engine, and nowhere after (the row carries the kind).
_OVERFLOW = re.compile(
    r"context.length|maximum context|max_model_len|maximum model length|longer than the maximum", re.IGNORECASE
)


def overflow_kind(message: str, otherwise: ErrorKind) -> ErrorKind:
    """CONTEXT_OVERFLOW when an engine's message says the prompt did not fit, else `otherwise`."""
    return ErrorKind.CONTEXT_OVERFLOW if _OVERFLOW.search(message or "") else otherwise


# Ray's LLM processors keep a request's exception only as "<type>: <message>" (`__inference_error__`);
# these types are the request's own fault (vLLM's validation of it), any other the engine's.
REQUEST_ERRORS = {"VLLMValidationError", "ValueError", "TypeError", "ValidationError"}


def inference_error_row(inference_error: str) -> dict:
    """A Ray LLM processor's `__inference_error__` -> the failed row of its kind."""
    name, _, message = inference_error.partition(": ")
    if name == "TimeoutError":
        return error_row(ErrorKind.TIMEOUT, inference_error)
    otherwise = ErrorKind.BAD_REQUEST if name in REQUEST_ERRORS else ErrorKind.SERVER_ERROR
    return error_row(overflow_kind(message, otherwise), inference_error)


def is_error(finish_reason: str | None) -> bool:
    """The request failed. None (no response, as in a pair whose answer is missing) is not a failure."""
    return finish_reason == ERROR


def error_mask(finish_reasons: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """is_error over a column: null is not a failure."""
    return pc.fill_null(pc.equal(finish_reasons, ERROR), False)


def encode_prompt(prompt: Any, row_id: Any = None) -> str:
    """A to_prompt result -> the JSON string carried in PROMPT_COL; a bad one is named."""
    if isinstance(prompt, str):
        return json.dumps(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
        )
    ):
        return json.dumps([{"role": m["role"], "content": m["content"]} for m in prompt])
    raise ValueError(
        f"to_prompt returned {type(prompt).__name__} for row id={row_id!r}: expected a prompt string "
        "or a non-empty list of {'role': str, 'content': str} messages"
    )


def decode_prompt(encoded: str) -> str | list[dict]:
    return json.loads(encoded)


def attach_prompt(to_prompt: Callable[[dict], Any], draw: str | None = None) -> Callable[[pa.Table], pa.Table]:
    """Batch mapper for Ray Data (pyarrow batches): adds PROMPT_COL (and DRAW_COL when
    `draw` is given) and leaves every other column as it was; a row without `id` is
    refused clearly."""

    def _encoded(row: dict) -> str:
        if row.get("id") is None:
            raise ValueError(
                f"every row needs an `id` column (callers join responses on it); got columns {sorted(row)}"
            )
        try:
            prompt = to_prompt(row)
        except Exception as exc:  # a caller's bug: say which row, keep the cause
            raise ValueError(f"to_prompt failed on row id={row['id']!r}: {exc!r}") from exc
        return encode_prompt(prompt, row["id"])

    def _attach(batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        batch = batch.append_column(PROMPT_COL, pa.array([_encoded(r) for r in rows], pa.string()))
        if draw is None:
            return batch
        return batch.append_column(DRAW_COL, pa.array([f"{draw}/{r['id']}" for r in rows], pa.string()))

    return _attach


def finish_reason_from_counts(
    completion_tokens: int, max_tokens: int, prompt_tokens: int = 0, max_model_len: int | None = None
) -> str:
    """vLLM stops for exactly two reasons here: the end token (or a stop string) or a
    length cap, `max_tokens` or the context `max_model_len` (prompt + answer); Ray's
    processor reports counts, not the reason, so derive it."""
    capped = max_model_len is not None and prompt_tokens + completion_tokens >= max_model_len
    return LENGTH if completion_tokens >= max_tokens or capped else STOP


def top_logprobs_json(steps: list[dict[str, float]] | None) -> str | None:
    return None if steps is None else json.dumps(steps, ensure_ascii=False)


def response_row(
    text: str | None,
    finish_reason: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    logprobs: str | None = None,
    reasoning: str | None = None,
) -> dict:
    """One response; a thinking text's thinking is split off into `reasoning` (lion_distill.llm.reasoning)."""
    text, reasoning = split_reasoning(text, reasoning)
    return {
        "text": text,
        "reasoning": reasoning,
        "finish_reason": finish_reason,
        "error_kind": None,
        "error": None,
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "logprobs": logprobs,
    }


def error_row(kind: ErrorKind, message: str) -> dict:
    """A request that failed: no text, its kind and its message (credentials in a quoted URI
    masked). The one place a backend's failure becomes a row."""
    row = response_row(None, ERROR)
    row.update(error_kind=ErrorKind(kind).value, error=_CREDENTIALS.sub(r"\1***@", message)[:ERROR_CHARS])
    return row


def merge_responses(batch: dict, responses: list[dict], role_name: str, with_logprobs: bool) -> dict:
    """A batch (dict of columns) + one response dict per row -> the batch with the
    response columns (and any API accounting columns the responses carry)."""
    n = len(batch[PROMPT_COL])
    if len(responses) != n:
        raise AssertionError(f"backend returned {len(responses)} responses for {n} rows")
    out = {k: v for k, v in batch.items() if k not in INTERNAL_COLS}
    out["role"] = [role_name] * n
    for col in RESPONSE_FIELDS:
        out[col] = [r[col] for r in responses]
    if with_logprobs:
        out["logprobs"] = [r.get("logprobs") for r in responses]
    for col in API_COLS:
        if col in responses[0]:
            out[col] = [r[col] for r in responses]
    return out


def accounting_columns(*blocks: pa.Table) -> pa.Table:
    """The columns of finished blocks that a StageRecord sums, as one table."""
    return pa.concat_tables(
        [b.select(list(RESPONSE_STATS) + [c for c in API_COLS if c in b.column_names]) for b in blocks],
        promote_options="default",
    )


def split_accounting(*blocks: pa.Table) -> tuple[pa.Table, ...]:
    """Finished blocks -> (their accounting columns as one table, each block without the API ones)."""
    return accounting_columns(*blocks), *(b.drop_columns([c for c in API_COLS if c in b.column_names]) for b in blocks)


def fill_record(rec: StageRecord, table: pa.Table) -> None:
    """Sum a finished stage's responses (and API accounting, when present) into rec."""
    rec.rows = table.num_rows
    if not table.num_rows:
        return
    rec.prompt_tokens = int(pc.sum(table["prompt_tokens"]).as_py() or 0)
    rec.completion_tokens = int(pc.sum(table["completion_tokens"]).as_py() or 0)
    reasons = table["finish_reason"]
    rec.failed_rows = int(
        pc.sum(pc.or_(pc.is_null(reasons), error_mask(reasons))).as_py() or 0
    )  # a stage's row has a reason
    kinds = table["error_kind"].filter(error_mask(reasons)).cast(pa.string())
    rec.failed_by_kind = {e["values"]: e["counts"] for e in pc.value_counts(kinds).to_pylist()}
    if "_api_requests" in table.column_names:
        rec.api_requests = int(pc.sum(table["_api_requests"]).as_py() or 0)
        rec.api_retries = int(pc.sum(table["_api_retries"]).as_py() or 0)
        rec.api_cached = int(pc.sum(table["_api_cached"]).as_py() or 0)
        rec.cost_usd = float(pc.sum(table["_api_cost_usd"]).as_py() or 0.0)
