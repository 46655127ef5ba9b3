"""Tiny models built offline, for tests and the demo: no model hub is needed.

A byte-level BPE tokenizer trained on the repository's instruction text, a tiny
LLaMA (head_dim 64: the smallest vLLM's CPU attention runs) with a chat template,
and a tiny T5. Each is saved with `save_pretrained` into a folder named by a hash
of its configuration, so the real `from_pretrained` loading path runs on them and a
second build is free. Random weights: they produce fluent-looking noise, which is
exactly what exercises the parsers and filters downstream.

    python -m lion_distill.tiny --cache-dir .cache/tiny     # prints the three paths
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = sorted((REPO / "data" / "self-instruct").glob("*.jsonl"))
DEFAULT_CACHE = Path(os.environ.get("LION_TINY_CACHE", REPO / ".cache" / "tiny"))

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TOKENIZER_CONFIG = {"vocab_size": 2048, "corpus": [p.name for p in CORPUS]}
LLAMA_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
# Shaped like T5 v1.1 (distilling step-by-step's student): gated-GELU feed-forward and
# `tie_word_embeddings: false` (which transformers 5 reads as: no scaling of the decoder output).
T5_CONFIG = dict(
    d_model=64,
    d_kv=32,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class TinyModels:
    tokenizer: Path
    llama: Path
    t5: Path


def folder_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def build_once(target: Path, build) -> Path:
    """Build into a temporary folder and rename it into place: concurrent test
    processes may race, and a half-written model folder must never be seen."""
    if target.is_dir():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _corpus_text() -> list[str]:
    lines = []
    for path in CORPUS:
        for line in path.read_text(encoding="utf-8").splitlines():
            task = json.loads(line)
            lines.append(task["instruction"])
            lines.extend(part for inst in task["instances"] for part in (inst["input"], inst["output"]) if part)
    return lines


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_text(), trainer=trainer)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=LLAMA_CONFIG["max_position_embeddings"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


def _tokenizer(cache: Path):
    from transformers import AutoTokenizer

    path = build_once(cache / f"tokenizer-{folder_key(TOKENIZER_CONFIG)}", build_tokenizer)
    return path, AutoTokenizer.from_pretrained(path)


def build_llama(cache: Path, tokenizer) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    def build(out: Path) -> None:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **LLAMA_CONFIG,
        )
        LlamaForCausalLM(config).save_pretrained(out)
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return build_once(cache / f"llama-{folder_key(LLAMA_CONFIG, TOKENIZER_CONFIG)}", build)


def build_t5(cache: Path, tokenizer) -> Path:
    import torch
    from tokenizers import processors
    from transformers import T5Config, T5ForConditionalGeneration

    def build(out: Path) -> None:
        torch.manual_seed(0)
        # Like T5's own tokenizer: every encoded sequence ends with </s>.
        eos = (tokenizer.eos_token, tokenizer.eos_token_id)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
        )
        config = T5Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **T5_CONFIG,
        )
        T5ForConditionalGeneration(config).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return build_once(cache / f"t5-{folder_key(T5_CONFIG, TOKENIZER_CONFIG, 'eos')}", build)


def build_tiny_models(cache_dir: str | Path = DEFAULT_CACHE) -> TinyModels:
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer_path, tokenizer = _tokenizer(cache)
    return TinyModels(tokenizer_path, build_llama(cache, tokenizer), build_t5(cache, tokenizer))


TINY_SCHEME = "tiny://"  # tiny://llama, tiny://t5: lion_distill.local_models resolves them in configs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lion_distill.tiny", description="Build the tiny test models offline."
    )
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    args = parser.parse_args(argv)
    models = build_tiny_models(args.cache_dir)
    for name, path in vars(models).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
