"""A teacher's chain-of-thought reply -> (rationale, label), or the reason it is unusable.

    parse_reply("Only a blotter absorbs ink. So the answer is (e).", TASKS["cqa"], choices)
    # -> Parsed(rationale="Only a blotter absorbs ink.", label="blotter")

Nothing is guessed: a reply that runs into an invented next example before answering, has no
answer phrase, no rationale, or a label outside the task's space is a `ParseFailure`, counted
by reason and left out of the teacher-labelled training data (its rationale, `rationale_of`,
still trains step_by_step with gold labels, as in the reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from lion_distill.step_by_step.evaluate import equation_value
from lion_distill.step_by_step.tasks import Choices, Fixed, Number, Task

# Few-shot completions run on into a made-up next example (PaLM's do): cut there first.
NEXT_EXAMPLE = re.compile(r"\n\s*(?:Q:|Premise:)")
EQUATION = re.compile(r"[\d\s.+\-*/()]*\d[\d\s.+\-*/()]*")
NUMBER_WITH_UNITS = re.compile(r"\$?\s*(-?\d[\d,]*(?:\.\d+)?)\s*(?:%|[A-Za-z$][A-Za-z$ ]*)?")
SMALL = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000}


class ParseFailure(StrEnum):
    NO_REPLY = "no_reply"  # the generation itself failed
    RUN_ON = "run_on"  # started the next example before answering
    NO_ANSWER_PHRASE = "no_answer_phrase"
    NO_RATIONALE = "no_rationale"
    LABEL_OUTSIDE_SPACE = "label_outside_space"


@dataclass(frozen=True)
class Parsed:
    rationale: str
    label: str


def parse_reply(text: str | None, task: Task, choices: list[str] | None = None) -> Parsed | ParseFailure:
    if text is None:
        return ParseFailure.NO_REPLY
    head, *rest = NEXT_EXAMPLE.split(text, maxsplit=1)
    rationale, phrase, answer = head.partition(task.answer_phrase)
    if not phrase:
        return ParseFailure.RUN_ON if rest and task.answer_phrase in rest[0] else ParseFailure.NO_ANSWER_PHRASE
    rationale = rationale.strip()
    if not rationale:
        return ParseFailure.NO_RATIONALE
    label = normalise_label(answer.strip().split("\n", 1)[0].strip(), task, choices)
    return Parsed(rationale, label) if label is not None else ParseFailure.LABEL_OUTSIDE_SPACE


def rationale_of(text: str | None, task: Task) -> str:
    """The chain of thought of a reply whose label did not parse: the text before the answer
    phrase (or before the invented next example), "" when there is none. The reference keeps
    such rows for training with gold labels; so does step_by_step with `label_source: gold`."""
    if text is None:
        return ""
    head = NEXT_EXAMPLE.split(text, maxsplit=1)[0]
    return head.partition(task.answer_phrase)[0].strip()


def normalise_label(answer: str, task: Task, choices: list[str] | None = None) -> str | None:
    """The canonical label for an answer, or None when it is outside the task's label space."""
    answer = answer.strip().rstrip(".").strip()
    if isinstance(task.space, Choices):
        return _choice(answer, choices or [])
    if isinstance(task.space, Fixed):
        folded = answer.casefold()
        return next((label for label in task.space.labels if label.casefold() == folded), None)
    if isinstance(task.space, Number):
        return _number(answer)
    raise TypeError(f"unknown label space {task.space!r}")


def _choice(answer: str, choices: list[str]) -> str | None:
    by_text = {c.casefold(): c for c in choices}
    m = re.fullmatch(r"\(([a-z])\)\s*(.*)", answer, flags=re.IGNORECASE)
    if not m:
        return by_text.get(answer.casefold())
    index, text = ord(m.group(1).lower()) - ord("a"), m.group(2).strip()
    if text:  # "(c) train station": the text must be that choice
        chosen = by_text.get(text.casefold())
        return chosen if chosen is not None and index < len(choices) and choices[index] == chosen else None
    return choices[index] if index < len(choices) else None


def _number(answer: str) -> str | None:
    """An equation as written ("(16 * 17) * 4"), or a number from "42 apples", "$5", "1,000",
    "forty-two"."""
    if EQUATION.fullmatch(answer) and equation_value(answer) is not None:
        return answer.strip()
    m = NUMBER_WITH_UNITS.fullmatch(answer)
    if m:
        return m.group(1).replace(",", "")
    value = words_to_number(answer)
    return None if value is None else str(value)


def words_to_number(text: str) -> int | None:
    """ "one hundred and five" -> 105, "forty-two" -> 42; None when any word is not a number word."""
    words = [w for w in re.split(r"[\s-]+", text.casefold()) if w and w != "and"]
    if not words:
        return None
    total, current = 0, 0
    for word in words:
        if word in SMALL:
            current += SMALL[word]
        elif word in TENS:
            current += TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in SCALES:
            total, current = total + max(current, 1) * SCALES[word], 0
        else:
            return None
    return total + current
