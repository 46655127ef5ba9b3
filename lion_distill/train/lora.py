"""LoRA and QLoRA students (PEFT) under the same Ray Train + FSDP2 loop as full fine-tuning.

With `train.lora`, the student is wrapped by `peft.get_peft_model` before it is sharded: the base
weights are frozen (requires_grad False: FSDP2 shards them like any parameter, and
step.build_optimizer hands AdamW only the trainable ones, the adapter's), the LoRA matrices train.
With `load_in_4bit` (QLoRA, Dettmers et al. 2023) the frozen base is loaded quantised to 4-bit
NormalFloat with double quantisation (bitsandbytes, through transformers' BitsAndBytesConfig) and
the adapter trains on top of it; step.load_sharded keeps those 4-bit weights out of FSDP2.
A checkpoint holds the adapter and its optimizer state only (torch.distributed.checkpoint with
`ignore_frozen_params`): the frozen base is the model the run started from, read again on a resume.
The export merges the adapter into the base read again at full precision from the model folder
(`merge_and_unload`), so vLLM and transformers load it like any fine-tuned student; with
`save_adapter` the adapter alone goes beside it, in `<export>/lora_adapter` (PEFT's format, which
vLLM's `enable_lora` serves).

Plain torch + PEFT, no Ray: lion_distill.train.loop calls these on every worker.
"""

from __future__ import annotations

import os
import tempfile
from copy import deepcopy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lion_distill.train.checkpoint import export_hf, name_dtype, publish_dir, rank, trainable_only

if TYPE_CHECKING:
    from lion_distill.config.models import LoraConfig

ADAPTER_DIR = "lora_adapter"
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def peft_config(lora: LoraConfig, architecture: str):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=TASK_TYPES[architecture],
    )


def quantization(lora: LoraConfig | None, device: torch.device):
    """QLoRA's 4-bit base, with the paper's settings (NF4, double quantisation of the scales), or
    None. The 4-bit weights are dequantised for each matmul into the compute dtype: bf16 on GPU (as
    FSDP's mixed precision computes the rest), fp32 on CPU (bitsandbytes' CPU backend)."""
    if lora is None or not lora.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
    )


def adapter(lora: LoraConfig | None, architecture: str):
    """-> a function that wraps a freshly built model in a LoRA adapter, or None (full fine-tuning).
    step.load_sharded applies it to every rank's model before sharding.

    A 4-bit base is wrapped as it is, without peft.prepare_model_for_kbit_training: what that adds
    is here already or unwanted. It freezes the base (get_peft_model does), casts fp16/bf16
    parameters to fp32 (step.load_model loads the unquantised ones in fp32), and by default turns
    on gradient checkpointing with input gradients for reentrant checkpointing (that is
    `train.activation_checkpointing`'s choice, and setup_model's checkpointing is non-reentrant)."""
    if lora is None:
        return None
    from peft import get_peft_model

    def wrap(model: nn.Module) -> nn.Module:
        return get_peft_model(model, peft_config(lora, architecture))

    return wrap


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def checkpoint_options(model: nn.Module) -> StateDictOptions | None:
    """A LoRA student's checkpoint leaves the frozen base out (strict=False: loading it back
    restores the adapter into a model whose base came from the model folder)."""
    return StateDictOptions(ignore_frozen_params=True, strict=False) if is_lora(model) else None


def export(
    model: nn.Module,
    model_path: str,
    output_dir: str,
    *,
    dtype: torch.dtype = torch.float32,
    save_adapter: bool = False,
) -> None:
    """The student's Hugging Face export (a collective: every rank calls it). A LoRA student is
    exported merged, and with `save_adapter` its adapter too; any other model by export_hf.

    Only the adapter is gathered. Rank 0 merges it into the base read again at full precision from
    `model_path`, the model the run started from, not into a QLoRA student's dequantised 4-bit
    weights: those carry NF4's rounding error in every weight, the ones the adapter never touched
    included, and the export would hand it on to every later use of the student (vLLM, the next
    Lion iteration's base). The export is the exact base plus the adapter's delta; it differs from
    the model that trained by the 4-bit base's rounding error, which the adapter trained against."""
    if not is_lora(model):
        return export_hf(model, model_path, output_dir, dtype=dtype)
    trained = trainable_only(
        model,
        get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        ),
    )
    if rank() != 0:
        return
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from lion_distill.train.step import load_model

    base = load_model(model_path, "seq2seq" if model.get_base_model().config.is_encoder_decoder else "causal")
    unsharded = get_peft_model(base, deepcopy(model.peft_config["default"])).eval()
    unexpected = unsharded.load_state_dict(trained, strict=False).unexpected_keys
    if unexpected:  # the merge would silently leave the adapter out
        raise RuntimeError(f"the base read from {model_path} has no place for adapter weights {unexpected[:3]}")
    with tempfile.TemporaryDirectory(prefix="lora-export-") as tmp:
        if save_adapter:
            unsharded.peft_config["default"].base_model_name_or_path = model_path  # the base it adapts
            unsharded.save_pretrained(os.path.join(tmp, ADAPTER_DIR), safe_serialization=True)
        merged = unsharded.merge_and_unload()
        merged.config.use_cache = True  # the export generates
        merged.save_pretrained(
            tmp, state_dict={k: v.to(dtype) for k, v in merged.state_dict().items()}, safe_serialization=True
        )
        name_dtype(tmp, dtype)
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
        publish_dir(tmp, output_dir)
