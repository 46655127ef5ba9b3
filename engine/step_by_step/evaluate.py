"""Label accuracy: CQA, NLI and a user's labels by text, SVAMP by the value of the equation."""
from __future__ import annotations

import ast
import operator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


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
