"""Every prompt Lion sends to its referee and generator, in one place.

Referee: the FastChat/Vicuna pairwise reviewer prompt Lion used, unchanged in its
scoring rules (helpfulness, relevance, accuracy, level of detail; 1-10; scores on the
first line, explanation after), so scores stay comparable with the paper. The question
shown to the referee carries the row's `input`, which the original code dropped.

Generator: Lion's two "Prompt Creator" tasks, hard (same domain and task type, similar
length and difficulty) and easy (same domain, rarer: the long tail). Both show the seed
instruction with its input and ask for exactly one new instruction in the same
"### Instruction: / ### Input:" layout, with <noinput> for none, so one parser reads
replies of both kinds and an input is never lost on the way back either.
"""
from __future__ import annotations

REFEREE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

REFEREE_RULES = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. In the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment."
)

REFEREE_USER = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{rules}\n\n"
)

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


def referee_user(question: str, answer_1: str, answer_2: str) -> str:
    return REFEREE_USER.format(question=question, answer_1=answer_1, answer_2=answer_2, rules=REFEREE_RULES)


def generator_user(kind: str, instruction: str, input: str) -> str:
    if kind not in GENERATOR_GOALS:
        raise ValueError(f"generator kind must be one of {sorted(GENERATOR_GOALS)}, not {kind!r}")
    return _CREATOR.format(goal=GENERATOR_GOALS[kind], instruction=instruction, input=input or NO_INPUT)
