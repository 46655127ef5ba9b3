"""Instruction readers with counted, located rejects.

Every record a file holds ends in exactly one place: kept in the pool, or counted
under a reject reason with its `file:line`. `LoadReport.reconciles` checks it.

Formats, chosen by extension:
- `.json`: Alpaca (a JSON list of `{instruction, input, output}`),
- `.jsonl`: self-instruct (`instances[{input, output}]`: one row per instance) or any
  JSONL whose fields `field_map` names (default `instruction` / `input`),
- `.parquet`: columns `instruction` and optionally `input`,
- a folder: a Hugging Face `datasets` folder (`save_to_disk`), read by engine.data.hf,
  as are `load_dataset` sources (`data.datasets`).

In any of them a record with a `messages` (OpenAI: `role`/`content`) or `conversations`
(ShareGPT: `from`/`value`) field and no instruction field is a conversation
(engine.data.conversations): its last user turn is the instruction.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.conversations import BadConversation, conversation_key, parse
from engine.data.schema import context_key, instruction_id, pool_table
from engine.data.tables import kept

REJECT_REASONS = (
    "malformed_json",
    "not_an_object",
    "missing_field",
    "non_string_field",
    "empty_instruction",
    "instruction_too_long",
    "invalid_utf8",
    "duplicate_id",
    "bad_conversation",
)
EXAMPLES_PER_REASON = 5


class PoolFileError(ValueError):
    """A file that cannot be read at all (missing, unknown format, broken JSON list)."""


@dataclass
class LoadReport:
    rows_in: int = 0
    rows_kept: int = 0
    rejects: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first locations

    def reject(self, reason: str, where: str) -> None:
        self.rejects[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(where)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.rows_kept + self.rows_rejected

    def as_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rows_rejected": self.rows_rejected,
            "rejects": dict(self.rejects),
            "examples": self.examples,
        }


@dataclass
class RawRecord:
    where: str  # file:line (or file:row N for parquet)
    fields: dict | None = None
    error: str | None = None  # a reject reason, with a detail after ": "


def _decode(path: Path) -> str:
    # surrogateescape keeps reading past invalid bytes so only their own record is rejected.
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


# An invalid byte decodes to a lone surrogate U+DC80..U+DCFF (surrogateescape).
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")


def _has_invalid_utf8(text: str) -> bool:
    return _INVALID_UTF8.search(text) is not None


class _LineCounter:
    """Line numbers of increasing offsets in one pass over the text: each call counts only the
    newlines since the previous one (counting from the top per record is quadratic: 89 s for
    52K Alpaca rows)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def read_jsonl(path: Path, field_map: dict[str, str], keep: tuple[str, ...] = ()) -> Iterator[RawRecord]:
    instruction_key = field_map.get("instruction", "instruction")
    input_key = field_map.get("input", "input")
    with path.open("rb") as lines:  # a line at a time: a file of millions is never one string
        for number, line in enumerate(lines, start=1):
            yield from _jsonl_records(line.decode("utf-8", errors="surrogateescape"), f"{path}:{number}",
                                      field_map, instruction_key, input_key, keep)


def _jsonl_records(line: str, where: str, field_map: dict[str, str], instruction_key: str, input_key: str,
                   keep: tuple[str, ...]) -> Iterator[RawRecord]:
    """One JSONL line's records: none for a blank line, one per instance of a self-instruct line."""
    if not line.strip():
        return  # blank lines are layout, not records
    if _has_invalid_utf8(line):
        yield RawRecord(where, error="invalid_utf8")
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        yield RawRecord(where, error=f"malformed_json: {e.msg} at column {e.colno}")
        return
    if not isinstance(obj, dict):
        yield RawRecord(where, error=f"not_an_object: got {type(obj).__name__}")
    elif not field_map and isinstance(obj.get("instances"), list) and obj["instances"]:
        for k, instance in enumerate(obj["instances"]):
            got = instance.get("input", "") if isinstance(instance, dict) else instance
            yield RawRecord(f"{where} instance {k}", {"instruction": obj.get("instruction"), "input": got})
    else:
        yield record_of(obj, where, instruction_key, input_key, keep)


def record_of(obj: dict, where: str, instruction_key: str = "instruction", input_key: str = "input",
              keep: tuple[str, ...] = ()) -> RawRecord:
    """One object's fields: a conversation (its `messages` or `conversations`, when it has
    no instruction field) or an instruction and its input."""
    fields = {name: obj.get(name) for name in keep}
    key = conversation_key(obj) if obj.get(instruction_key) is None else None
    if key:
        return RawRecord(where, {**fields, "conversation": (key, obj[key])})
    return RawRecord(where, {**fields, "instruction": obj.get(instruction_key), "input": obj.get(input_key, "")})


