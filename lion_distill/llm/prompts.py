"""How an instruction row becomes a prompt.

Students are trained on Lion's Alpaca-layout prompts (instruction, and input when
present; src/train.py's `PROMPT_DICT`) and must be asked in exactly that format at
generation time, so both sides call `alpaca_prompt`; a conversation (a system prompt or earlier
turns) goes through the student's chat template instead (`student_prompt`). Teacher, referee and
generator get chat messages, rendered with the model's own chat template (or sent as-is to an API).
"""

from __future__ import annotations

from lion_distill.data.conversations import is_conversation
from lion_distill.data.schema import history_turns

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


def student_prompt(row: dict) -> list[dict] | str:
    """What the student is asked, as it was trained (lion_distill.train.batches): the Alpaca prompt
    for an instruction, its own chat template for a conversation."""
    return instruction_messages(row) if is_conversation(row) else alpaca_prompt(row["instruction"], row["input"])
