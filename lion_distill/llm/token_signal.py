"""The teacher token signal (docs/design.md, "Data contracts"): per answer, the token ids it is made
of, the teacher's top k token ids and log-probabilities at each of them (most likely first) and the
teacher's log-probability of the token itself, as Arrow fixed-width lists (maps keyed by ints do not
survive Arrow). Pure functions from what engines return: vLLM's per-position `{token_id: Logprob}`
maps (prompt logprobs, in-process or through Ray Data), and an OpenAI-compatible server's
`prompt_logprobs` (vLLM's extension; token ids as JSON keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

GENERATION, SCORING = "generation", "scoring"  # the `source` column: with the answer, or a prompt_logprobs pass


class SignalError(ValueError):
    """An engine's reply cannot give the top-k asked for (fewer candidates than k, no logprobs)."""


def signal_schema(k: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("token_ids", pa.list_(pa.int32())),
            pa.field("topk_ids", pa.list_(pa.list_(pa.int32(), k))),
            pa.field("topk_logprobs", pa.list_(pa.list_(pa.float32(), k))),
            pa.field("token_logprobs", pa.list_(pa.float32())),
            pa.field("source", pa.string()),
        ]
    )


def _logprob(value) -> float:
    """A Logprob dataclass, its dict (`{"logprob": x, ...}`) or a bare float -> the float."""
    if isinstance(value, Mapping):
        return float(value["logprob"])
    return float(getattr(value, "logprob", value))


def topk_of_steps(steps: Sequence[Mapping | None], answer_ids: Sequence[int], k: int) -> dict:
    """Per-position `{token_id: logprob}` maps, one per answer token (the engine's candidates at that
    position: its top k, plus the token itself when outside them) -> {topk_ids [n][k], topk_logprobs
    [n][k], token_logprobs [n]}, the k most likely first."""
    if len(steps) != len(answer_ids):
        raise SignalError(f"{len(steps)} positions of logprobs for {len(answer_ids)} answer tokens")
    topk_ids = np.zeros((len(steps), k), dtype=np.int32)
    topk_lp = np.zeros((len(steps), k), dtype=np.float32)
    own = np.zeros(len(steps), dtype=np.float32)
    for j, (step, token) in enumerate(zip(steps, answer_ids)):
        if not step:
            raise SignalError(f"no logprobs at answer token {j}")
        candidates = sorted(((int(t), _logprob(v)) for t, v in step.items()), key=lambda c: -c[1])
        if len(candidates) < k:
            raise SignalError(f"{len(candidates)} candidates at answer token {j}, fewer than top_k={k}")
        topk_ids[j], topk_lp[j] = zip(*candidates[:k])
        mine = dict(candidates)
        if int(token) not in mine:
            raise SignalError(f"the engine gave no logprob for answer token {j} (id {token})")
        own[j] = mine[int(token)]
    return {"topk_ids": topk_ids.tolist(), "topk_logprobs": topk_lp.tolist(), "token_logprobs": own.tolist()}


def prompt_topk(prompt_logprobs: Sequence[Mapping | None], n_prompt: int, answer_ids: Sequence[int], k: int) -> dict:
    """A scoring pass's `prompt_logprobs` over prompt + answer (one entry per token, the first None)
    -> topk_of_steps of the answer's positions."""
    return topk_of_steps(prompt_logprobs[n_prompt : n_prompt + len(answer_ids)], answer_ids, k)


def signal_table(rows: list[dict], k: int) -> pa.Table:
    """Rows with the schema's columns -> the signal table (a row's lists checked against k)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in signal_schema(k).names} for row in rows], schema=signal_schema(k)
    )
