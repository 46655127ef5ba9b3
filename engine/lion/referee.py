"""The referee: asks, parses and aggregates pairwise reviews of teacher vs student answers.

Each cache-pool instruction is reviewed twice, teacher's answer first and then
student's first, and the two orders are averaged to cancel the referee's position
bias. `gap = teacher_score - student_score`; the instruction is hard when gap >= tau.

A review that cannot be read is never turned into a number (the original code scored
it -1, which leaked into averages): it gets a `failed: ...` status and null scores,
the caller retries those ids (`unparseable_ids`, `merge_retried`), and `summarize`
counts failures by reason and averages only the rows that were judged.

A student that answers nothing (an empty or failed answer, against a teacher answer)
has lost the comparison: the referee is shown the empty answer as it is and scores
the teacher, and the student gets the lowest score, 1, in both orders. The pair is
judged (hard when the teacher's score is at least 1 + tau), not excluded. The
evaluation judges reference vs candidate with the same rules (`roles`).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from itertools import accumulate

import pyarrow as pa

from engine.lion.prompts import REFEREE_SYSTEM, referee_user
from engine.llm.prompts import instruction_text

# Guided decoding: even a random model must emit "<score> <score>\n<explanation>".
REVIEW_REGEX = r"(10|[1-9]) (10|[1-9])\n[A-Za-z0-9 ,.;:'()-]{0,400}"
REVIEW_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "assistant_1": {"type": "integer", "minimum": 1, "maximum": 10},
        "assistant_2": {"type": "integer", "minimum": 1, "maximum": 10},
        "explanation": {"type": "string", "maxLength": 1000},
    },
    "required": ["assistant_1", "assistant_2", "explanation"],
    "additionalProperties": False,
}

OK = "ok"
UNPARSEABLE = "failed: unparseable review"
EMPTY_ANSWER = "failed: empty answer"
LOWEST_SCORE = 1.0

def judgment_schema(first: str = "teacher", second: str = "student") -> pa.Schema:
    """Judgment rows of `first` (the reference side: gap = first - second) vs `second`.
    Lion judges teacher vs student; evaluation judges reference vs candidate."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field(f"review_{first}_first", pa.string()),
            pa.field(f"review_{second}_first", pa.string()),
            pa.field(f"{first}_score_1", pa.float64()),  # {first}-first order
            pa.field(f"{second}_score_1", pa.float64()),
            pa.field(f"{first}_score_2", pa.float64()),  # {second}-first order
            pa.field(f"{second}_score_2", pa.float64()),
            pa.field(f"{first}_score", pa.float64()),  # mean of the two orders
            pa.field(f"{second}_score", pa.float64()),
            pa.field("gap", pa.float64()),
            pa.field("hard", pa.bool_()),  # gap >= tau; null when failed
            pa.field("status", pa.string(), nullable=False),  # ok | failed: <reason>
        ]
    )


ROLES = ("teacher", "student")
JUDGMENT_SCHEMA = judgment_schema(*ROLES)


def referee_messages(row: dict, first: str, second: str) -> list[dict]:
    """Chat messages asking to review `first` (Assistant 1) and `second` (Assistant 2)."""
    question = instruction_text(row["instruction"], row.get("input") or "")
    return [
        {"role": "system", "content": REFEREE_SYSTEM},
        {"role": "user", "content": referee_user(question, first, second)},
    ]


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


def parse_review(text: str | None) -> tuple[float, float] | None:
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

_REGEX_HEAD = re.compile(r"(10|[1-9]) (10|[1-9])\n")


