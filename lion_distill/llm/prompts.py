"""How an instruction row becomes a prompt.

A student is trained, asked, evaluated and exported in one format, `student.prompt_format`
(docs/chat-students.md): `chat`, every instruction a conversation in its own chat template
(`instruction_messages`, sent as chat messages, rendered by its server or tokenizer); `alpaca`,
Lion's layout (instruction, and input when present; src/train.py's `PROMPT_DICT`), byte for byte
(`alpaca_prompt`, sent as a raw prompt). `student_prompt` is what it is asked in either. Teacher,
referee and generator get chat messages, rendered with the model's own chat template (or sent
as-is to an API).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from lion_distill.data.conversations import is_conversation
from lion_distill.data.schema import history_turns

FORMATS = ("chat", "alpaca")

# Lion's student template, `PROMPT_DICT` of its src/train.py: Alpaca's layout without
# Alpaca's "Below is an instruction..." preamble.
ALPACA_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    # Lion's format_map reads `input` only when it is not "".
    if input != "":
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def instruction_text(instruction: str, input: str = "") -> str:
    """An instruction and its input as one user turn (the input is never dropped)."""
    return f"{instruction}\n\n{input}" if input else instruction


def instruction_messages(row: dict) -> list[dict]:
    """A pool row as chat messages: its system prompt and earlier turns when it is a
    conversation (lion_distill.data.conversations), then the instruction (with its input)."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    history = [{"role": t["role"], "content": t["content"]} for t in history_turns(row.get("history"))]
    return (
        system + history + [{"role": "user", "content": instruction_text(row["instruction"], row.get("input") or "")}]
    )


def student_prompt(row: dict, prompt_format: str) -> list[dict] | str:
    """What the student is asked, as it was trained (lion_distill.train.batches): chat messages in
    `chat`, the Alpaca prompt in `alpaca` (which has no place for a conversation's context)."""
    if prompt_format == "chat":
        return instruction_messages(row)
    if prompt_format != "alpaca":
        raise ValueError(f"prompt_format must be one of {FORMATS}, not {prompt_format!r}")
    if is_conversation(row):
        raise ValueError(
            f"row id={row.get('id')!r} is a conversation (a system prompt or earlier turns), which the Alpaca "
            "layout cannot hold: set student.prompt_format: chat"
        )
    return alpaca_prompt(row["instruction"], row["input"])


def assistant_turn(answer: dict, reasoning: str) -> dict:
    """A teacher's answer as the assistant turn the student learns: its text, its thinking when
    `reasoning` is "keep" (docs/design.md "Data contracts"), and `complete` False when it was cut."""
    turn = {"role": "assistant", "content": answer["text"], "complete": answer.get("finish_reason") != "length"}
    if reasoning == "keep" and answer.get("reasoning"):
        turn["reasoning"] = answer["reasoning"]
    return turn


def training_row(row: dict, answer: dict, prompt_format: str, reasoning: str = "drop") -> dict:
    """A pool row and the teacher's answer to it as a training row in `prompt_format`'s layout
    (docs/design.md "Data contracts"), keyed by the row's `id`: `chat`, the row's conversation
    (`instruction_messages`) then the answer as its assistant turn; `alpaca`, Lion's columns."""
    if prompt_format == "chat":
        messages = [*instruction_messages(row), assistant_turn(answer, reasoning)]
        return {"id": row["id"], "messages": json.dumps(messages, ensure_ascii=False)}
    student_prompt(row, prompt_format)  # refuses a conversation, or an unknown format, in one line
    return {
        "id": row["id"],
        "instruction": row["instruction"],
        "input": row["input"],
        "response": answer["text"],
        "complete": answer.get("finish_reason") != "length",
    }


def prompt_format(role) -> str:
    """A student role's format: its `prompt_format`, or (null) chat when its tokenizer has a chat
    template, alpaca otherwise. A job fixes it once, on the base student (lion_distill.lion.loop):
    an `alpaca` student's export carries a chat template of its own (lion_distill.train.card)."""
    chosen = getattr(role, "prompt_format", None)
    return chosen or ("chat" if has_chat_template(role.model) else "alpaca")


@lru_cache(maxsize=32)
def has_chat_template(model: str) -> bool:
    """Whether a model's tokenizer carries a chat template: a local folder's files are read without
    loading it; a hub name or object-store model's tokenizer is loaded (its files only). A model
    that cannot be found has none."""
    if os.path.isdir(model):
        if any(os.path.isfile(os.path.join(model, name)) for name in ("chat_template.jinja", "chat_template.json")):
            return True
        try:
            with open(os.path.join(model, "tokenizer_config.json"), encoding="utf-8") as f:
                return bool(json.load(f).get("chat_template"))
        except (OSError, ValueError):
            return False
    from transformers import AutoTokenizer

    from lion_distill.data.remote import local_model

    try:
        return bool(AutoTokenizer.from_pretrained(local_model(model, tokenizer_only=True)).chat_template)
    except (OSError, ValueError):  # no such model here: preflight says so (lion_distill.preflight.role_checks)
        return False
