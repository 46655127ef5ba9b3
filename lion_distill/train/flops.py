"""Model FLOPs utilisation (MFU) as the field computes it: the model's FLOPs for the tokens a step
trained, over the step's time and the GPUs' dense bf16 peak.

    counter = model_flops(model)                  # once, from the model (sharded or not)
    flops += counter.batch(batch)                 # every micro-batch that trained
    mfu(flops, step_seconds, peak_flops(torch.cuda.get_device_name()) * gpus)

Per token of a stack with N matmul weights, L layers, attention width w (query heads x head size)
and a sequence of T tokens, forward plus backward (Kaplan et al. 2020, section 2.1; PaLM, Chowdhery
et al. 2022, appendix B; nanoGPT's `estimate_mfu`):

    6 N + 12 L w T        (2N forward, 4N backward; QK^T and AV: 2 x 2 w T per layer forward, x 3)

- N leaves the embedding lookups out (input embeddings, T5's relative position buckets) and counts the
  LM head, a matmul of d x vocab whether or not it is tied to the embeddings.
- A frozen weight (a LoRA student's base) computes no weight gradient: 4 N for it, not 6 (its
  forward and the gradient passed back through it); the adapter's weights count 6.
- An encoder-decoder counts each stack over its own tokens: the encoder's N and self-attention over
  the input, the decoder's N, self-attention and cross-attention (12 L w T_dec T_enc a sequence) over
  the target. 6 N over input plus target tokens, as before, counted the decoder's N on the input too.
- Activation checkpointing's recomputed forward is not counted (that would be hardware FLOPs), nor
  are padded positions: the figure is for the tokens that trained.
- Attention is counted in full (PaLM's convention), not halved for the causal mask.

The peak is looked up by the exact name CUDA reports (`PEAK_BF16_FLOPS`); an unknown GPU reports no
MFU rather than a wrong one (benchmarks take `--peak-flops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lion_distill.train.targets import IGNORE

# Dense bf16 tensor-core peak per GPU (NVIDIA's datasheets: the sparsity figure halved), keyed by
# torch.cuda.get_device_name(). A10G: AWS's variant, whose datasheet NVIDIA does not publish
# (70 TFLOPS fp16 tensor, as AWS's partners list it): prefer a measured peak there.
PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5e12,
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H200": 989.4e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10G": 70e12,
}
# Lookups by token, not matmuls: no FLOPs of their own.
_LOOKUPS = ("relative_attention_bias", "embed_positions", "wpe")


def peak_flops(device_name: str) -> float | None:
    return PEAK_BF16_FLOPS.get(device_name.strip())


def device_peak_flops() -> float | None:
    """This process's GPU's peak, or None (no GPU, or one not in the table)."""
    return peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


@dataclass(frozen=True)
class Stack:
    trained: int  # matmul weights that get a gradient
    frozen: int  # matmul weights that do not (a LoRA student's base)
    layers: int
    attention_width: int  # query heads x head size

    @property
    def per_token(self) -> float:
        return 6.0 * self.trained + 4.0 * self.frozen

    def attention(self, queries: torch.Tensor, keys: torch.Tensor) -> float:
        """12 L w x sum over sequences of (query tokens x key tokens)."""
        return 12.0 * self.layers * self.attention_width * float((queries.double() * keys.double()).sum())


@dataclass(frozen=True)
class ModelFlops:
    decoder: Stack  # a causal model's only stack
    encoder: Stack | None = None

    def batch(self, batch: dict) -> float:
        """Forward + backward FLOPs of one micro-batch (its unpadded tokens)."""
        if self.encoder is None:
            tokens = batch["attention_mask"].sum(dim=1)
            return self.decoder.per_token * float(tokens.sum()) + self.decoder.attention(tokens, tokens)
        source = batch["attention_mask"].sum(dim=1)
        target = (batch["labels"] != IGNORE).sum(dim=1)
        encoder = self.encoder.per_token * float(source.sum()) + self.encoder.attention(source, source)
        decoder = self.decoder.per_token * float(target.sum()) + self.decoder.attention(target, target)
        return encoder + decoder + self.decoder.attention(target, source)  # cross-attention


def model_flops(model: nn.Module) -> ModelFlops:
    """The FLOPs counter of a transformers model, plain, sharded by FSDP2 or wrapped by PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    embedding, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    stacks = {"encoder": [0, 0], "decoder": [0, 0]}  # [trained, frozen]
    for name, p in base.named_parameters():
        if p is embedding or any(lookup in name for lookup in _LOOKUPS):
            continue
        stack = "encoder" if name.startswith("encoder.") else "decoder"
        stacks[stack][0 if p.requires_grad else 1] += weights(p)
    if head is embedding:  # tied: the head's matmul is there all the same
        stacks["decoder"][0 if head.requires_grad else 1] += weights(head)
    if not config.is_encoder_decoder:
        heads = config.num_attention_heads
        width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
        return ModelFlops(Stack(*stacks["decoder"], config.num_hidden_layers, width))
    width = config.num_heads * config.d_kv  # T5
    decoder_layers = getattr(config, "num_decoder_layers", None) or config.num_layers
    return ModelFlops(
        Stack(*stacks["decoder"], decoder_layers, width), Stack(*stacks["encoder"], config.num_layers, width)
    )


def weights(p: torch.Tensor) -> int:
    """A parameter's weights: a 4-bit one (bitsandbytes) counts its unpacked shape, a DTensor its
    global shape."""
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()


def mfu(flops: float, seconds: float, peak_flops_total: float) -> float:
    """The fraction of the GPUs' peak that `flops` of model FLOPs in `seconds` used."""
    return flops / max(seconds, 1e-12) / peak_flops_total