def _align(steps: list[dict[str, float]], text: str, end: int, i: int = 0, offset: int = 0) -> list[str] | None:
    """The sampled token of each step until `end` chars of `text` are spelled.

    engine.llm's steps list the top candidates with the sampled one among them but do
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


def logprob_scores(logprobs: str | list[dict[str, float]] | None, text: str | None) -> tuple[float, float] | None:
    """Probability-weighted (score 1, score 2) of a review decoded under REVIEW_REGEX.

    `logprobs` is engine.llm's column: per generated token, a {token_text: logprob} map
    of the top candidates (a JSON string or the parsed list); `text` the review itself.
    At each score's first token: the expectation over the candidates "1".."10",
    renormalised among them. Tokenizers that split digits spell 10 as "1", "0": where
    the sampled path did so, the next step's probability of "0" moves that share of the
    "1" mass to 10; elsewhere their "1" counts as 1 (a small bias toward 1 that only such
    tokenizers have). None when there are no logprobs, the text does not start like
    REVIEW_REGEX ("<score> <score>\\n"), the steps do not spell the text, or a score
    step has no candidate 1..10: the caller then keeps the scores read from the text.
    """
    steps = json.loads(logprobs) if isinstance(logprobs, str) else logprobs
    head = _REGEX_HEAD.match(text or "")
    if not steps or head is None:
        return None
    tokens = _align(steps, text, head.end())
    if tokens is None:
        return None
    first, second = _score_at(steps, tokens, head.start(1)), _score_at(steps, tokens, head.start(2))
    return None if first is None or second is None else (first, second)


# ---------------------------------------------------------------- judgments

def _review_scores(review: dict, use_logprobs: bool) -> tuple[float, float] | str:
    """(Assistant 1, Assistant 2) scores of one review, or the failed status."""
    reason = review.get("finish_reason") or ""
    if reason.startswith("failed"):
        return reason
    scores = parse_review(review.get("text"))
    if scores is None:
        return UNPARSEABLE
    # The text decides whether there is a judgment at all; logprobs only refine it.
    if use_logprobs and review.get("logprobs"):
        scores = logprob_scores(review["logprobs"], review["text"]) or scores
    return scores


def _answer_failure(pair: dict, reference: str) -> str | None:
    """Why a pair cannot be judged: only the reference side's (the teacher's) answer can make it so."""
    reason = pair.get(f"{reference}_finish_reason") or ""
    if reason.startswith("failed"):
        return f"failed: {reference} answer {reason}"
    if not (pair.get(f"{reference}_text") or "").strip():
        return EMPTY_ANSWER
    return None


def answered(pair: dict, role: str = "student") -> bool:
    return not (pair.get(f"{role}_finish_reason") or "").startswith("failed") and bool((pair.get(f"{role}_text") or "").strip())


def judgment_rows(
    pairs: list[dict],
    reviews_first: list[dict],
    reviews_second: list[dict],
    tau: float,
    use_logprobs: bool = True,
    roles: tuple[str, str] = ROLES,
) -> list[dict]:
    """One judgment row per pair; the three lists are aligned by position.

    With roles (a, b) = ("teacher", "student"): a pair has `id`, `instruction`, `input`,
    `teacher_text`, `student_text` and optionally `teacher_finish_reason` /
    `student_finish_reason`. A review has `text`, `finish_reason` and optionally
    `logprobs` (and `id`, checked against the pair's). In `reviews_first` Assistant 1 is
    a (the teacher), in `reviews_second` Assistant 1 is b (the student). Failed rows
    (a's answer failed or is empty, a review failed or is unparseable) keep their raw
    reviews and get null scores and hard=None. An empty or failed answer of b scores
    LOWEST_SCORE in both orders (a's scores still come from the reviews). Columns:
    `judgment_schema(*roles)`; evaluation passes ("reference", "candidate").
    """
    if not len(pairs) == len(reviews_first) == len(reviews_second):
        raise ValueError(
            f"judgment_rows needs one review per pair and order: {len(pairs)} pairs, "
            f"{len(reviews_first)} {roles[0]}-first and {len(reviews_second)} {roles[1]}-first reviews"
        )
    a, b = roles
    names = judgment_schema(*roles).names
    rows = []
    for pair, af, bf in zip(pairs, reviews_first, reviews_second):
        for review in (af, bf):
            if review.get("id") not in (None, pair["id"]):
                raise ValueError(f"review for id {review['id']!r} is aligned with pair {pair['id']!r}")
        row = dict.fromkeys(names)
        row.update({"id": pair["id"], f"review_{a}_first": af.get("text"), f"review_{b}_first": bf.get("text")})
        failure = _answer_failure(pair, a)
        first = second = None
        if failure is None:
            first, second = _review_scores(af, use_logprobs), _review_scores(bf, use_logprobs)
            failure = next((s for s in (first, second) if isinstance(s, str)), None)
        if failure is not None:
            rows.append({**row, "status": failure})
            continue
        (a1, b1), (b2, a2) = first, second  # positions swap in the b-first order
        if not answered(pair, b):
            b1 = b2 = LOWEST_SCORE
        mean_a, mean_b = (a1 + a2) / 2, (b1 + b2) / 2
        rows.append({
            **row, f"{a}_score_1": a1, f"{b}_score_1": b1, f"{a}_score_2": a2, f"{b}_score_2": b2,
            f"{a}_score": mean_a, f"{b}_score": mean_b, "gap": mean_a - mean_b,
            "hard": mean_a - mean_b >= tau, "status": OK,
        })
    return rows


def unparseable_ids(judgments: list[dict]) -> list[str]:
    """Ids worth asking the referee again (with another seed): a review could not be read."""
    return [j["id"] for j in judgments if j["status"] == UNPARSEABLE]


def merge_retried(judgments: list[dict], retried: list[dict]) -> list[dict]:
    """`judgments` with each row replaced by its retry when the retry succeeded; order kept."""
    better = {j["id"]: j for j in retried if j["status"] == OK}
    return [better.get(j["id"], j) for j in judgments]


def summarize(judgments: list[dict]) -> dict:
    """The discrimination stage's numbers; averages over judged rows only."""
    ok = [j for j in judgments if j["status"] == OK]
    hard = sum(1 for j in ok if j["hard"])

    def mean(key: str) -> float | None:
        return sum(j[key] for j in ok) / len(ok) if ok else None

    return {
        "rows": len(judgments),
        "judged": len(ok),
        "failed": len(judgments) - len(ok),
        "failed_by_reason": dict(Counter(j["status"] for j in judgments if j["status"] != OK)),
        "hard": hard,
        "easy": len(ok) - hard,
        "hard_fraction": hard / len(ok) if ok else None,
        "mean_gap": mean("gap"),
        "mean_teacher_score": mean("teacher_score"),
        "mean_student_score": mean("student_score"),
    }
