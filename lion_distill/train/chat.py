"""A conversation -> token ids and labels through the student's chat template, the loss on
its assistant turns only (each turn's end-of-turn marker included, so the student learns
to stop; none after a turn its model was cut off in).

The template renders the whole conversation once; each assistant turn's characters are
found by rendering the conversation up to the turn (with the generation prompt) and
through it, and tokens are labelled by their character offsets. A template that renders
a prefix differently from the whole (it would teach text the student never sees at
generation time) is refused with its tokenizer named.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lion_distill.train.targets import IGNORE


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """-> (the rendered conversation, the character span of each assistant turn). A message's
    `complete` False ends its span at its text: no end-of-turn marker is learnt after it."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = tok.apply_chat_template(plain, tokenize=False)
    spans = []
    for n, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tok.apply_chat_template(plain[:n], tokenize=False, add_generation_prompt=True)
        through = tok.apply_chat_template(plain[: n + 1], tokenize=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"the chat template of {getattr(tok, 'name_or_path', 'the student')} renders turn {n} "
                "differently inside the conversation than at its end: it cannot mask assistant turns"
            )
        end = len(through)
        if message.get("complete") is False:
            at = through.find(message["content"], len(before))
            end = at + len(message["content"]) if at >= 0 else end
        spans.append((len(before), end))
    return full, spans


def tokenize_chat(tok, messages: list[dict], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (input_ids, labels) cut at max_length; labels IGNORE outside assistant turns. The
    rendered template carries its own special tokens: none are added."""
    text, spans = assistant_spans(tok, messages)
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    labels = [
        t if any(start < e and end > s for s, e in spans) else IGNORE
        for t, (start, end) in zip(ids, encoded["offset_mapping"])
    ]
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def has_chat_template(model_dir: str) -> bool:
    """Whether a local model folder's tokenizer carries a chat template (read from its files,
    without loading it)."""
    if any(os.path.isfile(os.path.join(model_dir, name)) for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return False
