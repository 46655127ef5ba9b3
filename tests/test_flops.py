"""MFU's model FLOPs (lion_distill.train.flops) against figures computed by hand from each model's
shape: a LLaMA, a T5 (per stack, with cross-attention) and a LoRA student (its frozen base at 4N);
and the peak looked up by the exact name CUDA reports. Milliseconds: small random models, no Ray."""

from __future__ import annotations

import pytest
import torch

from lion_distill.train.batches import IGNORE
from lion_distill.train.flops import mfu, model_flops, peak_flops

# hidden 64, 4 heads of 16 (2 KV heads: k and v project to 32), MLP 128, 2 layers, vocabulary 100.
LLAMA_LAYER = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q k v o, gate up down, 2 norms
LLAMA_N = 2 * LLAMA_LAYER + 64 + 64 * 100  # the layers, the final norm, the untied head (not the embedding)
# Two sequences of 10 and 6 tokens: 12 L w sum(T^2), w = 4 heads x 16.
LLAMA_ATTENTION = 12 * 2 * 64 * (10**2 + 6**2)


def llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    shape.update(num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)
    return LlamaForCausalLM(LlamaConfig(**{**shape, **kw}))


def causal_batch() -> dict:
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    return {"input_ids": torch.zeros_like(mask), "attention_mask": mask, "labels": torch.zeros_like(mask)}


def test_a_llama_counts_6n_without_the_embedding_plus_attention():
    counter = model_flops(llama())
    assert counter.encoder is None and counter.decoder.trained == LLAMA_N == 80_448
    assert counter.batch(causal_batch()) == 6 * 80_448 * 16 + LLAMA_ATTENTION == 7_931_904
    # Two steps of that batch in 0.5 s on a GPU of 1 GFLOP/s peak.
    assert mfu(2 * 7_931_904, 0.5, 1e9) == pytest.approx(2 * 7_931_904 / 0.5 / 1e9)


def test_the_1b_llama_of_benchmarks_training_is_7_31_gflop_a_token_not_6n():
    """benchmarks/training.py's default shape at T=2048: 6N over all 1.1B parameters said 6.60."""
    with torch.device("meta"):
        model = llama(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32_000,
        )
    assert 6 * sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(6.60, abs=0.005)
    layer = 2048 * 2048 * 2 + 2048 * 256 * 2 + 3 * 2048 * 5632 + 2 * 2048
    n = 22 * layer + 2048 + 2048 * 32_000  # the head counts, the embedding lookup does not
    mask = torch.ones(1, 2048, dtype=torch.long)
    per_token = model_flops(model).batch({"attention_mask": mask}) / 2048
    assert per_token == 6 * n + 12 * 22 * 2048 * 2048
    assert per_token / 1e9 == pytest.approx(7.31, abs=0.005)


def test_a_t5_counts_each_stack_over_its_own_tokens_and_the_cross_attention():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=100, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2)
    )
    attention, ff, norm = 4 * 32 * 32, 2 * 32 * 64, 32  # q k v o; wi wo (relu); one layer norm
    encoder = 2 * (attention + ff + 2 * norm) + norm  # the relative position buckets are a lookup
    decoder = 2 * (2 * attention + ff + 3 * norm) + norm + 32 * 100  # self and cross; the tied head
    counter = model_flops(t5)
    assert (counter.encoder.trained, counter.decoder.trained) == (encoder, decoder) == (16_544, 28_000)
    # Inputs of 8 and 5 tokens, targets of 3 and 2.
    labels = torch.tensor([[4, 5, 6, IGNORE], [7, 8, IGNORE, IGNORE]])
    batch = {"attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3]), "labels": labels}
    w = 12 * 2 * 32  # 12 L w
    by_hand = (
        6 * 16_544 * 13
        + w * (8 * 8 + 5 * 5)  # the encoder: its N and self-attention over the inputs
        + 6 * 28_000 * 5
        + w * (3 * 3 + 2 * 2)  # the decoder over the targets
        + w * (3 * 8 + 2 * 5)  # cross-attention: every target token over its input
    )
    assert counter.batch(batch) == by_hand == 2_234_880
    # 6N over all parameters and input plus target tokens, as MFU was computed before: 2x high and more.
    assert 6 * sum(p.numel() for p in t5.parameters()) * 18 / by_hand > 2


def test_a_lora_students_frozen_base_counts_4n_its_adapter_6n():
    from peft import LoraConfig, get_peft_model

    student = get_peft_model(llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter = 2 * ((64 * 4 + 4 * 64) + (64 * 4 + 4 * 32))  # q: A 64->4, B 4->64; v: A, B 4->32
    counter = model_flops(student)
    assert (counter.decoder.trained, counter.decoder.frozen) == (adapter, LLAMA_N) == (1_792, 80_448)
    assert counter.batch(causal_batch()) == (4 * 80_448 + 6 * 1_792) * 16 + LLAMA_ATTENTION == 5_529_600


def test_the_peak_is_the_exact_devices_or_none():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM
    assert peak_flops("NVIDIA H100 PCIe") == 756.5e12 and peak_flops("NVIDIA H100 NVL") == 835.5e12
    assert peak_flops("NVIDIA H200") == 989.4e12 and peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("NVIDIA L4") == 121e12 and peak_flops("NVIDIA A10G") == 70e12
    assert peak_flops("NVIDIA GeForce RTX 4090") is None  # no MFU rather than a wrong one
