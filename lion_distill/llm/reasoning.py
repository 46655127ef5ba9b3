"""A thinking model's thinking, apart from its answer (docs/design.md "Data contracts": the
responses' `reasoning` column, never merged into `text`).

It comes from where the server puts it: a reasoning parser's field (vLLM's `reasoning`, formerly
`reasoning_content`; DeepSeek's and other APIs' `reasoning_content`), or, where nothing parsed
it (Ray Data's vLLM stage, transformers, a server without a parser), a `<think>...</think>` block
that opens the text. A text with a closing `</think>` and no opening one is thinking up to it: the
generation prompt opened the block (DeepSeek-R1's distills), as vLLM's deepseek_r1 parser reads it.
A block never closed (cut at max_tokens) is all thinking and no answer.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str | None, reasoning: str | None = None) -> tuple[str | None, str | None]:
    """-> (the answer, the thinking or None)."""
    if text is None or reasoning:
        return text, reasoning or None
    head = text.lstrip()
    if head.startswith(THINK_OPEN):
        body = head[len(THINK_OPEN) :]
        close = body.find(THINK_CLOSE)
        if close < 0:
            return "", body.strip() or None
        return body[close + len(THINK_CLOSE) :].lstrip(), body[:close].strip() or None
    close = text.find(THINK_CLOSE)
    if close >= 0 and THINK_OPEN not in text:
        return text[close + len(THINK_CLOSE) :].lstrip(), text[:close].strip() or None
    return text, None


def message_reasoning(message: dict) -> str | None:
    """A chat completion message's thinking, under either name servers give it."""
    return message.get("reasoning") or message.get("reasoning_content") or None
