"""The four tasks of the paper and a user's own: how a teacher states its answer, and what
counts as a label.

A label space is a typed value: `Choices` (the row's own answer choices, CQA), `Fixed`
(entailment/neutral/contradiction, or a user's labels) or `Number` (SVAMP: an equation or a
number). `Task.answer_phrase` is the phrase the few-shot prompt puts before the answer, exactly
as the released PaLM completions write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NLI_LABELS = ("entailment", "neutral", "contradiction")  # e-SNLI and ANLI label ids 0, 1, 2


@dataclass(frozen=True)
class Choices:
    """The row's `choices`; the teacher may answer "(c)", "(c) train station" or "train station"."""


@dataclass(frozen=True)
class Fixed:
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Number:
    """An arithmetic expression or a number (SVAMP's gold labels are equations)."""


LabelSpace = Choices | Fixed | Number


@dataclass(frozen=True)
class Task:
    name: str
    answer_phrase: str
    space: LabelSpace

    def constraint(self, max_rationale_chars: int = 600) -> str:
        """A vLLM structured-output regex on the answer tail only: a free chain of thought (any
        characters but a newline, arithmetic included, up to `max_rationale_chars`), then the
        answer phrase and a label of the space: a letter and optionally the choice's text, an
        equation or a number, one of the fixed labels."""
        if isinstance(self.space, Choices):
            answer = r"\([a-e]\)( [^\n]{1,80})?"
        elif isinstance(self.space, Number):
            answer = r"[-0-9.+*/() ]{0,60}[0-9][-0-9.+*/() ]{0,60}"
        else:
            answer = "(" + "|".join(literal(label) for label in self.space.labels) + ")"
        # The newline as the escape `\n`: xgrammar (vLLM's structured-output backend) refuses a
        # raw newline in a character class, which Python's `re` accepts.
        sep = r"\n" if self.answer_phrase.endswith(":") else " "
        return rf" ?[^\n]{{1,{max_rationale_chars}}}{sep}{literal(self.answer_phrase)} {answer}\.?"


def literal(text: str) -> str:
    """`text` matched as written: its regex metacharacters escaped, and nothing else (`re.escape`
    escapes spaces too, which xgrammar warns of as unknown escapes)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


TASKS = {
    "cqa": Task("cqa", "So the answer is", Choices()),
    "svamp": Task("svamp", "The answer is", Number()),
    "esnli": Task("esnli", "Answer:", Fixed(NLI_LABELS)),
    "anli1": Task("anli1", "So the answer is", Fixed(NLI_LABELS)),
}


def user_task(labels: list[str] | None, answer_phrase: str = "So the answer is") -> Task:
    """A generic JSONL task: a fixed label set, or (labels None) each row's own choices."""
    return Task("jsonl", answer_phrase, Fixed(tuple(labels)) if labels else Choices())
