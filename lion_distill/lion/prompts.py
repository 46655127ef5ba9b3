"""The prompts Lion sends to its teacher and generator (the referee's and the evaluation
judge's are lion_distill.judging.prompts).

Generator (`lion.generator_prompt`): Lion's two "Instruction Creator" prompts
(`src/prompt_hard.txt`, `src/prompt_easy.txt`, as `encode_prompt` sends them, under the
system message of Lion's `utils.openai_completion`): hard (same domain and task type,
similar length and difficulty) and easy (same domain, rarer: the long tail); the reply is
the new instruction alone. The seed's input, which Lion drops, follows its instruction
after a blank line. "structured": the project's own pair of prompts, which show the seed
with its input and ask for "### Instruction: / ### Input:" (<noinput> for none), so a new
instruction can come with an input.

Teacher: Lion's `src/chatgpt_inference.py` system message and `generate_prompt`; a row
with an input is asked in the layout of Lion's `src/train.py` `prompt_input` (Lion's
inference drops the input).
"""

from __future__ import annotations

from lion_distill.data.conversations import is_conversation
from lion_distill.llm.prompts import alpaca_prompt, instruction_messages

TEACHER_SYSTEM = "You are a helpful assistant that generates a response to a given task instruction."

LION_GENERATOR_SYSTEM = "You are a helpful assistant."
# prompt_hard.txt / prompt_easy.txt as Python's open().read() gives them (the files have CRLF
# line ends; text mode reads them as "\n").
LION_GENERATOR_PROMPTS = {
    "hard": (
        "I want you to act as an Instruction Creator.\n"
        "Your goal is to draw inspiration from the #Given Instruction# to create a brand new instruction.\n"
        "This new instruction should belong to the same domain and the same task type as the #Given Instruction#.\n"
        "The LENGTH and difficulty level of the #Created Instruction# should be similar to that of the "
        "#Given Instruction#.\n"
        "The #Created Instruction# must be reasonable and must be understood and responded to by humans.\n"
        "'#Given Instruction#', '#Created Instruction#', 'given instruction' and 'created instruction' are not "
        "allowed to appear in #Created Instruction#.\n"
        "\n"
        "#Given Instruction#:\n"
    ),
    "easy": (
        "I want you to act as an Instruction Creator.\n"
        "Your goal is to draw inspiration from the #Given Instruction# to create a brand new instruction.\n"
        "This new instruction should belong to the same domain as the #Given Instruction# but be even more rare.\n"
        "The LENGTH and difficulty level of the #Created Instruction# should be similar to that of the "
        "#Given Instruction#.\n"
        "The #Created Instruction# must be reasonable and must be understood and responded to by humans.\n"
        "'#Given Instruction#', '#Created Instruction#', 'given instruction' and 'created instruction' are not "
        "allowed to appear in #Created Instruction#.\n"
        "\n"
        "#Given Instruction#:\n"
    ),
}


def lion_generator_user(kind: str, instruction: str, input: str) -> str:
    """Lion's `encode_prompt` for one seed: the prompt file, a newline, the seed, "#Created Instruction#:"."""
    if kind not in LION_GENERATOR_PROMPTS:
        raise ValueError(f"generator kind must be one of {sorted(LION_GENERATOR_PROMPTS)}, not {kind!r}")
    seed = f"{instruction}\n\n{input}" if input else instruction
    return LION_GENERATOR_PROMPTS[kind] + "\n" + f"{seed}\n" + "\n#Created Instruction#:"


def teacher_messages(row: dict) -> list[dict]:
    """The teacher's request for an instruction row, as Lion's src/chatgpt_inference.py asks it; a
    conversation's turn is asked as the conversation has it, its own system prompt and earlier turns."""
    if is_conversation(row):
        return instruction_messages(row)
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        # Lion's teacher prompt (`generate_prompt`) is its student template without an input; a row with
        # an input is asked in that template's `prompt_input` layout (Lion drops the input).
        {"role": "user", "content": alpaca_prompt(row["instruction"], row.get("input") or "")},
    ]


NO_INPUT = "<noinput>"

GENERATOR_SYSTEM = "You are a helpful assistant that writes new instructions for training an AI assistant."

_CREATOR = (
    "I want you to act as a Prompt Creator.\n"
    "Your goal is to draw inspiration from the given instruction to create a brand new instruction.\n"
    "{goal}\n"
    "The new instruction must be reasonable and must be understood and answered by humans.\n"
    "It may come with an input (context for the task, e.g. a text to edit or data to analyse); "
    f"write {NO_INPUT} when it needs none.\n"
    "Do not mention the given instruction, and do not write the answer.\n"
    "Reply with exactly one new instruction, in exactly this format and nothing else:\n"
    f"### Instruction:\n<the new instruction>\n### Input:\n<its input, or {NO_INPUT}>\n\n"
    "Given instruction:\n### Instruction:\n{instruction}\n### Input:\n{input}\n"
)

GENERATOR_GOALS = {
    # The student fell short here: more of the same kind of challenge.
    "hard": (
        "The new instruction should belong to the same domain and the same task type as the given instruction.\n"
        "The length and difficulty level of the new instruction should be similar to those of the given instruction."
    ),
    # The student already matches the teacher here: move to rarer ground in the same domain.
    "easy": (
        "The new instruction should belong to the same domain as the given instruction but be even more rare "
        "(a long-tail example of that domain).\n"
        "The length and difficulty level of the new instruction should be similar to those of the given instruction."
    ),
}


def generator_user(kind: str, instruction: str, input: str) -> str:
    if kind not in GENERATOR_GOALS:
        raise ValueError(f"generator kind must be one of {sorted(GENERATOR_GOALS)}, not {kind!r}")
    return _CREATOR.format(goal=GENERATOR_GOALS[kind], instruction=instruction, input=input or NO_INPUT)
