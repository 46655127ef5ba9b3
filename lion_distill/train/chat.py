"""A conversation -> token ids and labels through the student's chat template, the loss on its
assistant turns only: from where the student starts writing (the end of the generation prompt)
to its end-of-turn marker, so it learns to stop (no marker after a turn its model was cut off in).

A turn's messages carry what a server would give the template: `content`, an assistant turn's
thinking as `reasoning` and `reasoning_content` (both, as vLLM's chat renderer passes them,
vllm/renderers/chat_utils.py), its `tool_calls`, a tool turn's `tool_call_id` and `name`. A
`tool` turn, like a user turn, is context: never trained on.

Three ways to find the assistant turns, tried in this order:

1. The template's own `{% generation %}` markers: transformers' `return_assistant_tokens_mask`
   is the mask (what TRL's SFTTrainer does with `assistant_only_loss`, trl/trainer/sft_trainer.py).
2. Turn by turn: each assistant turn's characters are those between the conversation rendered
   up to it with the generation prompt and rendered through it (TRL's prompt-completion masking,
   the same file, turn after turn). When every such prefix is also a prefix of the whole render
   (the template is prefix-preserving), the conversation is one sequence.
3. A template that renders earlier turns differently once the conversation goes on (Qwen3 drops
   earlier turns' thinking, and its empty thinking block; Mistral moves the system prompt to the
   last user turn): each assistant turn is a sequence of its own, rendered as the template renders
   the conversation when that turn is the one being generated, its loss on that turn alone. TRL
   instead swaps in a patched "training" template that always renders the thinking
   (trl/chat_template_utils.py `get_training_chat_template`, trl/chat_templates/qwen3_training.jinja);
   that trains the student on a history it is never shown when it is served with its own template.

A turn without thinking learns its text from where its content starts: a block the template
writes for a thinking that is absent (Qwen3's empty `<think>\\n\\n</think>`) is context, not the
teacher's answer. Whitespace after the end-of-turn marker separates turns; it is not learnt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lion_distill.llm.reasoning import THINK_CLOSE, THINK_OPEN
from lion_distill.train.targets import IGNORE

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")  # as transformers and TRL detect it
TEMPLATE_KEYS = ("tool_calls", "tool_call_id", "name")  # a turn's fields passed to the template beside content


class Unmaskable(ValueError):
    """A chat template whose assistant turns cannot be found in its render."""


@dataclass(frozen=True)
class Sequence:
    """One training sequence: the rendered text and the character spans that are learnt."""

    text: str
    spans: tuple[tuple[int, int], ...]


def template_messages(messages: list[dict]) -> list[dict]:
    """Training-row messages -> the messages a chat template is given."""
    out = []
    for m in messages:
        turn = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("reasoning"):
            turn["reasoning"] = turn["reasoning_content"] = m["reasoning"]
        turn.update({k: m[k] for k in TEMPLATE_KEYS if m.get(k) is not None})
        out.append(turn)
    return out


def render(tok, messages: list[dict], template_kwargs: dict | None = None, generation: bool = False) -> str:
    return tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation, **(template_kwargs or {})
    )


def has_generation_markers(tok) -> bool:
    return bool(tok.chat_template) and GENERATION_MARKER.search(tok.chat_template) is not None


def sequences(tok, messages: list[dict], template_kwargs: dict | None = None) -> list[Sequence]:
    """A conversation -> its training sequences (one, unless the template rewrites earlier turns)."""
    shown = template_messages(messages)
    if has_generation_markers(tok):
        marked = _marked(tok, messages, shown, template_kwargs)
        if all((m.get("content") or "").strip() in marked.text for m in messages):
            return [marked]
        # The template left a turn out (Mistral's renders the system prompt only before a last user
        # turn, so never in a conversation that ends with its answer): each turn as it is generated.
    turns = [n for n, m in enumerate(messages) if m["role"] == "assistant"]
    pieces = [_turn(tok, messages, shown, n, template_kwargs) for n in turns]
    full = render(tok, shown, template_kwargs)
    if all(full.startswith(piece.text) for piece in pieces):
        return [Sequence(full, tuple(span for piece in pieces for span in piece.spans))]
    return pieces


def _turn(tok, messages: list[dict], shown: list[dict], n: int, template_kwargs: dict | None) -> Sequence:
    """Assistant turn n after the generation prompt it is written after: the conversation up to
    it, rendered with the generation prompt, then the turn as the template renders it."""
    before = render(tok, shown[:n], template_kwargs, generation=True)
    through = render(tok, shown[: n + 1], template_kwargs)
    start = len(before) if through.startswith(before) else _turn_start(tok, before, through, messages[n])
    text = before + through[start:]
    span = _answer_span(text, len(before), len(text), messages[n])
    return Sequence(text, (span,) if span else ())


def _turn_start(tok, before: str, through: str, message: dict) -> int:
    """Where the turn starts in `through` when `through` does not start with `before` (the template
    renders the turns before it otherwise once it follows them: Mistral's system prompt): right
    after the longest stretch of `through` that ends the way the generation prompt ends."""
    content = (message.get("content") or "").strip()
    at = through.rfind(content) if content else len(through)
    best, start = 0, -1
    for j in range(max(at, 0), -1, -1):
        k = _common_suffix(before, through, j)
        if k > best:
            best, start = k, j
        if k == len(before):
            break
    if best == 0:
        raise Unmaskable(
            f"the chat template of {_name(tok)} renders an assistant turn after text that ends unlike its "
            "generation prompt: the turn's tokens cannot be told from the prompt's"
        )
    return start


def _common_suffix(a: str, b: str, end: int) -> int:
    """How many characters `a` and `b[:end]` share at their ends."""
    k = 0
    while k < len(a) and k < end and a[-1 - k] == b[end - 1 - k]:
        k += 1
    return k


def _answer_span(text: str, start: int, end: int, message: dict) -> tuple[int, int] | None:
    """The learnt characters of an assistant turn rendered as text[start:end]."""
    content = (message.get("content") or "").strip()
    at = text.rfind(content, start, end) if content else -1
    if not message.get("reasoning"):
        start = _after_empty_thinking(text, start)
    if message.get("complete") is False:
        if at < 0:
            return None  # a cut answer whose text the template changed: left out, not trained with its marker
        return start, at + len(content)
    return start, max(at + len(content), len(text[:end].rstrip()))


def _after_empty_thinking(text: str, start: int) -> int:
    """Past an empty thinking block the template writes at `start` for a thinking that is absent
    (Qwen3's `<think>\\n\\n</think>\\n\\n`): the teacher did not write it."""
    head = text[start:]
    opened = head.lstrip()
    if not opened.startswith(THINK_OPEN):
        return start
    close = opened.find(THINK_CLOSE)
    if close < 0 or opened[len(THINK_OPEN) : close].strip():
        return start
    rest = opened[close + len(THINK_CLOSE) :]
    return len(text) - len(rest.lstrip())


def _marked(tok, messages: list[dict], shown: list[dict], template_kwargs: dict | None) -> Sequence:
    """The spans the template's `{% generation %}` blocks mark, a cut answer's ending at its text."""
    out = tok.apply_chat_template(
        shown,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        tokenizer_kwargs={"return_offsets_mapping": True},
        **(template_kwargs or {}),
    )
    text = render(tok, shown, template_kwargs)
    spans, open_at = [], None
    for (start, _), marked in zip([*out["offset_mapping"], (len(text), len(text))], [*out["assistant_masks"], 0]):
        if marked and open_at is None:
            open_at = start
        if not marked and open_at is not None:
            spans.append((open_at, start))
            open_at = None
    at = 0
    for message in messages:
        content = (message.get("content") or "").strip()
        found = text.find(content, at) if content else -1
        if found < 0:
            continue
        at = found + len(content)
        if message["role"] == "assistant" and message.get("complete") is False:
            spans = [(s, min(e, at)) if s <= at < e else (s, e) for s, e in spans]
    return Sequence(text, tuple(spans))


def label(tok, sequence: Sequence, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (input_ids, labels) cut at max_length; a token is learnt when it overlaps a learnt span.
    The rendered template carries its own special tokens: none are added."""
    encoded = tok(sequence.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    labels = [
        t if any(start < e and end > s for s, e in sequence.spans) else IGNORE
        for t, (start, end) in zip(ids, encoded["offset_mapping"])
    ]
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def tokenize_chat(
    tok, messages: list[dict], max_length: int, template_kwargs: dict | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A conversation -> its training sequences as (input_ids, labels), labels IGNORE outside
    the learnt assistant turns."""
    return [label(tok, s, max_length) for s in sequences(tok, messages, template_kwargs)]


def _name(tok) -> str:
    return getattr(tok, "name_or_path", None) or "the student"


# What a student's template is asked to render before a run trains through it (lion_distill.preflight).
PROBE = [
    {"role": "system", "content": "probe system"},
    {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "probe answer one"},
    {"role": "user", "content": "probe question two"},
    {"role": "assistant", "content": "probe answer two"},
]
THINKING_PROBE = "probe thinking"


def template_problem(tok, template_kwargs: dict | None = None, *, thinking: bool = False) -> str | None:
    """Why the student's template cannot train a conversation (None when it can): it raises on
    one, its assistant turns cannot be found, or (with `thinking`) it has no form for a thinking."""
    name = _name(tok)
    probes = [PROBE[1:3], PROBE, PROBE[1:]]
    if thinking:
        probes.append([PROBE[1], {**PROBE[2], "reasoning": THINKING_PROBE}])
    for probe in probes:
        try:
            learnt = [
                tok.decode(ids[labels != IGNORE]) for ids, labels in tokenize_chat(tok, probe, 4096, template_kwargs)
            ]
        except Unmaskable as e:
            return str(e)
        except Exception as e:  # the template's own refusal (raise_exception), or a variable it lacks
            return f"the chat template of {name} cannot render a conversation of {len(probe)} turns: {e}"
        answers = [m for m in probe if m["role"] == "assistant"]
        if not all(any(m["content"] in text for text in learnt) for m in answers):
            return f"the chat template of {name} renders its assistant turns where they cannot be masked"
        if thinking and probe[-1].get("reasoning") and not any(THINKING_PROBE in text for text in learnt):
            return (
                f"the chat template of {name} has no form for a thinking (it renders no reasoning_content): "
                "it cannot be trained on the teacher's thinking"
            )
    return None


def conversation_problem(tok, messages: list[dict], template_kwargs: dict | None = None) -> str | None:
    """Why the student's template refuses this conversation (its roles, their order), if it does."""
    try:
        sequences(tok, messages, template_kwargs)
    except Exception as e:  # jinja2's TemplateError from the template's raise_exception, or Unmaskable
        return str(e)
    return None
