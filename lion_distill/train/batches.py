"""Training rows -> token ids (in Ray Data `map_batches`) -> padded tensors (per step).

Pure functions over batches (`dict[str, np.ndarray]`), so they are unit-tested
without Ray. Tokenization keeps sequences ragged; `collate_*` pads each batch only
to its own longest sequence, so short batches cost short compute.

A row that cannot teach anything (its target is empty, or its prompt alone fills
`max_length`) keeps `n_target_tokens == 0`; the trainer drops and counts those
rows instead of training on an all-masked sequence.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch

from lion_distill.llm.prompts import alpaca_prompt, instruction_messages
from lion_distill.train.chat import tokenize_chat
from lion_distill.train.targets import IGNORE, LABEL_TASK, RATIONALE_TASK  # noqa: F401 (B.LABEL_TASK, ...)

# IGNORE (-100, lion_distill.train.targets): labels with this value add nothing to the loss (torch's ignore_index)
# Distilling step-by-step's task prefixes, exactly as its code writes them
# (google-research/distilling-step-by-step run.py; the paper's figure says "[label]"
# and "[rationale]"): a model trained by either code answers the other's prompts.
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
ROW = "row_index"  # a training row's place in the global row index (0..n-1) that epoch_order deals out


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """One tokenizer per process: Ray Data reuses its worker processes across batches. A
    model in an object store is read from this node's copy of its tokenizer files
    (lion_distill.data.remote)."""
    from transformers import AutoTokenizer

    from lion_distill.data.remote import local_model

    return AutoTokenizer.from_pretrained(local_model(path, tokenizer_only=True))


def _texts(batch: dict, column: str) -> list[str]:
    return ["" if v is None else str(v) for v in batch[column]]


def prompt_ids(tok, instructions: list[str], inputs: list[str]) -> list[list[int]]:
    """Token ids of Lion's Alpaca-layout prompts, as an `alpaca` student is trained and asked."""
    return tok([alpaca_prompt(i, x) for i, x in zip(instructions, inputs)], add_special_tokens=True)["input_ids"]


def conversations(batch: dict, template: str) -> list[list[dict] | None]:
    """Each row's conversation: its `messages` (the `chat` layout), or with template "chat" an
    Alpaca-layout row asked as a one-turn conversation; None for a row trained in the Alpaca layout.
    A block without `messages` holds the column as nulls, which numpy batches turn into NaN."""
    n = len(batch["messages"] if "messages" in batch else batch["response"])
    chats = [json.loads(c) if isinstance(c, str) and c else None for c in batch.get("messages", [None] * n)]
    if template == "chat":
        chats = [
            chat or [*instruction_messages(row), {"role": "assistant", "content": row["response"], "complete": whole}]
            for chat, row, whole in zip(chats, _rows(batch, n), _complete(batch, n))
        ]
    elif template != "alpaca":
        raise ValueError(f"template must be 'alpaca' or 'chat', not {template!r}")
    return chats


def _rows(batch: dict, n: int) -> list[dict]:
    columns = {k: _texts(batch, k) if k in batch else [""] * n for k in ("instruction", "input", "response")}
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _complete(batch: dict, n: int) -> list[bool]:
    return [bool(c) for c in batch["complete"]] if "complete" in batch else [True] * n


def tokenize_causal(batch: dict, **kwargs) -> dict:
    """Training rows -> token ids and labels: causal_sequences' sequences."""
    return causal_sequences(batch, **kwargs)[0]


