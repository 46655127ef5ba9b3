"""Asking an LLM role over rows, as every job does: `answer` runs lion_distill.llm.generate over
a table (or a stream of tables) of rows and hands back one response per row, resumable through
parts in the run directory; the helpers around it say which responses are answers and write
them in RESPONSE_SCHEMA's columns. Lion's stages, the evaluation and the judges all ask
through here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import RESPONSE_SCHEMA, RunDir
from lion_distill.data.pools import RowFiles, dataset_to_table
from lion_distill.data.tables import in_order, no_response
from lion_distill.llm.responses import failed_mask, is_failed
from lion_distill.metrics import StageRecord


def answer(
    role,
    rows: pa.Table | list[dict] | Iterable[pa.Table],
    to_prompt,
    *,
    parts: str | None = None,
    in_rows_order: bool = True,
    columns: tuple[str, ...] | None = None,
    stream: bool = False,
    **kwargs,
) -> tuple[pa.Table | Iterator[pa.Table], StageRecord]:
    """lion_distill.llm.generate over rows -> (one response per row, in the rows' order, as an Arrow
    table of ANSWER_COLUMNS: the id and the response's columns, not the rows', which the caller
    has: the driver fetches only what it reads; the StageRecord). The stage's only Ray
    edge: the Ray Dataset is made here, so a millisecond test scripts this one function.

    `rows` may be an iterable of tables, made one at a time: each goes to the workers before the
    next is made, so requests derived from a pool (the referee's two per pair) are never all on
    the driver at once. `in_rows_order=False`: the responses in any order (each
    under its row's id), for a caller that looks them up by id anyway; no reordered copy.
    `stream=True` (and in any order): an iterator of tables of responses, read from the parts a
    few at a time (lion_distill.llm.parts.iter_answers), for a caller that goes through them once and
    keeps what it makes of them: 2 x N reviews, and their ids, are never all on the driver. The
    caller checks that every row it asked has its answer (the referee's judge does, pair by pair).

    `parts`: a folder of the run directory where the call's blocks are written as they
    finish (lion_distill.llm.parts), under the call's stage and request settings; a call killed
    midway asks only the rows not written there. Its record counts the rows asked now,
    and `rows_from_parts` those an earlier attempt answered. With parts, the rows reach the
    workers as files (lion_distill.data.pools.RowFiles) and the answers are read from the parts:
    the object-store pages a driver writes or reads count in its resident memory until it
    exits (1.2 GB at 1M instructions, benchmarks/RESULTS.md); without, through the object store."""
    import ray
    import ray.data

    from lion_distill.llm import generate
    from lion_distill.llm.parts import Parts, iter_answers, read_answers, written_ids

    chunks = (
        [rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)]
        if isinstance(rows, (pa.Table, list))
        else rows
    )
    run, folder, done = kwargs.get("run_dir"), None, pa.array([], pa.string())
    columns = ANSWER_COLUMNS if columns is None else ("id", *(c for c in columns if c != "id"))
    if parts is not None and run is not None:
        folder = parts_folder(parts, role, kwargs)
        done = written_ids(run, folder)
    before = pc.count_distinct(done).as_py()
    # With a folder of parts, the rows go to the workers as files and the answers come back from
    # the parts they wrote: the driver neither writes nor reads a pool's worth of object store.
    requests = RowFiles(run, f"{folder}/requests") if folder else None
    ids, refs, empty = [], [], pa.table({"id": pa.array([], pa.string())})
    for chunk in chunks:
        if not stream:
            ids += chunk.column("id").chunks
        if len(done):
            chunk = chunk.filter(pc.invert(pc.is_in(chunk.column("id"), value_set=done)))
        if chunk.num_rows:  # a pool, or any rows with an id (the referee's requests)
            if requests:
                requests.add(chunk)
            else:
                refs.append(ray.put(chunk))
        empty = chunk.slice(0, 0)
    responses = None
    if refs or (requests and requests.files) or not before:
        ds = (
            requests.dataset()
            if requests and requests.files
            else ray.data.from_arrow_refs(refs)
            if refs
            else ray.data.from_arrow(empty)
        )
        out, record = generate(role, ds, to_prompt, parts=folder and Parts(run.uri_of(folder)), **kwargs)
        if requests:
            requests.remove()
        else:
            responses = _answer_columns(dataset_to_table(out), columns)
    else:
        record = StageRecord(kwargs["stage"])
    record.extra["rows_from_parts"] = before
    if stream:
        return iter_answers(run, folder, columns) if folder else iter([] if responses is None else [responses]), record
    if folder:
        responses = read_answers(run, folder, columns)
    ids = pa.chunked_array(ids, pa.string())
    if responses is None:
        return pa.table({"id": ids}), record
    if in_rows_order:
        return in_order(responses, ids), record
    lost = pc.invert(pc.is_in(ids, value_set=responses.column("id").combine_chunks()))
    if pc.any(lost).as_py():
        raise no_response(ids, lost)
    return responses, record


ANSWER_COLUMNS = (*RESPONSE_SCHEMA.names, "logprobs")


def _answer_columns(table: pa.Table | None, columns) -> pa.Table | None:
    """`columns` of the answered rows fetched from the object store. Selected here, not
    in one more Ray Data job (a second or more each, lion_distill.llm._account): the fetched blocks
    are mapped, not copied, so the columns left out never reach the driver's memory."""
    return None if table is None else table.select([c for c in columns if c in table.column_names])


def parts_folder(base: str, role, kwargs: dict) -> str:
    """A call's folder of parts: its stage, then what its answers depend on besides the rows
    (model and sampling, structured output, logprobs, draw), so parts of a call asked
    differently (a changed max_tokens, another constraint) are never taken for its answers."""
    settings = {
        "model": role.model,
        "sampling": role.sampling.model_dump(mode="json"),
        "max_model_len": role.max_model_len,
        **({"chat_template_kwargs": role.chat_template_kwargs} if role.chat_template_kwargs else {}),
        **{k: kwargs.get(k) for k in ("structured_output", "logprobs", "draw")},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{base}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', kwargs['stage'])}-{digest}"


def answered(response: dict) -> bool:
    return not is_failed(response.get("finish_reason")) and bool((response.get("text") or "").strip())


def write_responses(run: RunDir, path: str, responses: pa.Table | list[dict]) -> None:
    run.write_table(path, response_table(responses))


def response_table(responses: pa.Table | list[dict]) -> pa.Table:
    """Responses in RESPONSE_SCHEMA's columns (a row's own columns left out)."""
    if not isinstance(responses, pa.Table):
        rows = [{name: r.get(name) for name in RESPONSE_SCHEMA.names} for r in responses]
        return pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA)
    n = responses.num_rows
    return pa.table(
        {
            f.name: (responses.column(f.name).cast(f.type) if f.name in responses.column_names else pa.nulls(n, f.type))
            for f in RESPONSE_SCHEMA
        },
        schema=RESPONSE_SCHEMA,
    )


def read_rows(run: RunDir, path: str) -> list[dict]:
    return run.read_table(path).to_pylist() if run.exists(path) else []


def answered_mask(responses: pa.Table) -> pa.ChunkedArray:
    """`answered` over a table of responses: not failed, and a text that is not blank."""
    failed = failed_mask(responses.column("finish_reason"))
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(responses.column("text")), ""), True)
    return pc.invert(pc.or_(failed, blank))


def constraint(setting: str, role, regex, schema: dict) -> dict | None:
    """The structured-output request for a role: `auto` constrains only vLLM-served roles
    (an API may not support regexes; transformers cannot constrain at all). `regex` may
    be a function that builds it, called only where a regex is asked for."""
    if setting == "auto":
        setting = "regex" if role.backend == "vllm" else "none"
    if setting == "regex":
        return {"regex": regex() if callable(regex) else regex}
    return {"json": schema} if setting == "json" else None
