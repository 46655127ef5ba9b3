"""Task examples in their original formats -> rows `id`, `input`, `label` (gold) and, for
multiple choice, `choices`.

Layout (google-research/distilling-step-by-step `datasets/`, as in data/step-by-step):
`{task}/{task}_{split}.json`, JSON lines:
- cqa: `question`, `choices` (5), `answer` (the choice's text);
- svamp: `input`, `label` (an equation);
- esnli, anli1: `premise`, `hypothesis`, `label` (0 entailment, 1 neutral, 2 contradiction).
The input is written as the few-shot prompts show it, so the student sees what the teacher saw;
an NLI row keeps its `premise` and `hypothesis` too, for the reference's student input
(`data.nli_input`: lion_distill.step_by_step.data.student_inputs).

A user's own task is JSONL (`input`, `label`, optional `choices`, and `completion`: a teacher's
reply written elsewhere, which `teacher.source: released` reads): bad rows are rejected with
their `file:line` and counted by reason, as instruction pools are (lion_distill.data.readers).
"""

from __future__ import annotations

import json
from pathlib import Path

from lion_distill.data.readers import LoadReport
from lion_distill.data.records import Reject
from lion_distill.errors import TaskDataError
from lion_distill.step_by_step.tasks import NLI_LABELS, Choices, Fixed, Task

REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "step-by-step"  # slices with provenance
ORIGINAL_TASKS = ("cqa", "svamp", "esnli", "anli1")
# The tasks with an official dev split (the reference's `has_valid`): validation comes from it.
DEV_SPLIT = {"esnli": "valid", "anli1": "valid"}
# Each split's published size (the reference's data: CQA from cos_e v1.11, SVAMP's 800/200
# split, e-SNLI, ANLI round 1). A smaller split is a slice: refused unless data.allow_partial.
PUBLISHED_ROWS = {
    "cqa": {"train": 9_741, "test": 1_221},
    "svamp": {"train": 800, "test": 200},
    "esnli": {"train": 549_367, "valid": 9_842, "test": 9_824},
    "anli1": {"train": 16_946, "valid": 1_000, "test": 1_000},
}
# Where the full sets come from when a user supplies what this repository cannot ship.
SUPPLY = {
    "esnli": "the e-SNLI train split (github.com/OanaMariaCamburu/e-SNLI) as JSON lines "
    "`premise`, `hypothesis`, `label` (0/1/2)",
    "anli1": "the ANLI round-1 train split (github.com/facebookresearch/anli) as JSON lines "
    "`premise`, `hypothesis`, `label` (0/1/2)",
}


