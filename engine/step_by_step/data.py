"""Distilling step-by-step data: task examples + the PaLM chain-of-thought
completions that supply each example's rationale.

Layout (google-research/distilling-step-by-step, as in data/step-by-step):
`{task}/{task}_{split}.json` (JSON lines) and `{task}/llm/{split}_CoT_{k}.json`
(JSON lists of raw completions; the files are consecutive chunks of the split,
aligned by position). CQA and SVAMP are complete here.

Rows: `input` (the question as the PaLM prompt showed it), `label` (gold),
`rationale` and `llm_label` (parsed from the completion; "" when it does not parse:
counted in `Split.parse_failures`, never guessed).

Validation comes out of the train split (`train_valid_split`): the original code
picked checkpoints on the test split, which leaks it into the result.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "step-by-step"  # a small slice with provenance
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "step-by-step"  # the full set
TASKS = ("cqa", "svamp")

# The completion runs on into an invented next example: cut there first.
NEXT_EXAMPLE = re.compile(r"\n\s*(?:Q:|Premise:)")
ANSWER_PHRASE = {"cqa": "So the answer is", "svamp": "The answer is"}


@dataclass
class Split:
    rows: list[dict]
    parse_failures: int


def extract_rationale(completion: str, task: str) -> tuple[str, str] | None:
    """(rationale, label) from one chain-of-thought completion, or None when it has
    no answer phrase or no answer after it (e.g. cut off by the token limit)."""
    text = NEXT_EXAMPLE.split(completion, maxsplit=1)[0].strip()
    rationale, phrase, answer = text.partition(ANSWER_PHRASE[task])
    rationale, answer = rationale.strip(), answer.strip()
    if not phrase or not rationale or not answer:
        return None
    if task == "cqa":  # "(d) math problem." -> "math problem"
        m = re.fullmatch(r"\([a-e]\)\s*(.+?)\.?", answer)
    else:  # "(84 / 2)." or "(16 * 17) * 4." -> the whole equation (the original's regex kept "(16 * 17)")
        m = re.fullmatch(r"([\d\s.+\-*/()]*\d[\d\s.+\-*/()]*?)\.?", answer)
    return (rationale, m.group(1).strip()) if m else None


def cqa_input(example: dict) -> str:
    choices = "\n".join(f"({'abcde'[i]}) {c}" for i, c in enumerate(example["choices"]))
    return f"{example['question']}\nAnswer Choices:\n{choices}"


def _examples(folder: Path, task: str, split: str) -> list[dict]:
    lines = (folder / task / f"{task}_{split}.json").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line) for line in lines if line.strip()]
    if task == "cqa":
        return [{"input": cqa_input(e), "label": e["answer"]} for e in examples]
    return [{"input": e["input"], "label": e["label"]} for e in examples]


def _completions(folder: Path, task: str, split: str) -> list[str]:
    files = sorted((folder / task / "llm").glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [c for f in files for c in json.loads(f.read_text(encoding="utf-8"))]


def load_split(task: str, split: str, data_dir: str | Path | None = None) -> Split:
    """One split of CQA or SVAMP with its rationales; `data_dir` defaults to the
    full set in ../shared when present, else the repository's slice."""
    if task not in TASKS:
        raise ValueError(f"step-by-step task {task!r}: this loader has {TASKS} (the sets complete here)")
    folder = Path(data_dir) if data_dir else (SHARED_DATA if SHARED_DATA.is_dir() else REPO_DATA)
    examples, completions = _examples(folder, task, split), _completions(folder, task, split)
    if len(examples) != len(completions):
        raise ValueError(f"{folder / task}: {len(examples)} {split} examples but {len(completions)} "
                         f"completions in llm/{split}_CoT_*.json; they must align by position")
    rows, failures = [], 0
    for example, completion in zip(examples, completions):
        parsed = extract_rationale(completion, task)
        failures += parsed is None
        rationale, llm_label = parsed or ("", "")
        rows.append({**example, "rationale": rationale, "llm_label": llm_label})
    return Split(rows, failures)


def train_valid_split(rows: list[dict], valid_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Hold out a validation set from the training rows (never from test)."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(valid_fraction * len(rows)))
    return [rows[i] for i in sorted(order[n_valid:])], [rows[i] for i in sorted(order[:n_valid])]
