"""Reading a review: the two scores a referee or judge gave, from its text, and
probability-weighted from its score tokens' logprobs.

Three layouts, one per rubric (lion_distill.judging.rubrics): FastChat's scores first
("8 7" on the first line: the Vicuna general and coding prompts), Lion's scores last
("Score of the Assistant 1: 8" / "Score of the Assistant 2: 7" as the last lines), and
FastChat's math prompt's Python tuple ("(8, 7)", after the judge's own solution). Each
parser is tolerant of what models do around the asked-for layout and returns None for
anything it cannot read: a review is never turned into a number it did not give.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate

# ---------------------------------------------------------------- reading a review's text

_NUMBER = r"(\d+(?:\.\d+)?)"
_OUT_OF_TEN_SUFFIX = re.compile(r"\s*(?:/\s*10|out\s+of\s+10)\b", re.IGNORECASE)
_OUT_OF_TEN = rf"(?:{_OUT_OF_TEN_SUFFIX.pattern})?"
_LABELLED = re.compile(rf"assistant\s*([12])\b(?:(?!assistant)\D){{0,40}}?{_NUMBER}{_OUT_OF_TEN}", re.IGNORECASE)
# Words that may sit around the two numbers on a score line; anything else means the
# line is prose ("Assistant 1 gave 3 examples and 2 ...") and is not read as scores.
_FILLER = re.compile(
    r"(?:\b(?:final|overall|scores?|ratings?|and|vs\.?|versus)\b|[\s,;:|\-&])",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"[*_`#>\[\]]")


def _score(number: str | float) -> float | None:
    value = float(number)
    return value if 1.0 <= value <= 10.0 else None


def _pair(a: str | float, b: str | float) -> tuple[float, float] | None:
    first, second = _score(a), _score(b)
    return None if first is None or second is None else (first, second)


def _score_line(lines: list[str]) -> int | None:
    """Index of the first line with a digit, if only short headings ("Scores:",
    "Here are my ratings:") come before it, never prose."""
    for i, line in enumerate(lines[:3]):
        if any(c.isdigit() for c in line):
            return i
        if not line.endswith(":"):
            return None
    return None


def _from_json(text: str) -> tuple[float, float] | None:
    """A review decoded under REVIEW_JSON_SCHEMA."""
    try:
        review = json.loads(text)
    except ValueError:
        return None
    if not isinstance(review, dict):
        return None
    scores = review.get("assistant_1"), review.get("assistant_2")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        return None
    return _pair(*scores)


def parse_scores_first(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2) from a review's first lines, or None.

    Reads "8 7", "8/10 7/10", "8.5, 7", "**8 7**", "Scores: 8 and 7", and labelled scores
    on one or two lines ("Assistant 1: 8\\nAssistant 2: 7"), and REVIEW_JSON_SCHEMA's
    {"assistant_1": 8, "assistant_2": 7, ...}. None for anything else: a single number,
    three numbers, a score outside 1-10, prose, an empty reply.
    """
    if (text or "").lstrip().startswith("{"):
        return _from_json(text)
    lines = [clean for raw in (text or "").splitlines() if (clean := _MARKUP.sub("", raw).strip())]
    i = _score_line(lines)
    if i is None:
        return None
    labels = {m.group(1): m.group(2) for m in _LABELLED.finditer(lines[i])}
    if set(labels) == {"1"} and i + 1 < len(lines):
        labels.update((m.group(1), m.group(2)) for m in _LABELLED.finditer(lines[i + 1]))
    if labels:
        repeated = len(_LABELLED.findall(lines[i])) > len(labels)
        return _pair(labels["1"], labels["2"]) if set(labels) == {"1", "2"} and not repeated else None
    line = _OUT_OF_TEN_SUFFIX.sub("", lines[i])
    numbers = re.findall(_NUMBER, line)
    if len(numbers) != 2 or _FILLER.sub("", re.sub(_NUMBER, "", line)):
        return None
    return _pair(*numbers)


# ---------------------------------------------------------------- probability-weighted scores

# Where the two scores sit in a review decoded under each rubric's regex: group 1 and 2.
SCORES_FIRST_AT = re.compile(r"\A(10|[1-9]) (10|[1-9])\n")


def _align(steps: list[dict[str, float]], text: str, end: int, i: int = 0, offset: int = 0) -> list[str] | None:
    """The sampled token of each step until `end` chars of `text` are spelled.

    lion_distill.llm's steps list the top candidates with the sampled one among them but do
    not say which it is: it is the candidate that continues the text. Where two do
    ("1" and "10" before "0"), the longer is tried first and the other on a dead end.
    """
    if offset >= end:
        return []
    if i >= len(steps):
        return None
    for token in sorted((t for t in steps[i] if t and text.startswith(t, offset)), key=len, reverse=True):
        rest = _align(steps, text, end, i + 1, offset + len(token))
        if rest is not None:
            return [token, *rest]
    return None


