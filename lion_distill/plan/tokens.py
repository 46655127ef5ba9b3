"""Prompt tokens as a role's server will count them: with the role's own tokenizer where the
model is a local folder or a hub name this machine's Hugging Face cache holds (chat messages
through its chat template, as vLLM and the hf backend render them), otherwise at a stated number
of characters per token. Nothing is downloaded."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

# OpenAI's accounting for chat messages: about 4 tokens of framing a message, 3 to prime the reply.
TOKENS_PER_MESSAGE, TOKENS_PER_REPLY = 4, 3
SAMPLE_ROWS = 512  # prompts counted per kind; their mean prices the rest
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def is_local_model(model: str) -> bool:
    return os.path.isdir(model)


def cached_hub_tokenizer(model: str) -> str | None:
    """The local snapshot folder of a hub model's tokenizer, where this machine's Hugging Face
    cache holds it; None otherwise (or for a name that is no hub id)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in TOKENIZER_FILES:
        try:
            found = try_to_load_from_cache(model, filename)
        except ValueError:  # not a valid hub id (HFValidationError)
            return None
        if isinstance(found, str):
            return os.path.dirname(found)
    return None


@lru_cache(maxsize=8)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class TokenCounter:
    """`count(prompt)` for chat messages or a raw string; `source` says how it counts."""

    def __init__(
        self,
        tokenizer_path: str | None,
        chars_per_token: float,
        source: str | None = None,
        template_kwargs: dict | None = None,
    ):
        self.path, self.chars_per_token, self.template_kwargs = tokenizer_path, chars_per_token, template_kwargs or {}
        self.source = source or (
            f"tokenizer {tokenizer_path}" if tokenizer_path else f"{chars_per_token:g} characters a token"
        )

    def count(self, prompt) -> int:
        if self.path is None:
            if isinstance(prompt, str):
                return round(len(prompt) / self.chars_per_token)
            return TOKENS_PER_REPLY + sum(
                TOKENS_PER_MESSAGE + round(len(m["content"]) / self.chars_per_token) for m in prompt
            )
        tok = _tokenizer(self.path)
        if isinstance(prompt, str):
            return len(tok(prompt)["input_ids"])
        if tok.chat_template:
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **self.template_kwargs)
            return len(tok(text, add_special_tokens=False)["input_ids"])
        return len(tok("\n\n".join(m["content"] for m in prompt))["input_ids"])

    def mean(self, prompts: list) -> float:
        return float(np.mean([self.count(p) for p in prompts])) if prompts else 0.0


def counter_for(role, role_name: str, plan_cfg) -> TokenCounter:
    """The role's tokenizer when it is a local folder (or `plan.tokenizers` names one for it), or
    a hub name whose tokenizer is in the local cache; else `plan.chars_per_token`."""
    per_token = f"{plan_cfg.chars_per_token:g} characters a token"
    path = plan_cfg.tokenizers.get(role_name) or (role.model if is_local_model(role.model) else None)
    if path is not None:
        if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
            return TokenCounter(None, plan_cfg.chars_per_token, f"{per_token} ({path} holds no tokenizer)")
        return TokenCounter(path, plan_cfg.chars_per_token, template_kwargs=role.chat_template_kwargs)
    if role.backend == "openai":  # an API model's name: no tokenizer of its own here
        return TokenCounter(None, plan_cfg.chars_per_token)
    if role.model.startswith((".", "/", "~")):
        return TokenCounter(None, plan_cfg.chars_per_token, f"{per_token} (no folder {role.model} here)")
    cached = cached_hub_tokenizer(role.model)
    if cached is not None:
        source = f"tokenizer {role.model} (this machine's hub cache)"
        return TokenCounter(cached, plan_cfg.chars_per_token, source, role.chat_template_kwargs)
    return TokenCounter(
        None, plan_cfg.chars_per_token, f"{per_token} ({role.model} is not in this machine's hub cache)"
    )


def sample(rows: list, rng_seed: int = 0, n: int = SAMPLE_ROWS) -> list:
    if len(rows) <= n:
        return rows
    picks = np.random.default_rng(rng_seed).choice(len(rows), n, replace=False)
    return [rows[i] for i in sorted(picks)]
