"""The data a step-by-step run trains on: the released PaLM completions as a teacher's replies
(checked to belong to their examples), parsed rows, and nested training fractions with their
validation rows.

Released completions (google-research/distilling-step-by-step, as in data/step-by-step):
`{task}/llm/{split}_CoT_{k}.json`, JSON lists of raw completions; the files are consecutive
chunks of the split, aligned by position with `{task}/{task}_{split}.json`.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from lion_distill.errors import TaskDataError
from lion_distill.step_by_step.parse import ParseFailure, parse_reply, rationale_of
from lion_distill.step_by_step.tasks import Fixed, Task


def released_completions(folder: str | Path, task: str, split: str) -> list[str]:
    files = sorted(
        (Path(folder) / task / "llm").glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
    )
    if not files:
        raise TaskDataError(f"{Path(folder) / task / 'llm'}: no {split}_CoT_*.json (the released PaLM completions)")
    return [c for f in files for c in json.loads(f.read_text(encoding="utf-8"))]


def with_released_replies(rows: list[dict], folder: str | Path, task: str, split: str) -> list[dict]:
    """Each row with its PaLM completion as `text`, the column a generating teacher writes."""
    completions = released_completions(folder, task, split)
    if len(completions) != len(rows):
        raise TaskDataError(
            f"{Path(folder) / task}: {len(rows)} {split} examples but {len(completions)} completions "
            f"in llm/{split}_CoT_*.json; they must align by position"
        )
    return [{**row, "text": text} for row, text in zip(rows, completions)]


def parse_rows(rows: list[dict], task: Task) -> tuple[list[dict], Counter]:
    """Rows with `rationale` (on a failure, what came before the answer: rationale_of),
    `teacher_label` ("" on failure) and `parse_failure` (a ParseFailure value, "" when parsed);
    -> (rows, failures by reason). Rows in == rows out."""
    out, failures = [], Counter()
    for row in rows:
        parsed = parse_reply(row.get("text"), task, row.get("choices"))
        if isinstance(parsed, ParseFailure):
            failures[parsed.value] += 1
            out.append(
                {
                    **row,
                    "rationale": rationale_of(row.get("text"), task),
                    "teacher_label": "",
                    "parse_failure": parsed.value,
                }
            )
        else:
            out.append({**row, "rationale": parsed.rationale, "teacher_label": parsed.label, "parse_failure": ""})
    return out, failures


def method_rows(rows: list[dict], method: str, label_source: str, unparsed: str = "drop") -> list[dict]:
    """What each method learns from: gold labels (standard_finetune), the teacher's labels
    (standard_distill), labels plus the teacher's rationales (step_by_step). `unparsed: drop`: a
    row whose reply gave no label is left out where the teacher's label is needed, a row without
    a rationale out of step_by_step (with gold labels, step_by_step keeps an unparsed reply's
    rationale, as the reference does); `keep`: every row, a blank label or rationale as it is, as
    the reference's run.py trains every row."""
    if unparsed not in ("drop", "keep"):
        raise ValueError(f"unparsed must be 'drop' or 'keep', not {unparsed!r}")
    teacher = teacher_labelled(method, label_source)
    out = []
    for r in rows:
        if unparsed == "drop" and (
            (teacher and r["parse_failure"]) or (method == "step_by_step" and not r["rationale"])
        ):
            continue
        row = {"id": r["id"], "input": r["input"], "label": r["teacher_label"] if teacher else r["label"]}
        if method == "step_by_step":
            row["rationale"] = r["rationale"]
        out.append(row)
    return out


def teacher_labelled(method: str, label_source: str) -> bool:
    """Whether a method's target is the teacher's label (standard_distill; step_by_step with teacher labels)."""
    return method == "standard_distill" or (method == "step_by_step" and label_source == "teacher")


def row_counts(rows: list[dict], method: str, label_source: str, unparsed: str) -> dict:
    """What method_rows made of `rows`, for the report: rows in, rows trained on, and of those in,
    how many have no teacher label (where it is the target) or no rationale (step_by_step):
    trained on as blank targets with `unparsed: keep`, left out with `drop`."""
    teacher = teacher_labelled(method, label_source)
    return {
        "rows_in": len(rows),
        "rows_trained": len(method_rows(rows, method, label_source, unparsed)),
        "unparsed_label": sum(bool(r["parse_failure"]) for r in rows) if teacher else 0,
        "empty_rationale": sum(not r["rationale"] for r in rows) if method == "step_by_step" else 0,
        "unparsed_rows": unparsed,
    }


