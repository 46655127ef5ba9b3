"""Instruction records read from files and Arrow tables, each with where it came from.

Formats:
- `.json`: Alpaca (a JSON list of `{instruction, input, output}`),
- `.jsonl`: self-instruct (`instances[{input, output}]`: one row per instance) or any
  JSONL whose fields `field_map` names (default `instruction` / `input`),
- `.parquet`, or any Arrow table (a Hugging Face dataset's: lion_distill.data.hf): columns
  `instruction` and optionally `input`.

In any of them a record with a `messages` (OpenAI: `role`/`content`) or `conversations`
(ShareGPT: `from`/`value`) field and no instruction field is a conversation
(lion_distill.data.conversations): its last user turn is the instruction. A record is read as
it is; lion_distill.data.readers checks it and counts its reject.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lion_distill.data.conversations import conversation_key
from lion_distill.errors import PoolFileError


@dataclass(frozen=True)
class Reject:
    """Why a record is not kept: the reason it is counted under, and what about it (may be empty)."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class RawRecord:
    where: str  # file:line (or file:row N for parquet)
    fields: dict | None = None
    error: Reject | None = None


def _decode(path: Path) -> str:
    # surrogateescape keeps reading past invalid bytes so only their own record is rejected.
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


# An invalid byte decodes to a lone surrogate U+DC80..U+DCFF (surrogateescape).
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")


def has_invalid_utf8(text: str) -> bool:
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
            yield from _jsonl_records(
                line.decode("utf-8", errors="surrogateescape"),
                f"{path}:{number}",
                field_map,
                instruction_key,
                input_key,
                keep,
            )


def _jsonl_records(
    line: str, where: str, field_map: dict[str, str], instruction_key: str, input_key: str, keep: tuple[str, ...]
) -> Iterator[RawRecord]:
    """One JSONL line's records: none for a blank line, one per instance of a self-instruct line."""
    if not line.strip():
        return  # blank lines are layout, not records
    if has_invalid_utf8(line):
        yield RawRecord(where, error=Reject("invalid_utf8"))
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        yield RawRecord(where, error=Reject("malformed_json", f"{e.msg} at column {e.colno}"))
        return
    if not isinstance(obj, dict):
        yield RawRecord(where, error=Reject("not_an_object", f"got {type(obj).__name__}"))
    elif not field_map and isinstance(obj.get("instances"), list) and obj["instances"]:
        for k, instance in enumerate(obj["instances"]):
            got = instance.get("input", "") if isinstance(instance, dict) else instance
            yield RawRecord(f"{where} instance {k}", {"instruction": obj.get("instruction"), "input": got})
    else:
        yield record_of(obj, where, instruction_key, input_key, keep)


def record_of(
    obj: dict, where: str, instruction_key: str = "instruction", input_key: str = "input", keep: tuple[str, ...] = ()
) -> RawRecord:
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
    invalid = has_invalid_utf8(text)  # checked per element only where the file has such bytes
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
            raise PoolFileError(
                f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); fix the file and re-run"
            ) from None
        if invalid and has_invalid_utf8(text[pos:end]):
            yield RawRecord(where, error=Reject("invalid_utf8"))
        elif not isinstance(obj, dict):
            yield RawRecord(where, error=Reject("not_an_object", f"got {type(obj).__name__}"))
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


def read_table_rows(
    table: pa.Table, source: str, kind: str, field_map: dict[str, str] | None = None, keep: tuple[str, ...] = ()
) -> Iterator[RawRecord]:
    """A table's rows (parquet, a `datasets` Arrow table) as records located `source:row N`."""
    instruction_key = (field_map or {}).get("instruction", "instruction")
    input_key = (field_map or {}).get("input", "input")
    if instruction_key not in table.column_names and not conversation_key(dict.fromkeys(table.column_names)):
        raise PoolFileError(
            f"{source}: {kind} has no {instruction_key!r}, 'messages' or 'conversations' column "
            f"(columns: {table.column_names})"
        )
    columns = [c for c in (instruction_key, input_key, "messages", "conversations", *keep) if c in table.column_names]
    offset = 0
    for batch in table.select(columns).to_batches(max_chunksize=4096):
        for k, obj in enumerate(batch.to_pylist(), start=offset):
            yield record_of(obj, f"{source}:row {k}", instruction_key, input_key, keep)
        offset += batch.num_rows
