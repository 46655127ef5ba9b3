"""The `hf` backend: transformers `generate`, batched; the only path for T5.

`HFGenerator(role, role_name=...)(batch) -> batch` is a plain callable over a
batch dict with no Ray import: Ray Data runs it in an actor pool, a GPU
benchmark can call it bare. Causal models pad on the left (generation continues
from the right edge); seq2seq models (config.is_encoder_decoder) encode the
prompt and decode from the start token. bf16 on GPU, float32 on CPU for "auto".
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from lion_distill.config.models import RoleConfig
from lion_distill.data.remote import local_model
from lion_distill.errors import ErrorKind
from lion_distill.llm.cache import request_seed
from lion_distill.llm.responses import (
    DRAW_COL,
    PROMPT_COL,
    decode_prompt,
    error_row,
    merge_responses,
    response_row,
    top_logprobs_json,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str, cuda: bool) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return DTYPES[dtype]


class HFGenerator:
    def __init__(self, role: RoleConfig, *, role_name: str, logprobs: int | None = None):
        self.role, self.role_name, self.logprobs = role, role_name, logprobs
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = local_model(role.model)  # a student in an s3:// run directory: this node's copy
        config = AutoConfig.from_pretrained(model)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="right" if self.seq2seq else "left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(model, dtype=resolve_dtype(role.dtype, self.device.type == "cuda"))
        self.model.to(self.device).eval()
        limit = (
            role.max_model_len or getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        # A causal prompt shares the context with its answer; an encoder has its own.
        self.max_prompt_tokens = limit if self.seq2seq else max(1, limit - role.sampling.max_tokens)
        if role.sampling.seed is not None:
            torch.manual_seed(role.sampling.seed)

    def encode(self, prompt) -> list[int]:
        """Messages through the chat template when the tokenizer has one (its
        special tokens included, so none are added again); raw strings as is."""
        tok = self.tokenizer
        if isinstance(prompt, list):
            if tok.chat_template:
                text = tok.apply_chat_template(
                    prompt, tokenize=False, add_generation_prompt=True, **self.role.chat_template_kwargs
                )
                ids = tok(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tok("\n\n".join(m["content"] for m in prompt))["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        return ids[-self.max_prompt_tokens :] if not self.seq2seq else ids[: self.max_prompt_tokens]

    def __call__(self, batch: dict) -> dict:
        prompts = [decode_prompt(p) for p in batch[PROMPT_COL]]
        draws = batch.get(DRAW_COL)
        if draws is not None and len(draws) and self.role.sampling.seed is not None:
            # transformers samples a batch from one generator: seed it from the batch's first draw.
            torch.manual_seed(request_seed(self.role.sampling.seed, str(draws[0])))
        try:
            responses = self.generate([self.encode(p) for p in prompts])
        except Exception as exc:  # e.g. out of memory: the rows stay, marked as the engine's failure
            responses = [error_row(ErrorKind.SERVER_ERROR, f"{type(exc).__name__}: {str(exc)[:160]}") for _ in prompts]
        return merge_responses(batch, responses, self.role_name, self.logprobs is not None)

    @torch.inference_mode()
    def generate(self, encoded: list[list[int]]) -> list[dict]:
        s, tok = self.role.sampling, self.tokenizer
        enc = tok.pad({"input_ids": encoded}, return_tensors="pt").to(self.device)
        sample = s.temperature > 0
        out = self.model.generate(
            **enc,
            max_new_tokens=s.max_tokens,
            do_sample=sample,
            temperature=s.temperature if sample else None,
            top_p=s.top_p if sample else None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_scores=self.logprobs is not None,
            return_dict_in_generate=True,
        )
        # Causal outputs repeat the (padded) prompt; seq2seq outputs start with the decoder start token.
        new = out.sequences[:, 1:] if self.seq2seq else out.sequences[:, enc["input_ids"].shape[1] :]
        steps = self._top_logprobs(out.scores) if self.logprobs is not None else None
        rows = []
        for i, ids in enumerate(new.tolist()):
            n, stopped = len(ids), False
            if tok.eos_token_id in ids:
                n, stopped = ids.index(tok.eos_token_id) + 1, True
            rows.append(
                response_row(
                    tok.decode(ids[:n], skip_special_tokens=True),
                    "stop" if stopped else "length",
                    int(enc["attention_mask"][i].sum()),
                    n,
                    top_logprobs_json(steps[i][:n]) if steps else None,
                )
            )
        return rows

    def _top_logprobs(self, scores: tuple) -> list[list[dict[str, float]]]:
        """Per row, per generated position: {token text: logprob} of the top k."""
        per_row: list[list[dict[str, float]]] = [[] for _ in range(scores[0].shape[0])] if scores else []
        for step in scores:
            values, ids = torch.log_softmax(step.float(), dim=-1).topk(self.logprobs, dim=-1)
            for i, (vs, ts) in enumerate(zip(values.tolist(), ids.tolist())):
                per_row[i].append({self.tokenizer.decode([t]): v for t, v in zip(ts, vs)})
        return per_row