def cqa_input(question: str, choices: list[str]) -> str:
    lettered = "\n".join(f"({'abcde'[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\nAnswer Choices:\n{lettered}"


def nli_input(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}"


def task_file(folder: Path, task: str, split: str) -> Path:
    return Path(folder) / task / f"{task}_{split}.json"


def read_examples(task: str, split: str, folder: str | Path = REPO_DATA) -> list[dict]:
    """One split of a paper task; a missing file or a malformed row raises, naming file:line."""
    if task not in ORIGINAL_TASKS:
        raise TaskDataError(f"unknown task {task!r}: expected one of {ORIGINAL_TASKS} (or jsonl for your own)")
    path = task_file(Path(folder), task, split)
    if not path.is_file():
        hint = f"; supply {SUPPLY[task]} at that path" if task in SUPPLY and split == "train" else ""
        raise TaskDataError(f"{path}: the {task} {split} split is missing{hint}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            e = json.loads(line)
            row = _row(task, e)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise TaskDataError(f"{where}: not a {task} example ({type(exc).__name__}: {exc})") from None
        rows.append({"id": f"{task}-{split}-{len(rows)}", **row})
    return rows


def size_problems(task: str, folder: str | None, limits: dict[str, int | None], allow_partial: bool) -> list[str]:
    """One line per split that is missing, or (unless allow_partial) smaller than its published
    size or cut by a limit: a paper run must not silently train or score on a slice."""
    if task not in PUBLISHED_ROWS:
        return []
    if folder is None:
        return [
            f"data.data_dir: {task} needs the folder with the full sets (layout of data/step-by-step; "
            "the repository's own is a demo slice: use it with data.allow_partial: true)"
        ]
    problems = []
    for split, published in PUBLISHED_ROWS[task].items():
        path = task_file(Path(folder), task, split)
        if not path.is_file():
            hint = f"; supply {SUPPLY[task]}" if task in SUPPLY and split == "train" else ""
            problems.append(f"data.data_dir: {path}: the {task} {split} split is missing{hint}")
            continue
        rows = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        used = min(rows, limits.get(split) or rows)
        if used < published and not allow_partial:
            cut = f" (data.{split}_limit {limits[split]})" if used < rows else ""
            problems.append(
                f"data: {path}: {used:,} {split} rows{cut}, but {task}'s published {split} split has "
                f"{published:,}; set data.allow_partial: true to run on a part"
            )
    return problems


def _row(task: str, e: dict) -> dict:
    if task == "cqa":
        return {"input": cqa_input(e["question"], e["choices"]), "label": e["answer"], "choices": list(e["choices"])}
    if task == "svamp":
        return {"input": str(e["input"]), "label": str(e["label"])}
    label = e["label"]
    # SNLI marks examples without a gold label -1, which indexing would read as "contradiction".
    if isinstance(label, bool) or label not in range(len(NLI_LABELS)):
        raise ValueError(f"label {label!r} is no NLI label id (0 entailment, 1 neutral, 2 contradiction)")
    return {
        "input": nli_input(e["premise"], e["hypothesis"]),
        "label": NLI_LABELS[label],
        "premise": e["premise"],
        "hypothesis": e["hypothesis"],
    }


def read_jsonl_task(path: str | Path, task: Task, split: str) -> tuple[list[dict], LoadReport]:
    """A user's task: every line is kept or rejected under a reason with its file:line."""
    path, report, rows = Path(path), LoadReport(), []
    if not path.is_file():
        raise TaskDataError(f"{path}: the jsonl task's {split} file is missing")
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        report.rows_in += 1
        why = None
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            e, why = None, Reject("malformed_json", exc.msg)
        if why is None:
            why = _problem(e, task)
        if why:
            report.reject(why.reason, f"{path}:{number}: {why}")
            continue
        row = {"id": f"jsonl-{split}-{number}", "input": e["input"].strip(), "label": e["label"].strip()}
        if "choices" in e:
            row["choices"] = list(e["choices"])
        if "completion" in e:
            row["text"] = e["completion"]
        rows.append(row)
        report.rows_kept += 1
    return rows, report


def _problem(e, task: Task) -> Reject | None:
    if not isinstance(e, dict):
        return Reject("not_an_object", f"got {type(e).__name__}")
    for key in ("input", "label"):
        if not isinstance(e.get(key), str) or not e[key].strip():
            return Reject("missing_field", f"{key!r} must be a non-empty string")
    if "completion" in e and not isinstance(e["completion"], str):
        return Reject("bad_completion", "'completion' (a teacher's reply) must be a string")
    if "choices" in e and not (
        isinstance(e["choices"], list) and e["choices"] and all(isinstance(c, str) and c for c in e["choices"])
    ):
        return Reject("bad_choices", "'choices' must be a list of non-empty strings")
    if isinstance(task.space, Fixed) and e["label"].strip() not in task.space.labels:
        return Reject("label_outside_space", f"{e['label']!r} is not one of {list(task.space.labels)}")
    if isinstance(task.space, Choices):
        if "choices" not in e:
            return Reject("missing_field", "'choices' (no labels are configured, so each row names its own)")
        if e["label"].strip() not in e["choices"]:
            return Reject("label_outside_space", f"{e['label']!r} is not one of the row's choices")
    return None