def causal_sequences(
    batch: dict,
    *,
    tokenizer_path: str,
    max_length: int,
    template: str = "alpaca",
    chat_template_kwargs: dict | None = None,
) -> tuple[dict, list[int]]:
    """Training rows -> (token ids and labels, the batch row of each sequence; lion_distill.train.chat
    for a conversation).

    A row with `messages` (the `chat` layout, docs/design.md "Data contracts") is rendered
    through the chat template, the loss on its assistant turns; a template that rewrites earlier
    turns makes one sequence per assistant turn, so a row may give several. A row in the Alpaca
    layout (instruction, input, response, optional complete) is Lion's prompt -> response + eos,
    the loss on the response and eos; with `template="chat"` it is a one-turn conversation
    instead. A `complete` False answer (its model was cut off) gets no end of turn or eos."""
    tok = load_tokenizer(tokenizer_path)
    chats = conversations(batch, template)
    rows = _rows(batch, len(chats))
    plain = [i for i, chat in enumerate(chats) if chat is None]
    prompts, answers = {}, {}
    if plain:  # the tokenizer refuses an empty batch
        prompts = dict(zip(plain, prompt_ids(tok, *([rows[i][k] for i in plain] for k in ("instruction", "input")))))
        answers = dict(zip(plain, tok([rows[i]["response"] for i in plain], add_special_tokens=False)["input_ids"]))
    complete = _complete(batch, len(chats))
    out = {"input_ids": [], "labels": [], "n_prompt_tokens": [], "n_target_tokens": []}
    source = []
    for i, chat in enumerate(chats):
        pairs = (
            tokenize_chat(tok, chat, max_length, chat_template_kwargs)
            if chat is not None
            else [_alpaca(tok, prompts[i], answers[i], rows[i]["response"], complete[i], max_length)]
        )
        for ids, labels in pairs:
            learnt = np.flatnonzero(labels != IGNORE)
            source.append(i)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["n_prompt_tokens"].append(int(learnt[0]) if len(learnt) else len(ids))
            out["n_target_tokens"].append(len(learnt))
    out["n_prompt_tokens"], out["n_target_tokens"] = (
        np.asarray(out["n_prompt_tokens"]),
        np.asarray(out["n_target_tokens"]),
    )
    return out, source


def _alpaca(tok, prompt: list[int], answer: list[int], text: str, whole: bool, max_length: int):
    """Lion's layout: the prompt, then the answer and eos, the loss on those. A truncated answer
    must not end in eos: the student would learn to stop mid-answer."""
    room = max_length - len(prompt)
    target = (answer + [tok.eos_token_id]) if whole and len(answer) < room else answer[:room]
    if not text.strip() or room <= 0:
        target = []
    return np.asarray(prompt + target, dtype=np.int64), np.asarray([IGNORE] * len(prompt) + target, dtype=np.int64)


def tokenize_seq2seq(
    batch: dict,
    *,
    tokenizer_path: str,
    max_length: int,
    task: str,
    max_target_length: int | None = None,
    keep_empty_targets: bool = False,
) -> dict:
    """Step-by-step rows -> a label-task pair (prefixed input -> label) and, for
    `task="multitask"`, a rationale-task pair (prefixed input -> rationale). Inputs are cut at
    `max_length` tokens, targets at `max_target_length` (default: `max_length`). A blank label or
    rationale leaves its row out, unless `keep_empty_targets` (the reference's: it drops no row),
    when it is trained as the end-of-sequence token alone."""
    tok = load_tokenizer(tokenizer_path)
    inputs, labels = _texts(batch, "input"), _texts(batch, "label")

    def encode(texts: list[str], limit: int = max_length) -> list[np.ndarray]:
        ids = tok(texts, max_length=limit, truncation=True)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    target = max_target_length or max_length
    out = {"label_input_ids": encode([LABEL_PREFIX + x for x in inputs]), "label_labels": encode(labels, target)}
    usable = np.asarray([bool(x.strip()) and (keep_empty_targets or bool(y.strip())) for x, y in zip(inputs, labels)])
    n_prompt = np.asarray([len(x) for x in out["label_input_ids"]])
    n_target = np.asarray([len(y) for y in out["label_labels"]])
    if task == "multitask":
        rationales = _texts(batch, "rationale")
        out["rationale_input_ids"] = encode([RATIONALE_PREFIX + x for x in inputs])
        out["rationale_labels"] = encode(rationales, target)
        usable &= np.asarray([keep_empty_targets or bool(r.strip()) for r in rationales])
        n_prompt = n_prompt + [len(x) for x in out["rationale_input_ids"]]
        n_target = n_target + [len(y) for y in out["rationale_labels"]]
    out["n_prompt_tokens"] = n_prompt
    out["n_target_tokens"] = np.where(usable, n_target, 0)
    return out


