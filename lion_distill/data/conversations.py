"""Conversations as pool rows: OpenAI-style `messages` (`role`/`content`) and ShareGPT
`conversations` (`from`/`value`, with `human`/`gpt`/`system`).

A conversation becomes one pool row whose `instruction` is its **last user turn**
(what Lion's referee judges and its generator writes new instructions from), with the
system prompt in `system` and the turns before the last user turn in `history`
(alternating user/assistant, as the file has them). A trailing assistant turn is the
file's own answer to that last turn: the teacher replaces it, so it is not kept. A
single-turn conversation is an instruction with its system prompt; without one it is
exactly the plain instruction (same id).

`user_turns(row)` lists the requests a conversation asks of the teacher: one per user
turn, each given the conversation's turns before it (as the file has them), each with
the id its prefix would have as a pool row of its own.
"""

from __future__ import annotations

from lion_distill.data.schema import context_key, history_turns, instruction_id

KEYS = {"messages": ("role", "content"), "conversations": ("from", "value")}
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


class BadConversation(ValueError):
    """A conversation the pool cannot hold; the message says which turn and why."""


def conversation_key(obj: dict) -> str | None:
    """Which conversation field a record has (`messages` or `conversations`), if any."""
    return next((key for key in KEYS if key in obj), None)


def parse(turns, key: str = "messages") -> tuple[str, str | None, list[dict]]:
    """A conversation field's value -> (last user turn, system prompt or None, history).
    Raises BadConversation naming the turn at fault."""
    role_key, content_key = KEYS[key]
    if not isinstance(turns, list) or not turns:
        raise BadConversation(f"{key} is {type(turns).__name__ if not isinstance(turns, list) else 'an empty list'}")
    system, dialogue = None, []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadConversation(f"{key}[{n}] is {type(turn).__name__}, not an object")
        role, content = ROLES.get(turn.get(role_key)), turn.get(content_key)
        if role is None:
            raise BadConversation(f"{key}[{n}].{role_key} is {turn.get(role_key)!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise BadConversation(f"{key}[{n}].{content_key} is {type(content).__name__}, not a string")
        if role == "system":
            if n != 0:
                raise BadConversation(f"{key}[{n}] is a system turn after the conversation started")
            system = content.strip() or None
            continue
        expected = "user" if len(dialogue) % 2 == 0 else "assistant"
        if role != expected:
            raise BadConversation(
                f"{key}[{n}] is a {role} turn where {'an' if expected == 'assistant' else 'a'} {expected} turn belongs (turns must alternate, user first)"
            )
        dialogue.append({"role": role, "content": content.strip()})
    if dialogue and dialogue[-1]["role"] == "assistant":
        dialogue = dialogue[:-1]  # the file's answer to the last user turn: the teacher's replaces it
    if not dialogue:
        raise BadConversation(f"{key} has no user turn")
    for n, turn in enumerate(dialogue[:-1]):
        if not turn["content"]:
            raise BadConversation(f"{key}: turn {n} ({turn['role']}) is empty")
    return dialogue[-1]["content"], system, dialogue[:-1]


def is_conversation(row: dict) -> bool:
    return bool(row.get("system") or row.get("history"))


def user_turns(row: dict) -> list[dict]:
    """The teacher's requests for a conversation row, first user turn first: each a pool-like
    row ending at one user turn, with the id that prefix has as a pool row; the last one is
    the row itself."""
    history = history_turns(row.get("history"))
    turns = []
    for n in range(0, len(history), 2):
        before = history[:n]
        text = history[n]["content"]
        turns.append(
            {
                "id": instruction_id(text, "", context_key(row.get("system"), before)),
                "instruction": text,
                "input": "",
                "system": row.get("system"),
                "history": before,
            }
        )
    return turns + [row]