def read_alpaca_json(path: Path) -> Iterator[RawRecord]:
    """A JSON list read element by element, so each reject gets its line."""
    text = _decode(path)
    invalid = _has_invalid_utf8(text)  # checked per element only where the file has such bytes
    decoder, line_of = json.JSONDecoder(), _LineCounter(text)
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        raise PoolFileError(f"{path}:{line_of(pos)}: expected a JSON list of objects (Alpaca format)")
    pos = _skip_space(text, pos + 1)
    while not text.startswith("]", pos):
        where = f"{path}:{line_of(pos)}"
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            # Past a broken element the list's structure is unknown: stop with its location.
            raise PoolFileError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); fix the file and re-run") from None
        if invalid and _has_invalid_utf8(text[pos:end]):
            yield RawRecord(where, error="invalid_utf8")
        elif not isinstance(obj, dict):
            yield RawRecord(where, error=f"not_an_object: got {type(obj).__name__}")
        else:
            yield record_of(obj, where)
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            raise PoolFileError(f"{path}:{line_of(pos)}: expected ',' or ']' in the JSON list")


_SPACE = re.compile(r"[ \t\r\n]*")


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()


def read_parquet(path: Path) -> Iterator[RawRecord]:
    return read_table_rows(pq.read_table(path), str(path), "parquet file")


def read_table_rows(table: pa.Table, source: str, kind: str, field_map: dict[str, str] | None = None,
                    keep: tuple[str, ...] = ()) -> Iterator[RawRecord]:
    """A table's rows (parquet, a `datasets` Arrow table) as records located `source:row N`."""
    instruction_key = (field_map or {}).get("instruction", "instruction")
    input_key = (field_map or {}).get("input", "input")
    if instruction_key not in table.column_names and not conversation_key(dict.fromkeys(table.column_names)):
        raise PoolFileError(f"{source}: {kind} has no {instruction_key!r}, 'messages' or 'conversations' column "
                            f"(columns: {table.column_names})")
    columns = [c for c in (instruction_key, input_key, "messages", "conversations", *keep) if c in table.column_names]
    offset = 0
    for batch in table.select(columns).to_batches(max_chunksize=4096):
        for k, obj in enumerate(batch.to_pylist(), start=offset):
            yield record_of(obj, f"{source}:row {k}", instruction_key, input_key, keep)
        offset += batch.num_rows


