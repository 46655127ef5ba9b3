"""The teacher's tokens and top-k at the student's label positions (logit distillation).

A training row of a white-box mode carries, for its last assistant turn, the teacher's own answer
ids (`response_ids`) and its top k at each of them (`topk_ids`, `topk_logprobs`; docs/design.md,
"Data contracts"). `with_teacher_tokens` is applied to a batch that lion_distill.train.batches has
tokenised (either prompt layout): the last run of label positions, that turn's tokens, is replaced by
the teacher's ids, and the teacher's top k is added for every label position, in order, as flat
arrays (`teacher_topk_ids`, `teacher_topk_logprobs`: n_target x k values a row; Arrow and Ray Data
carry flat lists as they carry the token ids). A label position the teacher gave no distribution for
(an earlier turn of a conversation) holds NaN log-probabilities: the loss learns its token by
cross-entropy (lion_distill.train.kd_loss). `collate_teacher` pads them to [batch, length, k].
"""

from __future__ import annotations

import numpy as np
import torch

from lion_distill.train.targets import IGNORE

TEACHER_IDS, TEACHER_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"


def _rows(values) -> np.ndarray:
    """A row's list of k-lists as Ray Data or Arrow hands it (nested arrays, lists) -> [n, k]."""
    return np.asarray([np.asarray(v) for v in values]) if len(values) else np.zeros((0, 0))


def last_span(labels: np.ndarray) -> tuple[int, int]:
    """[start, end) of the last run of label positions that are not IGNORE; (n, n) when none."""
    learnt = np.flatnonzero(labels != IGNORE)
    if not len(learnt):
        return len(labels), len(labels)
    gaps = np.flatnonzero(np.diff(learnt) > 1)
    start = learnt[gaps[-1] + 1] if len(gaps) else learnt[0]
    return int(start), int(learnt[-1]) + 1


def with_teacher_tokens(batch: dict, out: dict, source: list[int], *, max_length: int, k: int) -> dict:
    """`out` (causal_sequences' output for `batch`, `source` the batch row of each sequence) with
    each row's last trained turn made of the teacher's `response_ids`, cut at max_length, and the
    teacher's top k per label position. A row's earlier sequences (a template that rewrites earlier
    turns gives one per assistant turn, lion_distill.train.chat) learn by cross-entropy."""
    ids_out, labels_out, targets, teacher_ids, teacher_lp = [], [], [], [], []
    last = {row: at for at, row in enumerate(source)}
    for at, (i, ids, labels) in enumerate(zip(source, out["input_ids"], out["labels"])):
        ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        response = batch["response_ids"][i] if "response_ids" in batch and last[i] == at else None
        start, end = last_span(labels)
        if response is not None and len(response) and end > start:
            room = max(0, max_length - start)
            answer = np.asarray(response, dtype=np.int64)[:room]
            ids = np.concatenate([ids[:start], answer])
            labels = np.concatenate([labels[:start], answer])
            top = (_rows(batch["topk_ids"][i])[:room], _rows(batch["topk_logprobs"][i])[:room])
        else:
            top = (np.zeros((0, k)), np.zeros((0, k)))
            start = len(labels)  # no signal: every label position learns by cross-entropy
        learnt = labels != IGNORE
        before = int(learnt[:start].sum())  # earlier turns' positions: no teacher distribution
        teacher_ids.append(np.concatenate([np.zeros(before * k), top[0].reshape(-1)]).astype(np.int32))
        teacher_lp.append(np.concatenate([np.full(before * k, np.nan), top[1].reshape(-1)]).astype(np.float32))
        ids_out.append(ids)
        labels_out.append(labels)
        targets.append(int(learnt.sum()))
    return {
        **out,
        "input_ids": ids_out,
        "labels": labels_out,
        "n_target_tokens": np.asarray(targets),
        TEACHER_IDS: teacher_ids,
        TEACHER_LOGPROBS: teacher_lp,
    }


def collate_teacher(batch: dict, labels: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The rows' flat teacher arrays -> [B, T, k] tensors at their label positions of the padded
    `labels` [B, T]; ids 0 and log-probabilities NaN elsewhere (the loss reads label positions only)."""
    rows, length = labels.shape
    ids = torch.zeros(rows, length, k, dtype=torch.long)
    logprobs = torch.full((rows, length, k), float("nan"), dtype=torch.float32)
    for row in range(rows):
        at = (labels[row] != IGNORE).nonzero()[:, 0]
        ids[row, at] = torch.as_tensor(np.asarray(batch[TEACHER_IDS][row], dtype=np.int64)).view(-1, k)
        logprobs[row, at] = torch.as_tensor(np.asarray(batch[TEACHER_LOGPROBS][row], dtype=np.float32)).view(-1, k)
    return {TEACHER_IDS: ids, TEACHER_LOGPROBS: logprobs}


def tokenize_with_teacher(batch: dict, *, tokenizer_path: str, max_length: int, k: int, **kwargs) -> dict:
    """lion_distill.train.batches.causal_sequences (`kwargs` its own), then with_teacher_tokens: the
    tokeniser the training of a white-box mode runs in Ray Data."""
    from lion_distill.train.batches import causal_sequences

    out, source = causal_sequences(batch, tokenizer_path=tokenizer_path, max_length=max_length, **kwargs)
    return with_teacher_tokens(batch, out, source, max_length=max_length, k=k)