def student_inputs(rows: list[dict], nli_input: str, eos: str | None) -> list[dict]:
    """The rows with `input` as the student is shown it: the few-shot prompt's "Premise: ...\n
    Hypothesis: ..." (`labelled`, as the teacher saw it), or for an NLI row with `eos_joined` the
    reference's `premise</s>hypothesis` (run.py: `tokenizer.eos_token.join([premise, hypothesis])`,
    `eos` the student tokenizer's end-of-sequence token). Rows of other tasks are unchanged."""
    if nli_input == "labelled":
        return rows
    if nli_input != "eos_joined":
        raise ValueError(f"nli_input must be 'labelled' or 'eos_joined', not {nli_input!r}")
    return [
        {**r, "input": eos.join([r["premise"], r["hypothesis"]])} if r.get("premise") is not None else r for r in rows
    ]


def fraction_split(
    rows: list[dict], fraction: float, valid_fraction: float, seed: int = 0, dev: list[dict] | None = None
) -> tuple[list[dict], list[dict]]:
    """(train, valid) for one training fraction, nested across fractions and sized by them.

    One seeded shuffle of `rows`; the fraction is its prefix (12.5% lies inside 25%). Without an
    official `dev` split, `valid_fraction` of that prefix is held out, spread evenly along it, so
    validation shrinks with the fraction (the reference holds out 10% of its subsample) and a
    smaller fraction's validation rows lie inside a larger one's. With `dev` (e-SNLI, ANLI), the
    same fraction of a seeded shuffle of dev is the validation. Never test: the original code
    picked checkpoints on the test split, which leaks it into the result."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fractions must be in (0, 1], got {fraction}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    prefix = _shuffled(rows, seed)[: max(1, round(fraction * len(rows)))]
    if dev is not None:
        return _in_order(prefix), _in_order(_shuffled(dev, seed)[: max(1, round(fraction * len(dev)))])
    held = [math.floor((i + 1) * valid_fraction) > math.floor(i * valid_fraction) for i in range(len(prefix))]
    if not any(held):
        held[-1] = True  # a tiny fraction still validates on one row
    return (_in_order([r for r, h in zip(prefix, held) if not h]), _in_order([r for r, h in zip(prefix, held) if h]))


def _shuffled(rows: list[dict], seed: int) -> list[tuple[int, dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [(i, rows[i]) for i in order]


def _in_order(indexed: list[tuple[int, dict]]) -> list[dict]:
    return [row for _, row in sorted(indexed, key=lambda x: x[0])]


def alignment_problem(rows: list[dict], task: Task, where: str) -> str | None:
    """For parsed rows of an NLI task, why the completions do not belong to these examples, or
    None. Two signs, each far from what aligned files show: the teacher agrees with the gold
    label near chance (1/3; PaLM: about 0.7), or its rationale shares no more of its words
    with its own example than with another example (a row count that matches proves nothing)."""
    parsed = [r for r in rows if not r["parse_failure"]]
    if len(parsed) < 20 or not isinstance(task.space, Fixed):  # fewer: too few to tell
        return None
    agreement = sum(r["teacher_label"] == r["label"] for r in parsed) / len(parsed)
    own = _mean_overlap(parsed, parsed)
    other = _mean_overlap(parsed, parsed[len(parsed) // 2 :] + parsed[: len(parsed) // 2])
    if agreement < ALIGNED_AGREEMENT or own < ALIGNED_OVERLAP_RATIO * other:
        return (
            f"{where}: the completions do not match the examples (teacher-gold agreement {agreement:.2f}, "
            f"chance {1 / len(task.space.labels):.2f}; rationale words found in their own example {own:.2f}, in "
            f"another example {other:.2f}): the examples must be the split the completions were written for, "
            "in the same order"
        )
    return None


ALIGNED_AGREEMENT = 0.5
ALIGNED_OVERLAP_RATIO = 1.5
_WORD = re.compile(r"[a-z]{4,}")


def _mean_overlap(rows: list[dict], inputs: list[dict]) -> float:
    shares = []
    for row, other in zip(rows, inputs):
        words = set(_WORD.findall(row["rationale"].lower()))
        if words:
            shares.append(len(words & set(_WORD.findall(other["input"].lower()))) / len(words))
    return sum(shares) / max(len(shares), 1)