def epoch_order(n_rows: int, ranks: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's row indices for an epoch, in the order it trains on them.

    One global permutation per epoch, seeded by (seed, epoch), dealt round-robin to
    the ranks; each rank gets n_rows // ranks rows (a different remainder is left out
    each epoch). The same arguments give the same order, so a resumed epoch skips
    exactly the micro-batches trained before the checkpoint."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[rank::ranks][: n_rows // ranks]


def block_offsets(counts) -> np.ndarray:
    """Where each block's rows start in the global row index (ROW): a block of `counts[i]` rows
    holds rows offsets[i] .. offsets[i] + counts[i] - 1."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


def rows_of(batches, order: np.ndarray) -> dict[str, np.ndarray]:
    """Of the whole dataset streamed past as batches (each with its global row index column ROW),
    the rows `order` names, in `order`'s order: the one share a rank keeps, never a full copy.
    Token ids come back as object arrays of rows, each copied out of its batch (a row of a
    streamed block may be a view that would keep the whole block alive)."""
    order = np.asarray(order, dtype=np.int64)
    by_index = np.argsort(order, kind="stable")
    wanted = order[by_index]
    seen = np.zeros(len(order), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for batch in batches:
        ids = np.asarray(batch[ROW], dtype=np.int64)
        at = np.minimum(np.searchsorted(wanted, ids), max(len(wanted) - 1, 0))
        hit = wanted[at] == ids if len(wanted) else np.zeros(len(ids), dtype=bool)
        slots = by_index[at[hit]]
        if seen[slots].any() or len(np.unique(slots)) < len(slots):
            raise ValueError("a row index appears twice in the dataset")
        seen[slots] = True
        for name, values in batch.items():
            if name == ROW:
                continue
            kept = values[hit]
            if name not in out:  # ragged (object) or one batch's equal-length rows (2-D): rows of arrays
                ragged = values.dtype == object or values.ndim > 1
                out[name] = np.empty(len(order), dtype=object if ragged else values.dtype)
            if out[name].dtype == object:
                for slot, value in zip(slots, kept):
                    out[name][slot] = np.array(value)
            else:
                out[name][slots] = kept
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} of the {len(order)} rows asked for are not in the dataset")
    return out


def micro_batches(columns: dict[str, np.ndarray], order: np.ndarray, batch_size: int):
    """Rows `order` of the columns (ragged ones as object arrays), batch_size at a time."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield {name: values[idx] for name, values in columns.items()}


def _pad(seqs, value: int) -> torch.Tensor:
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
    out = np.full((len(seqs), max(len(s) for s in seqs)), value, dtype=np.int64)
    for row, s in zip(out, seqs):
        row[: len(s)] = s
    return torch.from_numpy(out)


def collate_causal(batch: dict, *, pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = _pad(batch["input_ids"], pad_id)
    attention_mask = _pad([np.ones(len(s)) for s in batch["input_ids"]], 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": _pad(batch["labels"], IGNORE)}


def collate_seq2seq(batch: dict, *, pad_id: int) -> dict[str, torch.Tensor]:
    """Both tasks of an example in one batch (2B sequences when multi-task): one
    forward pass, so FSDP gathers each block's weights once per micro-batch."""
    tasks = [("label", LABEL_TASK)] + ([("rationale", RATIONALE_TASK)] if "rationale_input_ids" in batch else [])
    inputs = [s for name, _ in tasks for s in batch[f"{name}_input_ids"]]
    targets = [s for name, _ in tasks for s in batch[f"{name}_labels"]]
    task = [tid for _, tid in tasks for _ in batch[f"{tasks[0][0]}_input_ids"]]
    return {
        "input_ids": _pad(inputs, pad_id),
        "attention_mask": _pad([np.ones(len(s)) for s in inputs], 0),
        "labels": _pad(targets, IGNORE),
        "task": torch.tensor(task, dtype=torch.long),
    }
