"""Logit distillation from the teacher's top-k log-probabilities: the generalized Jensen-Shannon
divergence of GKD (Agarwal et al. 2023, arXiv 2306.13649) between the teacher's and the student's
next-token distributions, restricted to the teacher's top k tokens and, by default, a tail bucket
holding the mass outside them (as TRL's DistillationTrainer, `loss_add_tail`).

With P the teacher's distribution, Q the student's and M = beta P + (1 - beta) Q,

    jsd(beta) = beta KL(P || M) + (1 - beta) KL(Q || M)       0 < beta < 1
    beta = 0: KL(P || Q), the forward KL (mean-seeking; Hinton et al.'s and Kim & Rush's KD)
    beta = 1: KL(Q || P), the reverse KL (mode-seeking; MiniLLM's)

The two ends are taken as the KLs themselves, as GKD's limits (jsd(beta) / beta -> KL(P || Q) as
beta -> 0, jsd(beta) / (1 - beta) -> KL(Q || P) as beta -> 1) and TRL's code have them; the interior
formula itself shrinks to 0 at both ends, so a beta near 0 or 1 also scales the loss down. Peers have
shipped the two ends swapped (tests/test_kd_loss.py checks each against its definition).

Pure torch over tensors of the label positions only: nothing here knows Ray or a tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# The teacher's top-k mass is held below 1 by this much, so the tail bucket is a (tiny) probability,
# never 0 or negative, whatever rounding did to the k logprobs (TRL's `_add_tail_bucket` does the same).
TAIL_FLOOR = 1e-7


@dataclass(frozen=True)
class KDLoss:
    """What the training step needs of `distill` (lion_distill.config.models.DistillConfig)."""

    divergence: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    tail: bool = True
    kd_coef: float = 1.0

    @classmethod
    def of(cls, distill) -> KDLoss:
        return cls(distill.divergence, distill.beta, distill.temperature, distill.tail, distill.kd_coef)

    @property
    def beta_used(self) -> float:
        """The generalized JSD's beta that this divergence is."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.divergence, self.beta)


def with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """[..., k] log-probabilities of k distinct tokens -> [..., k + 1], the last the log of the mass
    outside them, at least TAIL_FLOOR: the k + 1 buckets are a distribution."""
    inside = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp(max=-TAIL_FLOOR)
    return torch.cat([logprobs, torch.log(-torch.expm1(inside))], dim=-1)


def sparse_pair(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, loss: KDLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's log-distributions over the teacher's top k tokens (and the
    tail), [N, k (+ 1)] each, from the student's logits [N, V] and the teacher's top k [N, k].
    Without the tail both are renormalised over the k tokens. A temperature other than 1 tempers the
    student's whole vocabulary but only the teacher's k (+ 1) buckets: the teacher's other logits
    are not known."""
    student = F.log_softmax(student_logits.float() / loss.temperature, dim=-1).gather(-1, topk_ids.long())
    teacher = topk_logprobs.float()
    if loss.tail:
        student, teacher = with_tail(student), with_tail(teacher)
    if loss.temperature != 1.0:
        teacher = teacher / loss.temperature
    return student - torch.logsumexp(student, -1, keepdim=True), teacher - torch.logsumexp(teacher, -1, keepdim=True)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dimension from log-probabilities; a bucket P gives no mass adds 0."""
    return torch.where(p > -torch.inf, p.exp() * (p - q), torch.zeros_like(p)).sum(-1)


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's generalized JSD per position (see the module docstring) from log-distributions [N, K]."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be within [0, 1], not {beta}")
    if beta == 0.0:
        return kl(teacher, student)
    if beta == 1.0:
        return kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log1p(-beta)]), 0)
    return beta * kl(teacher, mixture) + (1.0 - beta) * kl(student, mixture)


def token_divergence(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, loss: KDLoss
) -> torch.Tensor:
    """The divergence at each of N positions: [N, V] logits, [N, k] teacher top-k -> [N]."""
    student, teacher = sparse_pair(student_logits, topk_ids, topk_logprobs, loss)
    return generalized_jsd(student, teacher, loss.beta_used)


def kd_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    loss: KDLoss,
    tokens: torch.Tensor | None = None,
    ignore: int = -100,
) -> torch.Tensor:
    """kd_coef x the divergence + (1 - kd_coef) x the cross-entropy, each summed over the positions
    whose label is not `ignore` and divided by `tokens` (by default their count): logits [B, T, V],
    labels [B, T], the teacher's top k at each position [B, T, k] (anything at ignored positions). A
    label position whose teacher log-probabilities are NaN (no teacher distribution there:
    lion_distill.train.teacher_signal) is learnt by cross-entropy alone."""
    keep = labels != ignore
    tokens = keep.sum() if tokens is None else tokens
    picked, targets, top_lp = logits[keep], labels[keep], topk_logprobs[keep]
    known = ~torch.isnan(top_lp[:, 0])
    cross = F.cross_entropy(picked.float(), targets, reduction="none")
    total = cross[~known].sum()
    if bool(known.any()):
        divergence = token_divergence(picked[known], topk_ids[keep][known], top_lp[known], loss)
        total = total + loss.kd_coef * divergence.sum() + (1.0 - loss.kd_coef) * cross[known].sum()
    return total / tokens
