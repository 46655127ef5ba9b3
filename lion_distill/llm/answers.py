"""Asking an LLM role over rows, as every job does: `answer` runs lion_distill.llm.generate over
a table (or a stream of tables) of rows and hands back one response per row in the rows' order,
`answer_stream` the same as a stream of tables in any order, both resumable through parts in
the run directory; the helpers around it say which responses are answers and write
them in RESPONSE_SCHEMA's columns. Lion's stages, the evaluation and the judges all ask
through here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import RESPONSE_SCHEMA, RunDir
from lion_distill.data.pools import RowFiles, dataset_to_table
from lion_distill.data.tables import in_order
from lion_distill.llm.responses import error_mask, is_error
from lion_distill.metrics import StageRecord


def answer(
    role, rows: pa.Table | list[dict] | Iterable[pa.Table], to_prompt, *, parts=None, columns=None, **kwargs
) -> tuple[pa.Table, StageRecord]:
    """lion_distill.llm.generate over rows -> (one response per row, in the rows' order, as an Arrow
    table of ANSWER_COLUMNS, or of the id and `columns`: the response's columns, not the rows',
    which the caller has, so the driver fetches only what it reads; the StageRecord). With every
    call of a stage through here (or `answer_stream`), the stage's only Ray edge is here: a
    millisecond test scripts this one function.

    `rows` may be an iterable of tables, made one at a time: each goes to the workers before the
    next is made, so requests derived from a pool are never all on the driver at once.

    `parts`: a folder of the run directory where the call's blocks are written as they
    finish (lion_distill.llm.parts), under the call's stage and request settings; a call killed
    midway asks only the rows not written there. Its record counts the rows asked now,
    and `rows_from_parts` those an earlier attempt answered. With parts, the rows reach the
    workers as files (lion_distill.data.pools.RowFiles) and the answers are read from the parts:
    the object-store pages a driver writes or reads count in its resident memory until it
    exits (1.2 GB at 1M instructions, benchmarks/RESULTS.md); without, through the object store."""
    from lion_distill.llm.parts import read_answers

    asked = _ask(role, rows, to_prompt, parts=parts, columns=columns, keep_ids=True, **kwargs)
    responses = read_answers(kwargs["run_dir"], asked.folder, asked.columns) if asked.folder else asked.responses
    if responses is None:
        return pa.table({"id": asked.ids}), asked.record
    return in_order(responses, asked.ids), asked.record


def answer_stream(
    role, rows: pa.Table | list[dict] | Iterable[pa.Table], to_prompt, *, parts=None, columns=None, **kwargs
) -> tuple[Iterator[pa.Table], StageRecord]:
    """`answer` for a caller that goes through the responses once and keeps what it makes of
    them: an iterator of tables of responses in any order (each under its row's id), read from
    the parts a few at a time (lion_distill.llm.parts.iter_answers). The rows' ids are not kept
    and the answers are never all on the driver (2 x N reviews, and their ids, for the referee);
    the caller checks that every row it asked has its answer (the referee's judge does, pair by
    pair)."""
    from lion_distill.llm.parts import iter_answers

    asked = _ask(role, rows, to_prompt, parts=parts, columns=columns, keep_ids=False, **kwargs)
    if asked.folder:
        return iter_answers(kwargs["run_dir"], asked.folder, asked.columns), asked.record
    return iter([] if asked.responses is None else [asked.responses]), asked.record


@dataclass
class _Asked:
    """What a call asked and where its answers are: in `folder` (its parts) or in `responses`."""

    record: StageRecord
    columns: tuple[str, ...]
    folder: str | None = None
    responses: pa.Table | None = None  # fetched through the object store, when there is no folder
    ids: pa.ChunkedArray | None = None  # the rows' ids in their order, when kept


def _ask(role, rows, to_prompt, *, parts, columns, keep_ids: bool, **kwargs) -> _Asked:
    """Every row not answered in the call's parts through lion_distill.llm.generate."""
    import ray

    from lion_distill.llm import generate
    from lion_distill.llm.parts import Parts, part_ids

    run = kwargs.get("run_dir")
    columns = ANSWER_COLUMNS if columns is None else ("id", *(c for c in columns if c != "id"))
    folder = parts_folder(parts, role, kwargs) if parts is not None and run is not None else None
    # An id an earlier attempt got only a transient failure for is not done: it is asked again.
    done, failed_before = part_ids(run, folder) if folder else (pa.array([], pa.string()),) * 2
    before = pc.count_distinct(done).as_py()
    # With a folder of parts, the rows go to the workers as files and the answers come back from
    # the parts they wrote: the driver neither writes nor reads a pool's worth of object store.
    requests = RowFiles(run, f"{folder}/requests") if folder else None
    ids, refs, empty = _send(_chunks(rows), done, requests, keep_ids)
    asked = _Asked(StageRecord(kwargs["stage"]), columns, folder)
    if refs or (requests and requests.files) or not before:
        if requests and requests.files:
            ds = requests.dataset()
        else:
            ds = ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(empty)
        out, asked.record = generate(role, ds, to_prompt, parts=folder and Parts(run.uri_of(folder)), **kwargs)
        if requests:
            requests.remove()
        else:
            asked.responses = _answer_columns(dataset_to_table(out), columns)
    asked.record.extra["rows_from_parts"] = before
    if len(failed_before):  # counted in the report: a transient failure is never an answer
        asked.record.extra["asked_again_after_failure"] = len(failed_before)
    if keep_ids:
        asked.ids = pa.chunked_array(ids, pa.string())
    return asked


def _chunks(rows) -> Iterable[pa.Table]:
    if isinstance(rows, pa.Table):
        return [rows]
    return [pa.Table.from_pylist(rows)] if isinstance(rows, list) else rows


def _send(chunks: Iterable[pa.Table], done: pa.Array, requests: RowFiles | None, keep_ids: bool):
    """Each chunk's rows not answered yet, as request files or object-store refs, a chunk at a time
    -> (the rows' ids, when kept; the refs; an empty chunk of the rows' schema)."""
    import ray

    ids, refs, empty = [], [], pa.table({"id": pa.array([], pa.string())})
    for chunk in chunks:
        if keep_ids:
            ids += chunk.column("id").chunks
        if len(done):
            chunk = chunk.filter(pc.invert(pc.is_in(chunk.column("id"), value_set=done)))
        if chunk.num_rows:  # a pool, or any rows with an id (the referee's requests)
            if requests:
                requests.add(chunk)
            else:
                refs.append(ray.put(chunk))
        empty = chunk.slice(0, 0)
    return ids, refs, empty


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
    return not is_error(response.get("finish_reason")) and bool((response.get("text") or "").strip())


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
    failed = error_mask(responses.column("finish_reason"))
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
