"""The data a step-by-step run trains on: the released PaLM completions as a teacher's replies,
parsed rows, validation held out of train, and nested training fractions.

Released completions (google-research/distilling-step-by-step, as in data/step-by-step):
`{task}/llm/{split}_CoT_{k}.json`, JSON lists of raw completions; the files are consecutive
chunks of the split, aligned by position with `{task}/{task}_{split}.json`.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from engine.step_by_step.parse import ParseFailure, parse_reply
from engine.step_by_step.readers import TaskDataError
from engine.step_by_step.tasks import Task


def released_completions(folder: str | Path, task: str, split: str) -> list[str]:
    files = sorted((Path(folder) / task / "llm").glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise TaskDataError(f"{Path(folder) / task / 'llm'}: no {split}_CoT_*.json (the released PaLM completions)")
    return [c for f in files for c in json.loads(f.read_text(encoding="utf-8"))]


def with_released_replies(rows: list[dict], folder: str | Path, task: str, split: str) -> list[dict]:
    """Each row with its PaLM completion as `text`, the column a generating teacher writes."""
    completions = released_completions(folder, task, split)
    if len(completions) != len(rows):
        raise TaskDataError(f"{Path(folder) / task}: {len(rows)} {split} examples but {len(completions)} completions "
                            f"in llm/{split}_CoT_*.json; they must align by position")
    return [{**row, "text": text} for row, text in zip(rows, completions)]


def parse_rows(rows: list[dict], task: Task) -> tuple[list[dict], Counter]:
    """Rows with `rationale`, `teacher_label` ("" on failure) and `parse_failure` (a
    ParseFailure value, "" when parsed); -> (rows, failures by reason). Rows in == rows out."""
    out, failures = [], Counter()
    for row in rows:
        parsed = parse_reply(row.get("text"), task, row.get("choices"))
        if isinstance(parsed, ParseFailure):
            failures[parsed.value] += 1
            out.append({**row, "rationale": "", "teacher_label": "", "parse_failure": parsed.value})
        else:
            out.append({**row, "rationale": parsed.rationale, "teacher_label": parsed.label, "parse_failure": ""})
    return out, failures


def train_valid_split(rows: list[dict], valid_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Hold out a validation set from the training rows (never from test: the original code
    picked checkpoints on the test split, which leaks it into the result)."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(valid_fraction * len(rows)))
    return [rows[i] for i in sorted(order[n_valid:])], [rows[i] for i in sorted(order[:n_valid])]


def nested_fractions(rows: list[dict], fractions: list[float], seed: int = 0) -> dict[float, list[dict]]:
    """Seeded subsets that nest: one shuffle, each fraction a prefix of it, so the 25% subset
    lies inside the 50% one and a method's curve differs only by the rows added."""
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"training fractions must be in (0, 1], got {f}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return {f: [rows[i] for i in sorted(order[:max(1, round(f * len(rows)))])] for f in fractions}
