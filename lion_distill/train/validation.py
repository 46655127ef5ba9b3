"""Validation inside one training run (the HF Trainer's `load_best_model_at_end`): score the
model `count` times, evenly spaced over the run's optimizer steps (the last at its end), and
keep the export that scored best (or, `keep="last"`, log the scores and keep the final export). The optimizer and the LR schedule run on across
validations; only the kept weights differ from the last ones.

Plain Python, no Ray or torch: `lion_distill.train.loop` calls `score` on rank 0 with a Hugging
Face export of the current weights, so a score is whatever the job measures on an export
(step-by-step: label accuracy on the validation rows, lion_distill.step_by_step.evaluate).

    Validation(count=2, score=lambda model_dir: 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Validation:
    count: int  # validations in the run; the last is at its final step
    score: Callable[[str], float]  # an export folder -> higher is better; must pickle (Ray ships it to rank 0)
    # best: the best-scoring export is kept; last: every score is only logged and the final export
    # is kept (the protocol of a trainer without load_best_model_at_end)
    keep: str = "best"

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"Validation.count must be at least 1, got {self.count}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"Validation.keep must be 'best' or 'last', not {self.keep!r}")

    def kept(self, score: float, history: list[dict]) -> bool:
        """Whether this validation's export replaces the kept one."""
        return self.keep == "last" or improved(score, history)


def validation_steps(total_steps: int, count: int) -> list[int]:
    """The optimizer steps after which the model is scored: 12 steps, 3 validations -> [4, 8, 12];
    more validations than steps -> every step."""
    return sorted({math.ceil(total_steps * (i + 1) / count) for i in range(count)})


def improved(score: float, history: list[dict]) -> bool:
    """Strictly better than every earlier validation: on a tie the earlier export stays."""
    return all(score > v["score"] for v in history)


def best_step(validations: list[dict], keep: str = "best") -> int | None:
    """The step whose export was kept: the first of the best scores, as `improved` decides (or
    the last validation's, with keep "last")."""
    if not validations:
        return None
    return validations[-1]["step"] if keep == "last" else max(validations, key=lambda v: v["score"])["step"]
