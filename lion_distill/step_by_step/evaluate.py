"""Label-only prediction (the rationale task is for training only) and accuracy: CQA, NLI and a
user's labels by text, SVAMP by the value of the equation.

The evaluate stage runs `student_role` with `label_prompt` through `lion_distill.llm.generate` (Ray Data);
`predict_labels` runs the same role and prompt bare, without Ray: `label_accuracy` scores the
validations inside a training run with it (lion_distill.train.Validation)."""

from __future__ import annotations

import ast
import operator

from lion_distill.config.models import Parallelism, RoleConfig, SamplingParams
from lion_distill.errors import GenerationFailed
from lion_distill.train.batches import LABEL_PREFIX

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def label_prompt(row: dict) -> str:
    return LABEL_PREFIX + row["input"]


def student_role(
    model_dir: str, *, max_new_tokens: int, batch_size: int = 32, replicas: int = 1, max_model_len: int | None = None
) -> RoleConfig:
    """A trained T5 as a greedy transformers role."""
    return RoleConfig(
        backend="hf",
        model=model_dir,
        max_model_len=max_model_len,
        sampling=SamplingParams(temperature=0.0, max_tokens=max_new_tokens),
        parallelism=Parallelism(batch_size=batch_size, replicas=replicas),
    )


def predict_labels(
    model_dir: str,
    inputs: list[str],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    max_model_len: int | None = None,
) -> list[str]:
    from lion_distill.llm.hf import HFGenerator

    role = student_role(model_dir, max_new_tokens=max_new_tokens, batch_size=batch_size, max_model_len=max_model_len)
    generator = HFGenerator(role, role_name="student")
    out: list[str | None] = []
    for i in range(0, len(inputs), batch_size):
        encoded = [generator.encode(label_prompt({"input": x})) for x in inputs[i : i + batch_size]]
        out += [r["text"] for r in generator.generate(encoded)]
    return checked_predictions(out, f"{model_dir}: label predictions")


def checked_predictions(texts: list[str | None], where: str) -> list[str]:
    """Stripped predictions; a generation that failed (no text) raises GenerationFailed."""
    failed = [i for i, t in enumerate(texts) if t is None]
    if failed:
        raise GenerationFailed(
            f"{where}: {len(failed)} of {len(texts)} student generations failed (rows {failed[:5]}"
            f"{'...' if len(failed) > 5 else ''}); nothing was scored"
        )
    return [t.strip() for t in texts]


def label_accuracy(
    model_dir: str,
    *,
    inputs: list[str],
    labels: list[str],
    task: str,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    max_model_len: int | None = None,
    match: str = "normalised",
) -> float:
    """The accuracy of an export's label-only predictions (a Validation's score)."""
    predictions = predict_labels(
        model_dir, inputs, batch_size=batch_size, max_new_tokens=max_new_tokens, max_model_len=max_model_len
    )
    return accuracy(predictions, labels, task, match)


def equation_value(text: str) -> float | None:
    """The value of an arithmetic expression ("( 84.0 / 2.0 )"), or None when it is not one."""

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(ast.dump(node))

    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def accuracy(predictions: list[str], labels: list[str], task: str, match: str = "normalised") -> float:
    """CQA, NLI, a user's labels: the answer text matches, case and surrounding spaces ignored
    (`normalised`) or character for character (`exact`, the reference's metrics.py
    `compute_text_acc`); SVAMP: the equations have the same value, within 1e-4 or exactly
    (`compute_equation_acc`). An unparseable prediction counts as wrong."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if match not in ("normalised", "exact"):
        raise ValueError(f"match must be 'normalised' or 'exact', not {match!r}")
    exact = match == "exact"
    if task == "svamp":
        hits = [
            (p := equation_value(pred)) is not None
            and (g := equation_value(gold)) is not None
            and (p == g if exact else abs(p - g) < 1e-4)
            for pred, gold in zip(predictions, labels)
        ]
    elif exact:
        hits = [pred == gold for pred, gold in zip(predictions, labels)]
    else:
        hits = [pred.strip().casefold() == gold.strip().casefold() for pred, gold in zip(predictions, labels)]
    return sum(hits) / len(labels)
