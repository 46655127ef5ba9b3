"""LoRA students (PEFT) under the same Ray Train + FSDP2 loop as full fine-tuning.

With `train.lora`, the student is wrapped by `peft.get_peft_model` before it is sharded: the base
weights are frozen (requires_grad False: FSDP2 shards them like any parameter, and
step.build_optimizer hands AdamW only the trainable ones, the adapter's), the LoRA matrices train.
A checkpoint holds the adapter and its optimizer state only (torch.distributed.checkpoint with
`ignore_frozen_params`): the frozen base is the model the run started from, read again on a resume.
The export merges the adapter into the base (`merge_and_unload`), so vLLM and transformers load
it like any fine-tuned student; with `save_adapter` the adapter alone goes beside it, in
`<export>/lora_adapter` (PEFT's format, which vLLM's `enable_lora` serves).

Plain torch + PEFT, no Ray: engine.train.loop calls these on every worker.
"""
from __future__ import annotations

import os
import tempfile
from copy import deepcopy

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from engine.config.models import LoraConfig
from engine.train.checkpoint import export_hf, publish_dir, rank

ADAPTER_DIR = "lora_adapter"
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def peft_config(lora: LoraConfig, architecture: str):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type=TASK_TYPES[architecture])


def adapter(lora: LoraConfig | None, architecture: str):
    """-> a function that wraps a freshly built model in a LoRA adapter, or None (full fine-tuning).
    step.load_sharded applies it to every rank's model before sharding."""
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


def export(model: nn.Module, tokenizer_path: str, output_dir: str, *, dtype: torch.dtype = torch.float32,
           save_adapter: bool = False) -> None:
    """The student's Hugging Face export (a collective: every rank calls it). A LoRA student is
    exported merged, and with `save_adapter` its adapter too; any other model by export_hf."""
    if not is_lora(model):
        return export_hf(model, tokenizer_path, output_dir, dtype=dtype)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank() != 0:
        return
    from transformers import AutoTokenizer

    unsharded = unsharded_copy(model, full)
    with tempfile.TemporaryDirectory(prefix="lora-export-") as tmp:
        if save_adapter:
            unsharded.peft_config["default"].base_model_name_or_path = tokenizer_path  # the base it adapts
            unsharded.save_pretrained(os.path.join(tmp, ADAPTER_DIR), safe_serialization=True)
        merged = unsharded.merge_and_unload()
        merged.config.use_cache = True  # the export generates
        merged.save_pretrained(tmp, state_dict={k: v.to(dtype) for k, v in merged.state_dict().items()},
                               safe_serialization=True)
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
        publish_dir(tmp, output_dir)


def unsharded_copy(model: nn.Module, full: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU PEFT model over the gathered full state dict, built without a second weight copy:
    the structure on the meta device, the gathered tensors assigned in place, the buffers
    outside the state dict (rotary frequencies) copied from the training model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    base = model.get_base_model()
    cls = AutoModelForSeq2SeqLM if base.config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):  # its own config: the export's settings must not reach the training model
        copy = get_peft_model(cls.from_config(deepcopy(base.config), dtype=torch.float32),
                              deepcopy(model.peft_config["default"]))
    copy.load_state_dict(full, assign=True, strict=True)
    persistent = set(full)
    for name, buffer in model.named_buffers():
        if name not in persistent:
            owner, _, attr = name.rpartition(".")
            copy.get_submodule(owner).register_buffer(attr, buffer.detach().cpu().clone(), persistent=False)
    copy.generation_config = base.generation_config
    return copy.eval()
