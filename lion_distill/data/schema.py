"""The row contracts every stage reads and writes (docs/design.md, "Data contracts")."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

POOL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),  # may be empty, never dropped
        pa.field("origin", pa.string(), nullable=False),  # seed | hard | easy
        pa.field("parent_id", pa.string()),  # the instruction a generated one came from
        pa.field("iteration", pa.int32(), nullable=False),
        # A conversation (lion_distill.data.conversations): its system prompt and the turns before
        # `instruction`, its last user turn, as a JSON list of {role, content} (a string column
        # travels through every Ray Data and LLM stage as the other columns do). Null for a
        # plain instruction.
        pa.field("system", pa.string()),
        pa.field("history", pa.string()),
    ]
)
OPTIONAL_POOL_COLUMNS = ("system", "history")  # pools written before conversations existed lack them

RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("text", pa.string()),  # null when the request failed
        pa.field("reasoning", pa.string()),  # a thinking model's thinking, apart from text (lion_distill.llm.reasoning)
        pa.field("finish_reason", pa.string()),  # stop | length | error
        pa.field("error_kind", pa.string()),  # a lion_distill.errors.ErrorKind value; null unless error
        pa.field("error", pa.string()),  # the failure's message; null unless error
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
    ]
)

# The training rows' two layouts (docs/design.md "Data contracts"), by student.prompt_format; `id` is
# the pool row's, which its answer's teacher signal joins on.
TRAINING_ROW_SCHEMAS = {
    "chat": pa.schema([("id", pa.string()), ("messages", pa.string())]),
    "alpaca": pa.schema(
        [
            ("id", pa.string()),
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("response", pa.string()),
            ("complete", pa.bool_()),
        ]
    ),
}


def instruction_id(instruction: str, input: str = "", context: str = "") -> str:
    """Stable across runs, readers and machines: the same text always gets the same id.
    `context`: a conversation's system prompt and earlier turns (`context_key`),
    empty for a plain instruction, whose id it leaves as it was."""
    text = f"{instruction}\x1f{input}" + (f"\x1f{context}" if context else "")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def history_turns(history: str | list | None) -> list[dict]:
    """A row's `history` (the column's JSON, or the list itself) as a list of {role, content}."""
    if not history:
        return []
    return json.loads(history) if isinstance(history, str) else list(history)


def history_json(history: str | list | None) -> str | None:
    """The `history` column's value: JSON of the turns, null when there are none."""
    turns = history_turns(history)
    return (
        json.dumps([{"role": t["role"], "content": t["content"]} for t in turns], ensure_ascii=False) if turns else None
    )


def context_key(system: str | None, history: str | list | None) -> str:
    """What a conversation adds to its last turn's id: empty for a plain instruction, so a
    single-turn conversation without a system prompt has the plain instruction's id."""
    turns = history_turns(history)
    if not system and not turns:
        return ""
    return json.dumps(
        {"system": system or "", "history": [[t["role"], t["content"]] for t in turns]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def pool_table(rows: list[dict]) -> pa.Table:
    """Rows with at least `instruction` (and usually `input`) -> a pool table;
    missing `id` / `origin` / `iteration` take their seed defaults."""
    full = [
        {
            "id": r.get("id")
            or instruction_id(r["instruction"], r.get("input", ""), context_key(r.get("system"), r.get("history"))),
            "instruction": r["instruction"],
            "input": r.get("input", ""),
            "origin": r.get("origin", "seed"),
            "parent_id": r.get("parent_id"),
            "iteration": r.get("iteration", 0),
            "system": r.get("system"),
            "history": history_json(r.get("history")),
        }
        for r in rows
    ]
    return pa.Table.from_pylist(full, schema=POOL_SCHEMA)
