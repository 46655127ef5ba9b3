"""The relative score: the candidate's total over the reference's, as Lion reports it
(Lion-7B 93.81% of ChatGPT on Vicuna-80), overall and per category, with win/tie/loss
counts and a bootstrap 95% interval (80 questions are few).

Pure functions over judgment rows (`candidate_score`, `reference_score`: each the mean
of the two orders; `status`, `category`); only rows judged `ok` are scored. A candidate
that failed to answer, or answered nothing, was judged and lost (its score is 1); an answer
too long for the judge's context was cut to fit and judged (`truncated`); every other
failure is counted by kind, and too many of them fail the evaluation (`check_judged`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from lion_distill.errors import TooFewJudged, count_by_kind
from lion_distill.judging.referee import OK

OUTCOMES = ("win", "tie", "loss")


def outcome(candidate: float, reference: float, tie_margin: float = 0.0) -> str:
    if abs(candidate - reference) <= tie_margin:
        return "tie"
    return "win" if candidate > reference else "loss"


def bootstrap_interval(
    candidate: np.ndarray, reference: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of sum(candidate) / sum(reference) over questions resampled with replacement."""
    picks = np.random.default_rng(seed).integers(0, len(candidate), size=(samples, len(candidate)))
    ratios = candidate[picks].sum(axis=1) / reference[picks].sum(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def score_group(judged: list[dict], tie_margin: float, samples: int, seed: int) -> dict:
    candidate = np.array([j["candidate_score"] for j in judged], dtype=float)
    reference = np.array([j["reference_score"] for j in judged], dtype=float)
    counts = Counter(outcome(c, r, tie_margin) for c, r in zip(candidate, reference))
    group = {
        "questions": len(judged),
        "candidate_score": float(candidate.sum()),
        "reference_score": float(reference.sum()),
        **{name: counts[name] for name in OUTCOMES},
    }
    if not judged:
        return {**group, "relative_score": None, "ci_low": None, "ci_high": None}
    low, high = bootstrap_interval(candidate, reference, samples, seed)
    return {**group, "relative_score": float(candidate.sum() / reference.sum()), "ci_low": low, "ci_high": high}


def aggregate(judgments: list[dict], tie_margin: float = 0.0, samples: int = 2_000, seed: int = 42) -> dict:
    """Overall and per-category scores, and the judge's failures by kind, with one message of each
    kind as its example (never scored)."""
    judged = [j for j in judgments if j["status"] == OK]
    by_kind, examples = count_by_kind((j["failure_kind"], j["failure"]) for j in judgments if j["status"] != OK)
    categories = sorted({j["category"] for j in judgments})
    return {
        "overall": score_group(judged, tie_margin, samples, seed),
        "judged_fraction": len(judged) / len(judgments) if judgments else None,
        "truncated": sum(1 for j in judged if j.get("truncated")),
        "by_category": {
            c: score_group([j for j in judged if j["category"] == c], tie_margin, samples, seed) for c in categories
        },
        "questions": len(judgments),
        "judged": len(judged),
        "failed": len(judgments) - len(judged),
        "failed_by_kind": by_kind,
        "failure_examples": examples,
    }


def check_judged(summary: dict, min_fraction: float, where: str) -> None:
    """Raise TooFewJudged, in one line naming the failures, below `min_fraction` judged."""
    if summary["questions"] and summary["judged"] < min_fraction * summary["questions"]:
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(summary["failed_by_kind"].items(), key=lambda x: -x[1]))
        raise TooFewJudged(
            f"{where}: the judge scored {summary['judged']} of {summary['questions']} questions "
            f"({summary['judged_fraction']:.0%}), below eval.min_judged_fraction {min_fraction}: "
            f"no score reported; failures: {reasons}"
        )


def headline(summary: dict) -> dict:
    """What a stage reports of an evaluation: the overall score, its interval, win/tie/loss, failures."""
    overall = summary["overall"]
    return {
        **{key: overall[key] for key in ("relative_score", "ci_low", "ci_high", *OUTCOMES)},
        "judged": summary["judged"],
        "questions": summary["questions"],
        "judge_failed": summary["failed"],
        "truncated": summary["truncated"],
    }
