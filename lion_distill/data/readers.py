"""Instruction pools read with counted, located rejects.

Every record a file holds ends in exactly one place: kept in the pool, or counted
under a reject reason with its `file:line`. `LoadReport.reconciles` checks it.

Files are read by extension (lion_distill.data.records): `.json` (Alpaca), `.jsonl`, `.parquet`;
a folder is a Hugging Face `datasets` folder (`save_to_disk`), read by lion_distill.data.hf, as
are `load_dataset` sources (`data.datasets`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data.conversations import BadConversation, parse
from lion_distill.data.hf import read_dataset_source, read_saved_dataset
from lion_distill.data.records import (
    PoolFileError,
    RawRecord,
    Reject,
    has_invalid_utf8,
    read_alpaca_json,
    read_jsonl,
    read_parquet,
)
from lion_distill.data.schema import context_key, instruction_id, pool_table
from lion_distill.data.tables import kept

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


def read_records(
    path: str | Path, field_map: dict[str, str] | None = None, keep: tuple[str, ...] = ()
) -> Iterator[RawRecord]:
    """`keep`: more JSONL fields to carry into the rows (a question's id and category)."""
    path = Path(path)
    if path.is_dir():
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
    raise PoolFileError(
        f"{path}: unknown format {suffix!r}; expected .json (Alpaca), .jsonl, .parquet "
        "or a Hugging Face `datasets` folder (data.datasets reads csv and other load_dataset sources)"
    )


def check_record(record: RawRecord, max_instruction_chars: int) -> tuple[dict | None, Reject | None]:
    """-> (row, None) when kept, (None, why) when rejected."""
    if record.error:
        return None, record.error
    conversation = {}
    if "conversation" in record.fields:
        try:
            instruction, system, history = parse(record.fields["conversation"][1], record.fields["conversation"][0])
        except BadConversation as e:
            return None, Reject("bad_conversation", str(e))
        conversation = {"system": system, "history": history}
        record = RawRecord(record.where, {**record.fields, "instruction": instruction, "input": ""})
        del record.fields["conversation"]
    instruction, got = record.fields["instruction"], record.fields["input"]
    got = "" if got is None else got
    if instruction is None:
        return None, Reject("missing_field", "instruction")
    for name, value in (("instruction", instruction), ("input", got)):
        if not isinstance(value, str):
            return None, Reject("non_string_field", f"{name} is {type(value).__name__}")
        if has_invalid_utf8(value):
            return None, Reject("invalid_utf8")
    instruction, got = instruction.strip(), got.strip()
    if not instruction:
        return None, Reject("empty_instruction")
    if len(instruction) > max_instruction_chars:
        return None, Reject("instruction_too_long", f"{len(instruction)} > {max_instruction_chars} characters")
    context = context_key(**conversation) if conversation else ""
    row = {
        "id": instruction_id(instruction, got, context),
        "instruction": instruction,
        "input": got,
        **({k: v for k, v in conversation.items() if v} if context else {}),
    }
    kept = {name: value for name, value in record.fields.items() if name not in ("instruction", "input")}
    return ({**row, "fields": kept} if kept else row), None


def load_pool(
    files: list[str | Path],
    field_map: dict[str, str] | None = None,
    max_instruction_chars: int = 4096,
    sources: list[dict] = (),
    reuse: bool = True,
) -> tuple[pa.Table, LoadReport]:
    """Read and validate instruction files (and `load_dataset` sources: lion_distill.data.hf) into one
    seed pool (ids unique across files), a chunk of rows at a time: a pool of millions is its
    Arrow columns, never millions of Python rows. The last pool read is kept while its files are
    unchanged: a job's preflight parses the pool and its seeding stage reuses that parse instead
    of reading the files again; the seeding stage (`reuse=False`) lets it go, so the job's
    driver does not hold the pool for its later stages."""
    # Resolved paths: the job makes them absolute between preflight and seeding.
    key = (
        tuple((str(Path(p).resolve()), *_stamp(p)) for p in files),
        tuple(sorted((field_map or {}).items())),
        max_instruction_chars,
        repr(sources),
    )
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
    files: list[str | Path],
    field_map: dict[str, str] | None = None,
    max_instruction_chars: int = 4096,
    keep: tuple[str, ...] = (),
    sources: list[dict] = (),
) -> tuple[list[dict], LoadReport]:
    """Validated rows (`id`, `instruction`, `input`, and `fields`: the `keep` fields), ids unique across files."""
    report = LoadReport()
    checked = list(checked_rows(files, field_map, max_instruction_chars, keep, sources, report))
    unique = unique_ids(
        pa.array([row["id"] for row, _ in checked], pa.string()),
        pa.array([where for _, where in checked], pa.string()),
        report,
    )
    rows = [row for (row, _), kept in zip(checked, unique.to_pylist()) if kept]
    report.rows_kept = len(rows)
    assert report.reconciles, report.as_dict()
    return rows, report


def checked_rows(
    files: list[str | Path],
    field_map: dict[str, str] | None,
    max_instruction_chars: int,
    keep: tuple[str, ...] = (),
    sources: list[dict] = (),
    report: LoadReport | None = None,
) -> Iterator[tuple[dict, str]]:
    """(row, where) for each record of the files and sources that passes check_record; each one
    that does not is counted in `report` under its reason, with its location."""
    readers = [lambda p=path: read_records(p, field_map, keep) for path in files]
    readers += [lambda s=source: read_dataset_source(s, field_map, keep) for source in sources]
    for read in readers:
        for record in read():
            report.rows_in += 1
            row, why = check_record(record, max_instruction_chars)
            if why:
                report.reject(why.reason, f"{record.where} ({why.detail})" if why.detail else record.where)
            else:
                yield row, record.where


def unique_ids(ids: pa.Array | pa.ChunkedArray, wheres: pa.Array | pa.ChunkedArray, report: LoadReport) -> pa.Array:
    """A mask of each id's first row; every later row with its id is a duplicate_id reject that
    names the first one's location."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    first = pc.index_in(ids, value_set=ids)  # the position of each id's first row
    unique = pc.equal(first, pa.array(np.arange(len(ids)), first.type))
    for at in np.flatnonzero(~unique.to_numpy(zero_copy_only=False)):
        report.reject(
            "duplicate_id", f"{wheres[at].as_py()} (same instruction and input as {wheres[first[at].as_py()].as_py()})"
        )
    return unique
