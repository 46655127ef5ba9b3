"""How a referee or judge is asked to compare two answers: a rubric is the prompt, the
parser of its reply layout and the structured-output constraint that keeps a vLLM-served
model to that layout.

- `lion`: Lion's referee (explanation, then "Score of the Assistant 1/2: <score>").
  Lion's discrimination default (`lion.referee_prompt: lion`).
- `general`, `coding`, `math`: FastChat's three judge prompts. The evaluation routes a
  question by its category as FastChat's `reviewer.jsonl` does (`eval.judge_prompt:
  fastchat`); `lion.referee_prompt: vicuna` and `eval.judge_prompt: vicuna` send
  `general` to every pair.

The regexes let the explanation come first where the rubric asks for it, and bound it so
that a constrained reply always ends within the role's `max_tokens` (every token spells at
least one character): a review cut mid-explanation would hold no scores at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lion_distill.judging.prompts import (
    FASTCHAT_RULES,
    FASTCHAT_TEMPLATE,
    LION_REFEREE_RULES,
    LION_REFEREE_TEMPLATE,
    REFEREE_SYSTEM,
)
from lion_distill.judging.reviews import SCORES_FIRST_AT, parse_score_tuple, parse_scores_first, parse_scores_last

_SCORE = "(10|[1-9])"
# What a constrained explanation may hold: prose, numbers and code-ish punctuation, lines.
_TEXT = "[A-Za-z0-9 ,.;:!?'\"()%/+*=<>&\\n-]"
SCORES_FIRST_REGEX = rf"{_SCORE} {_SCORE}\n{_TEXT}{{0,400}}"
MIN_EXPLANATION_CHARS = 16


def _schema(explanation_first: bool) -> dict:
    """JSON replies: a schema's properties are generated in order, so the order is the rubric's."""
    score = {"type": "integer", "minimum": 1, "maximum": 10}
    scores = {"assistant_1": score, "assistant_2": score}
    explanation = {"explanation": {"type": "string", "maxLength": 1000}}
    properties = {**explanation, **scores} if explanation_first else {**scores, **explanation}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _explanation_then(closing: str, opening: str = ""):
    """A regex builder: `opening` (plain text), an explanation, `closing` (its length reserved in max_tokens)."""
    fixed = len(opening) + len(closing.replace("\\n", "\n").replace(_SCORE, "10"))

    def regex(max_tokens: int) -> str:
        room = min(1000, max_tokens - fixed)
        if room < MIN_EXPLANATION_CHARS:
            raise ValueError(
                f"sampling.max_tokens {max_tokens} leaves no room for an explanation before the scores "
                f"(a constrained review): give the referee / judge at least {fixed + MIN_EXPLANATION_CHARS}"
            )
        return f"{opening}{_TEXT}{{1,{room}}}{closing}"

    return regex


# The templates' own section markers: inside a question or an answer one would end that section and
# open another (an answer that closes itself and writes its own [System] rules). Bracketed there, they
# are shown in parentheses; a text without them is the paper's prompt byte for byte.
_DELIMITER = re.compile(r"\[(The (?:Start|End) of Assistant \d+'s Answer|System|Question|Instruction)\]", re.IGNORECASE)


def neutralised(text: str) -> str:
    return _DELIMITER.sub(r"(\1)", text)


@dataclass(frozen=True)
class Rubric:
    name: str
    template: str  # {answer_1}, {answer_2}, {prompt} and the question as `question_slot`
    rules: str
    parse: Callable[[str | None], tuple[float, float] | None]
    regex: Callable[[int], str]  # the role's max_tokens -> the guided-decoding regex
    scores_at: re.Pattern  # the two scores in a reply decoded under `regex` (logprob weighting)
    schema: dict
    question_slot: str = "question"
    system: str = REFEREE_SYSTEM
    scores_first: bool = False  # a review cut at max_tokens after its first line still holds both scores

    def messages(self, question: str, answer_1: str, answer_2: str) -> list[dict]:
        texts = {self.question_slot: question, "answer_1": answer_1, "answer_2": answer_2}
        user = self.template.format(**{k: neutralised(v) for k, v in texts.items()}, prompt=self.rules)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


_LION_CLOSING = rf"\nScore of the Assistant 1: {_SCORE}\nScore of the Assistant 2: {_SCORE}"
_SCORES_FIRST = dict(
    template=FASTCHAT_TEMPLATE,
    parse=parse_scores_first,
    regex=lambda _: SCORES_FIRST_REGEX,
    scores_at=SCORES_FIRST_AT,
    schema=_schema(explanation_first=False),
    scores_first=True,
)
RUBRICS = {
    "lion": Rubric(
        "lion",
        LION_REFEREE_TEMPLATE,
        LION_REFEREE_RULES,
        parse_scores_last,
        _explanation_then(_LION_CLOSING, opening="Evaluation evidence: "),
        re.compile(rf"Score of the Assistant 1: {_SCORE}\nScore of the Assistant 2: {_SCORE}\Z"),
        _schema(explanation_first=True),
        question_slot="instruction",
    ),
    "general": Rubric("general", rules=FASTCHAT_RULES["general"], **_SCORES_FIRST),
    "coding": Rubric("coding", rules=FASTCHAT_RULES["coding"], **_SCORES_FIRST),
    "math": Rubric(
        "math",
        FASTCHAT_TEMPLATE,
        FASTCHAT_RULES["math"],
        parse_score_tuple,
        _explanation_then(rf"\n\({_SCORE}, {_SCORE}\)"),
        re.compile(rf"\({_SCORE}, {_SCORE}\)\Z"),
        _schema(explanation_first=True),
    ),
}
# FastChat's reviewer.jsonl: the reviewer of a question's category, else the general one.
FASTCHAT_ROUTES = {"coding": "coding", "math": "math"}


def rubric_for(prompt: str, category: str | None = None) -> Rubric:
    """The rubric a pair is judged with under a `referee_prompt` / `judge_prompt` setting:
    `lion`; `vicuna` (FastChat's general prompt for every pair); `fastchat` (by category)."""
    if prompt == "fastchat":
        return RUBRICS[FASTCHAT_ROUTES.get(category or "", "general")]
    return RUBRICS["general" if prompt == "vicuna" else prompt]