def read_records(path: str | Path, field_map: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> Iterator[RawRecord]:
    """`keep`: more JSONL fields to carry into the rows (a question's id and category)."""
    path = Path(path)
    if path.is_dir():
        from engine.data.hf import read_saved_dataset

        return read_saved_dataset(path, field_map, keep)
    if not path.is_file():
        raise PoolFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_alpaca_json(path)
    if suffix == ".jsonl":
        return read_jsonl(path, field_map or {}, keep)
    if suffix == ".parquet":
        return read_parquet(path)
    raise PoolFileError(f"{path}: unknown format {suffix!r}; expected .json (Alpaca), .jsonl, .parquet "
                        "or a Hugging Face `datasets` folder (data.datasets reads csv and other load_dataset sources)")


def check_record(record: RawRecord, max_instruction_chars: int) -> tuple[dict | None, str | None]:
    """-> (row, None) when kept, (None, reason) when rejected."""
    if record.error:
        return None, record.error
    conversation = {}
    if "conversation" in record.fields:
        try:
            instruction, system, history = parse(record.fields["conversation"][1], record.fields["conversation"][0])
        except BadConversation as e:
            return None, f"bad_conversation: {e}"
        conversation = {"system": system, "history": history}
        record = RawRecord(record.where, {**record.fields, "instruction": instruction, "input": ""})
        del record.fields["conversation"]
    instruction, got = record.fields["instruction"], record.fields["input"]
    got = "" if got is None else got
    if instruction is None:
        return None, "missing_field: instruction"
    for name, value in (("instruction", instruction), ("input", got)):
        if not isinstance(value, str):
            return None, f"non_string_field: {name} is {type(value).__name__}"
        if _has_invalid_utf8(value):
            return None, "invalid_utf8"
    instruction, got = instruction.strip(), got.strip()
    if not instruction:
        return None, "empty_instruction"
    if len(instruction) > max_instruction_chars:
        return None, f"instruction_too_long: {len(instruction)} > {max_instruction_chars} characters"
    context = context_key(**conversation) if conversation else ""
    row = {"id": instruction_id(instruction, got, context), "instruction": instruction, "input": got,
           **({k: v for k, v in conversation.items() if v} if context else {})}
    kept = {name: value for name, value in record.fields.items() if name not in ("instruction", "input")}
    return ({**row, "fields": kept} if kept else row), None


def load_pool(
    files: list[str | Path], field_map: dict[str, str] | None = None, max_instruction_chars: int = 4096,
    sources: list[dict] = (), reuse: bool = True,
) -> tuple[pa.Table, LoadReport]:
    """Read and validate instruction files (and `load_dataset` sources: engine.data.hf) into one
    seed pool (ids unique across files), a chunk of rows at a time: a pool of millions is its
    Arrow columns, never millions of Python rows. The last pool read is kept while its files are
    unchanged: a job's preflight parses the pool and its seeding stage reuses that parse instead
    of reading the files again; the seeding stage (`reuse=False`) lets it go, so the job's
    driver does not hold the pool for its later stages."""
    # Resolved paths: the job makes them absolute between preflight and seeding.
    key = (tuple((str(Path(p).resolve()), *_stamp(p)) for p in files), tuple(sorted((field_map or {}).items())),
           max_instruction_chars, repr(sources))
    if _LAST_POOL.get("key") != key:
        _LAST_POOL.clear()  # the pool read before is not held while this one is read
        _LAST_POOL.update(key=key, value=_read_pool(files, field_map, max_instruction_chars, sources))
    value = _LAST_POOL["value"]
    if not reuse:
        _LAST_POOL.clear()
    return value


_LAST_POOL: dict = {}
CHUNK_ROWS = 8192  # records held as Python rows at once while a pool is read


def _read_pool(files, field_map, max_instruction_chars, sources) -> tuple[pa.Table, LoadReport]:
    report, tables, chunk, wheres = LoadReport(), [], [], []
    for row, where in checked_rows(files, field_map, max_instruction_chars, sources=sources, report=report):
        chunk.append(row)
        wheres.append(where)
        if len(chunk) == CHUNK_ROWS:
            tables.append(pool_table(chunk).append_column("where", pa.array(wheres, pa.string())))
            chunk, wheres = [], []
    tables.append(pool_table(chunk).append_column("where", pa.array(wheres, pa.string())))
    table = pa.concat_tables(tables)
    unique = unique_ids(table.column("id"), table.column("where"), report)
    table = table.drop_columns(["where"])
    table = kept(table, unique)
    report.rows_kept = table.num_rows
    assert report.reconciles, report.as_dict()
    return table, report


def _stamp(path: str | Path) -> tuple:
    """What identifies a file's contents cheaply: size and modification time (none if missing)."""
    try:
        path = Path(path)
        stats = [p.stat() for p in sorted(path.rglob("*"))] if path.is_dir() else [path.stat()]  # a datasets folder
    except OSError:
        return (None,)
    return tuple((st.st_size, st.st_mtime_ns) for st in stats)


def load_rows(
    files: list[str | Path], field_map: dict[str, str] | None = None, max_instruction_chars: int = 4096,
    keep: tuple[str, ...] = (), sources: list[dict] = (),
) -> tuple[list[dict], LoadReport]:
    """Validated rows (`id`, `instruction`, `input`, and `fields`: the `keep` fields), ids unique across files."""
    report = LoadReport()
    checked = list(checked_rows(files, field_map, max_instruction_chars, keep, sources, report))
    unique = unique_ids(pa.array([row["id"] for row, _ in checked], pa.string()),
                        pa.array([where for _, where in checked], pa.string()), report)
    rows = [row for (row, _), kept in zip(checked, unique.to_pylist()) if kept]
    report.rows_kept = len(rows)
    assert report.reconciles, report.as_dict()
    return rows, report


def checked_rows(
    files: list[str | Path], field_map: dict[str, str] | None, max_instruction_chars: int,
    keep: tuple[str, ...] = (), sources: list[dict] = (), report: LoadReport | None = None,
) -> Iterator[tuple[dict, str]]:
    """(row, where) for each record of the files and sources that passes check_record; each one
    that does not is counted in `report` under its reason, with its location."""
    from engine.data.hf import read_dataset_source

    readers = [lambda p=path: read_records(p, field_map, keep) for path in files]
    readers += [lambda s=source: read_dataset_source(s, field_map, keep) for source in sources]
    for read in readers:
        for record in read():
            report.rows_in += 1
            row, error = check_record(record, max_instruction_chars)
            if error:
                reason, _, detail = error.partition(": ")
                report.reject(reason, f"{record.where} ({detail})" if detail else record.where)
            else:
                yield row, record.where


def unique_ids(ids: pa.Array | pa.ChunkedArray, wheres: pa.Array | pa.ChunkedArray, report: LoadReport) -> pa.Array:
    """A mask of each id's first row; every later row with its id is a duplicate_id reject that
    names the first one's location."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    first = pc.index_in(ids, value_set=ids)  # the position of each id's first row
    unique = pc.equal(first, pa.array(np.arange(len(ids)), first.type))
    for at in np.flatnonzero(~unique.to_numpy(zero_copy_only=False)):
        report.reject("duplicate_id", f"{wheres[at].as_py()} (same instruction and input as {wheres[first[at].as_py()].as_py()})")
    return unique
