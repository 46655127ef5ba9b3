"""How an instruction row becomes a prompt.

Students are trained on Alpaca-format prompts (instruction, and input when present)
and must be asked in exactly that format at generation time, so both sides call
`alpaca_prompt`. Teacher, referee and generator get chat messages, rendered with
the model's own chat template (or sent as-is to an API).
"""
from __future__ import annotations

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def instruction_text(instruction: str, input: str = "") -> str:
    """An instruction and its input as one user turn (the input is never dropped)."""
    return f"{instruction}\n\n{input}" if input else instruction


def instruction_messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": instruction_text(row["instruction"], row.get("input") or "")}]
