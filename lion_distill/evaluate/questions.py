"""Questions and reference answers for an evaluation.

Questions are read as instruction pools are (lion_distill.data: every row kept or rejected
by reason with its file:line), carrying two more fields: a key the reference answers
are matched by (Vicuna's `question_id`) and a category. Reference answers come from a
JSONL file keyed the same way; a question without one is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lion_distill.config.evaluate import QuestionsConfig, ReferenceConfig
from lion_distill.data.readers import load_rows
from lion_distill.errors import EvalDataError

DEFAULT_CATEGORY = "all"


def load_questions(cfg: QuestionsConfig, seed: int) -> tuple[list[dict], dict]:
    """-> (questions: id, key, category, instruction, input; the load report as a dict)."""
    rows, report = load_rows(
        cfg.files, cfg.field_map, cfg.max_instruction_chars, keep=(cfg.key_field, cfg.category_field)
    )
    questions, owner = [], {}
    for row in rows:
        key = row.get("fields", {}).get(cfg.key_field)
        key = row["id"] if key is None else str(key)
        if key in owner:
            raise EvalDataError(
                f"{cfg.files}: {cfg.key_field}={key} is used by two questions: "
                f"{owner[key]!r} and {row['instruction']!r}; keys must be unique"
            )
        owner[key] = row["instruction"]
        category = row.get("fields", {}).get(cfg.category_field)
        questions.append(
            {
                "id": row["id"],
                "key": key,
                "category": str(category) if category else DEFAULT_CATEGORY,
                "instruction": row["instruction"],
                "input": row["input"],
            }
        )
    summary = report.as_dict()
    if cfg.sample_size and cfg.sample_size < len(questions):
        picks = np.sort(np.random.default_rng(seed).choice(len(questions), cfg.sample_size, replace=False))
        questions = [questions[i] for i in picks]
        summary["sampled"] = len(questions)
    if not questions:
        raise EvalDataError(f"{cfg.files}: no usable questions; rejects {summary['rejects']}")
    return questions, summary


def read_reference_answers(cfg: ReferenceConfig, questions: list[dict]) -> list[str]:
    """The reference answer of each question, in order, from `cfg.answers`."""
    path = Path(cfg.answers)
    if not path.is_file():
        raise EvalDataError(f"{path}: reference answers file not found")
    answers = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path}:{number}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict) or obj.get(cfg.key_field) is None or not isinstance(obj.get(cfg.text_field), str):
            raise EvalDataError(
                f"{path}:{number}: expected an object with {cfg.key_field!r} and a string {cfg.text_field!r}"
            )
        key = str(obj[cfg.key_field])
        if key in answers:
            raise EvalDataError(f"{path}:{number}: a second answer for {cfg.key_field}={key}")
        answers[key] = obj[cfg.text_field]
    missing = [q for q in questions if q["key"] not in answers]
    if missing:
        q = missing[0]
        raise EvalDataError(
            f"{path}: no reference answer for question {q['key']} ({q['instruction'][:80]!r})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f"; every question needs one, keyed by {cfg.key_field!r}"
        )
    return [answers[q["key"]] for q in questions]
