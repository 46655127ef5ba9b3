"""The row contracts every stage reads and writes (docs/design.md, "Data contracts")."""
from __future__ import annotations

import hashlib

import pyarrow as pa

ORIGINS = ("seed", "hard", "easy")

POOL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),  # may be empty, never dropped
        pa.field("origin", pa.string(), nullable=False),  # seed | hard | easy
        pa.field("parent_id", pa.string()),  # the instruction a generated one came from
        pa.field("iteration", pa.int32(), nullable=False),
    ]
)

RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("text", pa.string()),  # null when the request failed
        pa.field("finish_reason", pa.string()),  # stop | length | failed: <reason>
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
    ]
)


def instruction_id(instruction: str, input: str = "") -> str:
    """Stable across runs, readers and machines: the same text always gets the same id."""
    digest = hashlib.sha256(f"{instruction}\x1f{input}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def pool_table(rows: list[dict]) -> pa.Table:
    """Rows with at least `instruction` (and usually `input`) -> a pool table;
    missing `id` / `origin` / `iteration` take their seed defaults."""
    full = [
        {
            "id": r.get("id") or instruction_id(r["instruction"], r.get("input", "")),
            "instruction": r["instruction"],
            "input": r.get("input", ""),
            "origin": r.get("origin", "seed"),
            "parent_id": r.get("parent_id"),
            "iteration": r.get("iteration", 0),
        }
        for r in rows
    ]
    return pa.Table.from_pylist(full, schema=POOL_SCHEMA)
