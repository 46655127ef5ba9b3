"""Conversations in Lion (rows of lion_distill.data.conversations).

Imitation: the teacher answers **every user turn** of a conversation, each given the
conversation's turns before it as the file has them (so all turns are asked at once,
and each request depends on the file alone: cached, reused and resumed by id like any
instruction's). The student then trains on the conversation with each assistant turn
replaced by the teacher's answer to it, the loss on those turns only, through its chat
template (lion_distill.train.chat): conversations need `student.prompt_format: chat`.

Discrimination and generation work on the **last user turn**: teacher and student
answer it given the turns before it, the referee judges the two answers to it, and the
generator writes new (single-turn) instructions from it.
"""

from __future__ import annotations

import json
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import POOL_SCHEMA, pool_table
from lion_distill.data.conversations import user_turns
from lion_distill.data.tables import first_per_id, in_order
from lion_distill.llm.answers import answered
from lion_distill.llm.prompts import assistant_turn, prompt_format, student_prompt

CHUNK_ROWS = 8192  # conversations turned into Python rows at once


def earlier_turns(pool: pa.Table, known: pa.Table | None = None) -> pa.Table:
    """The user turns before the last of the pool's conversations, as pool rows (each with
    its prefix's id), that no row of `known` (answers, by id) covers and the pool does not
    hold, each once (the conversations become Python rows a chunk at a time)."""
    chats = pool.filter(_conversations(pool))
    turns = first_per_id(
        pa.concat_tables(
            [POOL_SCHEMA.empty_table()]
            + [  # a chunk of conversations at a time
                pool_table(
                    [turn for row in chats.slice(start, CHUNK_ROWS).to_pylist() for turn in user_turns(row)[:-1]]
                )
                for start in range(0, chats.num_rows, CHUNK_ROWS)
            ]
        )
    )
    covered = [pool.column("id"), *([] if known is None else [known.column("id")])]
    ids = pa.chunked_array([c for column in covered for c in column.chunks], pa.string()).combine_chunks()
    return turns.filter(pc.invert(pc.is_in(turns.column("id"), value_set=ids)))


def _conversations(pool: pa.Table) -> pa.ChunkedArray:
    """A mask of the pool's conversation rows (a system prompt or earlier turns)."""
    has_history = pc.fill_null(pc.greater(pc.utf8_length(pool.column("history")), 0), False)
    return pc.or_(has_history, pc.fill_null(pc.greater(pc.utf8_length(pool.column("system")), 0), False))


def turn_answers(row: dict, answers: dict[str, dict]) -> list[dict] | None:
    """The teacher's answer to each user turn of a row, first turn first; None while one is missing."""
    found = [answers.get(turn["id"]) for turn in user_turns(row)]
    return found if all(found) else None


def conversation_sft(
    row: dict, answers: dict[str, dict], train_on_truncated: bool, reasoning: str = "drop"
) -> tuple[dict | None, bool]:
    """A conversation's training row in the `chat` layout -> (the row, or None when a turn's answer
    failed or was cut short and is left out; whether an answer was cut short). `messages` holds the
    conversation with the teacher's answers as JSON (lion_distill.llm.prompts.assistant_turn)."""
    found = turn_answers(row, answers)
    if found is None or not all(answered(a) for a in found):
        return None, False
    complete = [a.get("finish_reason") != "length" for a in found]
    truncated = not all(complete)
    if truncated and not train_on_truncated:
        return None, True
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for turn, answer in zip(user_turns(row), found):
        messages += [{"role": "user", "content": turn["instruction"]}, assistant_turn(answer, reasoning)]
    return {"messages": json.dumps(messages, ensure_ascii=False)}, truncated


def answer_student(ask, role, pool: pa.Table, stage: str, **kwargs) -> tuple[pa.Table, list]:
    """The student's answers to a pool through `ask` (lion_distill.llm.answers.answer), in the
    pool's order, asked in the format it was trained in (`student.prompt_format`). -> (responses,
    StageRecords)."""
    fmt = prompt_format(role)
    answers, record = ask(role, pool, partial(student_prompt, prompt_format=fmt), stage=stage, **kwargs)
    return in_order(answers, pool.column("id")), [record]
