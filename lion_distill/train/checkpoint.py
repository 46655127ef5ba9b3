"""Sharded training checkpoints (torch.distributed.checkpoint) and the final
Hugging Face export. Plain torch, no Ray: the loop decides where they go.

A checkpoint folder holds each rank's shard of model + optimizer state
(`__<rank>_0.distcp`, `.metadata`) and `trainer_state.json` (step counters, the
scheduler, the first loss) written by rank 0; ranks may write to separate local
folders that are later merged into one (Ray Train uploads them so).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from lion_distill.crashpoints import crash_point

TRAINER_STATE = "trainer_state.json"


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def save_checkpoint(
    folder: str | Path, model, optimizer, scheduler, state: dict, options: StateDictOptions | None = None
) -> None:
    """`options`: which state (a LoRA student's leave the frozen base out, lion_distill.train.lora)."""
    model_sd, optim_sd = _state(model, optimizer, options)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    if rank() == 0:
        Path(folder, TRAINER_STATE).write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}))


def load_checkpoint(folder: str | Path, model, optimizer, scheduler, options: StateDictOptions | None = None) -> dict:
    """Restore model, optimizer and scheduler in place (the state `options` saved); returns the trainer state."""
    model_sd, optim_sd = _state(model, optimizer, options)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"], options=options)
    state = json.loads(Path(folder, TRAINER_STATE).read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def checkpoint_settings(folder: str | Path) -> str | None:
    """The training settings a checkpoint was made under (lion_distill.train.loop.training_settings);
    None for a checkpoint from before they were recorded."""
    try:
        return json.loads(Path(folder, TRAINER_STATE).read_text()).get("settings")
    except (OSError, ValueError):
        return None


def trainable_only(model, state_dict: dict) -> dict:
    """The entries of the trainable parameters. `ignore_frozen_params` drops the frozen parameters
    but keeps what a state dict holds beside them: buffers, and the quantisation state bitsandbytes
    writes next to each 4-bit weight (absmax, quant_map...), frozen like the weight itself."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state_dict.items() if k in trainable}


def _state(model, optimizer, options: StateDictOptions | None) -> tuple[dict, dict]:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if options is not None and options.ignore_frozen_params:
        model_sd = trainable_only(model, model_sd)
    return model_sd, optim_sd


def export_hf(model, tokenizer_path: str, output_dir: str, *, dtype: torch.dtype = torch.float32) -> None:
    """Gather the full weights (a collective: every rank calls this) and let rank 0
    write safetensors + config + tokenizer to `output_dir` (local path or URI).
    Written to a local folder first and moved into place, so a reader never
    sees half an export."""
    from transformers import AutoTokenizer

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank() != 0:
        return
    full = {k: v.to(dtype) for k, v in full.items()}
    with tempfile.TemporaryDirectory(prefix="hf-export-") as tmp:
        training_use_cache, model.config.use_cache = model.config.use_cache, True  # the export generates
        model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
        model.config.use_cache = training_use_cache  # training goes on after a validation's export
        name_dtype(tmp, dtype)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
        publish_dir(tmp, output_dir)


def name_dtype(folder: str, dtype: torch.dtype) -> None:
    """config.json names the dtype the weights were written in. save_pretrained names the model's
    own (fp32 master weights) whatever the state dict it is given: a bf16 export said float32, and
    `dtype="auto"` loaders (vLLM, transformers) then upcast it."""
    path = Path(folder, "config.json")
    config = json.loads(path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def publish_dir(local: str, target: str) -> None:
    """Copy a finished local folder to `target` (local path or pyarrow URI), replacing it. A local
    target is swapped in whole (a staging folder renamed); an object store has no such rename, so
    its copy is marked complete last (EXPORT_COMPLETE) and a reader takes no folder without the mark
    (`export_complete`)."""
    from lion_distill.data.remote import EXPORT_COMPLETE  # lion_distill.data needs pyarrow: not at the step's import

    if "://" not in target:
        target = os.path.abspath(target)
        staging = f"{target}.tmp-{os.getpid()}"
        for left in Path(target).parent.glob(f"{Path(target).name}.tmp-*"):  # a killed publish's, any process
            shutil.rmtree(left, ignore_errors=True)
        shutil.copytree(local, staging)
        Path(staging, EXPORT_COMPLETE).write_text(json.dumps({"files": len(os.listdir(local))}))
        crash_point("export")  # copied, not yet in place
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return
    import pyarrow.fs as pafs  # only for a URI: the step code runs where pyarrow is not installed

    fs, path = pafs.FileSystem.from_uri(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)  # the mark first: a half-replaced export is not complete
    pafs.copy_files(local, path, destination_filesystem=fs)
    crash_point("export")  # copied, not yet marked
    with fs.open_output_stream(f"{path.rstrip('/')}/{EXPORT_COMPLETE}") as out:
        out.write(json.dumps({"files": len(os.listdir(local))}).encode())


def delete_dir(target: str) -> None:
    """Remove a folder (local path or pyarrow URI) and everything in it; nothing if it is absent.
    Idempotent, so a delete a kill cut short is finished by the next call."""
    if "://" not in target:
        for child in sorted(Path(target).iterdir()) if os.path.isdir(target) else ():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            crash_point("cleanup")  # part of it deleted
        shutil.rmtree(target, ignore_errors=True)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(target)
    # Object by object: an object store can list a key that is gone when pyarrow's recursive
    # delete_dir reaches it (Ray Train's storage-validation marker is written and removed by
    # other processes), and delete_dir then fails on the whole folder.
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            try:
                fs.delete_file(info.path)
            except FileNotFoundError:
                pass
            crash_point("cleanup")
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
