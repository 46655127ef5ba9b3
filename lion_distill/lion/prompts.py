"""Every prompt Lion sends to its referee and generator, and the evaluation judge's, in one place.

Referee and judge prompts are the reference code's text, character for character
(tests/reference/ holds the copies, with provenance and licence, that the tests compare
them with):

- Lion's referee (YJiangcm/Lion `src/chatgpt_referee.py`, `gen_prompt`, MIT): the
  explanation first, then "Score of the Assistant 1: <score>" / "Score of the Assistant
  2: <score>". Its rubric lines keep the four-space indent of the original's
  triple-quoted string: that is what Lion sent.
- FastChat's three judge prompts (lm-sys/FastChat `fastchat/eval/table/prompt.jsonl`,
  Apache-2.0), which `reviewer.jsonl` routes by question category: general (scores on
  the first line), coding (a code review, scores on the first line), math (solve first,
  then the scores as a Python tuple).

The question shown carries the row's `input`, which the original code dropped.

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

# Lion's and FastChat's system message alike.
REFEREE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

LION_REFEREE_TEMPLATE = (
    "[Instruction]\n{instruction}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n"
)
LION_REFEREE_RULES = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "instruction displayed above.\n"
    "    \n"
    "    Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "\n"
    "    Please first provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment. Then, output "
    "two lines indicating the scores for Assistant 1 and 2, respectively.\n"
    "\n"
    "    Output with the following format:\n"
    "    Evaluation evidence: <your evaluation explanation here>\n"
    "    Score of the Assistant 1: <score>\n"
    "    Score of the Assistant 2: <score>"
)

# FastChat's `prompt_template`, the same for its three prompts.
FASTCHAT_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
# FastChat's `defaults.prompt` of prompt_id 1 (general), 2 (coding), 3 (math).
FASTCHAT_RULES = {
    "general": (
        "We would like to request your feedback on the performance of two AI assistants in response to the "
        "user question displayed above.\n"
        "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
        "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
        "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
        "respectively. The two scores are separated by a space. In the subsequent line, please provide a "
        "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
        "which the responses were presented does not affect your judgment."
    ),
    "coding": (
        "Your task is to evaluate the coding abilities of the above two assistants. They have been asked to "
        "implement a program to solve a given problem. Please review their code submissions, paying close attention "
        "to their problem-solving approach, code structure, readability, and the inclusion of helpful comments.\n\n"
        "Please ensure that the assistants' submissions:\n\n"
        "1. Correctly implement the given problem statement.\n"
        "2. Contain accurate and efficient code.\n"
        "3. Include clear and concise comments that explain the code's logic and functionality.\n"
        "4. Adhere to proper coding standards and best practices.\n\n"
        "Once you have carefully reviewed both submissions, provide detailed feedback on their strengths and "
        "weaknesses, along with any suggestions for improvement. You should first output a single line containing "
        "two scores on the scale of 1-10 (1: no code/no sense; 10: perfect) for Assistant 1 and 2, respectively. "
        "Then give extra comments starting from the next line."
    ),
    "math": (
        "We would like to request your feedback on the mathematical proficiency of two AI assistants regarding the "
        "given user question displayed above.\n"
        "First, please solve the problem independently, without referring to the answers provided by Assistant 1 "
        "and Assistant 2.\n"
        "Afterward, please examine the problem-solving process of Assistant 1 and Assistant 2 step-by-step to ensure "
        "their correctness, identifying any incorrect steps if present. Your evaluation should take into account not "
        "only the answer but also the problem-solving steps.\n"
        "Finally, please output a Python tuple containing two numerical scores for Assistant 1 and Assistant 2, "
        "ranging from 1 to 10, respectively. If applicable, explain the reasons for any variations in their scores "
        "and determine which assistant performed better."
    ),
}

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
