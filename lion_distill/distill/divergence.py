"""A judge-free discriminator: how far the student is from the teacher on an instruction, as the
student's mean per-token divergence from the teacher's top-k distribution along the teacher's own
answer (the loss of lion_distill.train.kd_loss, with distill's divergence), the student asked as it
is trained. No referee call, so no position bias and no judge at chance: any open-weight teacher of
the student's vocabulary can say which instructions are hard.

    gaps = student_divergence(student_model, rows, KDLoss.of(cfg.distill), top_k=20)   # one per row
    hard = hard_by_divergence(gaps, tau=None, share=0.5)                              # the top half
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lion_distill.train.kd_loss import KDLoss, token_divergence
from lion_distill.train.teacher_signal import TEACHER_IDS, TEACHER_LOGPROBS, tokenize_with_teacher


@torch.inference_mode()
def student_divergence(
    model_path: str,
    rows: list[dict],
    loss: KDLoss,
    *,
    top_k: int,
    max_length: int = 2048,
    chat_template_kwargs: dict | None = None,
):
    """The mean per-token divergence of `model_path` from the teacher on each row's answer (training
    rows of either layout with the teacher signal, lion_distill.distill.signal.with_signal); NaN for
    a row with no answer token inside max_length."""
    from transformers import AutoModelForCausalLM

    from lion_distill.data.remote import local_model

    if not rows:
        return []
    model_path = local_model(model_path)
    batch = {name: [r[name] for r in rows] for name in rows[0]}
    encoded = tokenize_with_teacher(
        batch, tokenizer_path=model_path, max_length=max_length, k=top_k, chat_template_kwargs=chat_template_kwargs
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    gaps = []
    for ids, labels, top, logprobs in zip(
        encoded["input_ids"], encoded["labels"], encoded[TEACHER_IDS], encoded[TEACHER_LOGPROBS]
    ):
        at = np.flatnonzero(labels != -100)
        at = at[at > 0]  # position 0 has no prediction before it
        if not len(at):
            gaps.append(math.nan)
            continue
        logits = model(input_ids=torch.as_tensor(ids, device=device)[None]).logits[0]
        teacher = slice(len(np.flatnonzero(labels != -100)) - len(at), None)
        per_token = token_divergence(
            logits[at - 1],
            torch.as_tensor(top.reshape(-1, top_k)[teacher], device=device),
            torch.as_tensor(logprobs.reshape(-1, top_k)[teacher], device=device),
            loss,
        )
        gaps.append(float(per_token.mean()))
    return gaps


def hard_by_divergence(gaps, *, tau: float | None, share: float) -> list[bool | None]:
    """Which instructions are hard: divergence >= tau, or, without tau, the `share` most divergent
    (at least one); None where there is no divergence (no answer)."""
    values = np.asarray([math.nan if g is None else g for g in gaps], dtype=float)
    known = ~np.isnan(values)
    if tau is not None:
        return [bool(v >= tau) if ok else None for v, ok in zip(values, known)]
    n_hard = max(1, math.ceil(share * int(known.sum()))) if known.any() else 0
    order = np.argsort(-np.where(known, values, -np.inf), kind="stable")[:n_hard]
    hard = np.zeros(len(values), dtype=bool)
    hard[order] = True
    return [bool(h) if ok else None for h, ok in zip(hard, known)]