def _expected(top: dict[str, float], one_is_ten: float = 0.0) -> float | None:
    """Expectation over candidates that are a score 1..10, renormalised among them.

    `one_is_ten`: the probability that a "1" goes on to "0" (tokenizers that split digits
    spell 10 as "1", "0"), which moves that share of the "1" mass to 10.
    """
    mass: dict[int, float] = {}
    for token, logprob in top.items():
        text = token.strip()
        if text.isdigit() and 1 <= int(text) <= 10:
            mass[int(text)] = mass.get(int(text), 0.0) + math.exp(logprob)
    if one_is_ten and 1 in mass:
        mass[10] = mass.get(10, 0.0) + mass[1] * one_is_ten
        mass[1] *= 1.0 - one_is_ten
    total = sum(mass.values())
    return sum(score * p for score, p in mass.items()) / total if total > 0 else None


def _score_at(steps: list[dict[str, float]], tokens: list[str], offset: int) -> float | None:
    """Expected score at the step where the number at char `offset` of the text begins."""
    starts = list(accumulate((len(t) for t in tokens[:-1]), initial=0))
    i = max(k for k, start in enumerate(starts) if start <= offset)
    if tokens[i][: offset - starts[i]].strip():
        return None  # the number does not begin this token (merged with what came before)
    one_is_ten = 0.0
    if tokens[i].strip() == "1" and i + 1 < len(tokens) and tokens[i + 1] == "0":
        one_is_ten = math.exp(steps[i + 1]["0"])
    return _expected(steps[i], one_is_ten)


def logprob_scores(
    logprobs: str | list[dict[str, float]] | None, text: str | None, scores_at: re.Pattern = SCORES_FIRST_AT
) -> tuple[float, float] | None:
    """Probability-weighted (score 1, score 2) of a review decoded under a rubric's regex.

    `logprobs` is lion_distill.llm's column: per generated token, a {token_text: logprob} map
    of the top candidates (a JSON string or the parsed list); `text` the review itself;
    `scores_at` finds the two score numbers in it (groups 1 and 2: the rubric's).
    At each score's first token: the expectation over the candidates "1".."10",
    renormalised among them. Tokenizers that split digits spell 10 as "1", "0": where
    the sampled path did so, the next step's probability of "0" moves that share of the
    "1" mass to 10; elsewhere their "1" counts as 1 (a small bias toward 1 that only such
    tokenizers have). None when there are no logprobs, `scores_at` finds no scores, the
    steps do not spell the text, or a score step has no candidate 1..10: the caller then
    keeps the scores read from the text.
    """
    steps = json.loads(logprobs) if isinstance(logprobs, str) else logprobs
    found = scores_at.search(text or "")
    if not steps or found is None:
        return None
    tokens = _align(steps, text, found.end())
    if tokens is None:
        return None
    first, second = _score_at(steps, tokens, found.start(1)), _score_at(steps, tokens, found.start(2))
    return None if first is None or second is None else (first, second)


# ---------------------------------------------------------------- Lion's and FastChat-math's layouts

# "Score of the Assistant 1: 8", as Lion asks, and what models make of it: "Assistant 1: 8/10",
# "**Score for Assistant 1:** 8.", "Assistant 1 score = 8". A line that says more is prose.
_SCORE_LAST_LINE = re.compile(
    rf"^(?:(?:the\s+)?(?:final\s+|overall\s+)?score\s+(?:of|for)\s+(?:the\s+)?)?assistant\s*([12])(?:'s)?(?:\s+score)?"
    rf"\s*[:=-]\s*{_NUMBER}{_OUT_OF_TEN}\s*\.?$",
    re.IGNORECASE,
)
# "(8, 7)": the Python tuple FastChat's math prompt asks for; the last one is the verdict.
_TUPLE = re.compile(rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)")


def parse_scores_last(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2) from Lion's closing score lines, or None.

    Lion's `parse_score` reads the review's last two lines, "Score of the Assistant 1:
    <score>" and "Score of the Assistant 2: <score>". This reads the last line of each
    label anywhere after the explanation, with markdown, "/10" or a full stop around the
    number, and a review decoded under the JSON schema. None without both labels, for a
    score outside 1-10, or when the lines are prose.
    """
    if (text or "").lstrip().startswith("{"):
        return _from_json(text)
    scores: dict[str, str] = {}
    for raw in reversed((text or "").splitlines()):
        line = _MARKUP.sub("", raw).strip()
        if (found := _SCORE_LAST_LINE.match(line)) and found.group(1) not in scores:
            scores[found.group(1)] = found.group(2)
        if len(scores) == 2:
            return _pair(scores["1"], scores["2"])
    return None


def parse_score_tuple(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2) from the last "(a, b)" of a math review, or None."""
    if (text or "").lstrip().startswith("{"):
        return _from_json(text)
    tuples = _TUPLE.findall(_MARKUP.sub("", text or ""))
    return _pair(*tuples[-1]) if tuples else None
