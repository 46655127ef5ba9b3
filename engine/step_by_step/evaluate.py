"""Label-only prediction (the rationale task is for training only) and accuracy."""
from __future__ import annotations

import ast
import operator

from engine.train.batches import LABEL_PREFIX

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def predict_labels(model_dir: str, inputs: list[str], *, batch_size: int = 32, max_new_tokens: int = 64) -> list[str]:
    """Greedy transformers generate with the label-task prefix."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    out: list[str] = []
    for i in range(0, len(inputs), batch_size):
        enc = tok([LABEL_PREFIX + x for x in inputs[i:i + batch_size]], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


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


def accuracy(predictions: list[str], labels: list[str], task: str) -> float:
    """CQA: the answer text matches; SVAMP: the equations have the same value (an
    unparseable prediction counts as wrong)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if task == "svamp":
        hits = [(p := equation_value(pred)) is not None and (g := equation_value(gold)) is not None and abs(p - g) < 1e-4
                for pred, gold in zip(predictions, labels)]
    else:
        hits = [pred.strip().casefold() == gold.strip().casefold() for pred, gold in zip(predictions, labels)]
    return sum(hits) / len(labels)
