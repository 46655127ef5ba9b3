"""Can the run directory hold what training writes of a student named by its hub id? Checked
before a run starts, so a run whose disk fills at the second iteration's export stops now.

    params = hub_parameters("meta-llama/Llama-3.1-8B")      # None when neither the cache nor the hub says
    problem = space_problem("student", params, "/mnt/shared/runs/x", exports=4, checkpoints=2)

A hub id's size comes from this machine's Hugging Face cache (the safetensors headers of its
snapshot: the tensors' shapes, read without loading them) or else from the hub's model card
(`safetensors.total`, one request with a short timeout). A local folder's student needs no
guess; an object store run directory has no fixed size; both are not checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from math import prod

# What training writes per parameter: the exported student in bf16 (the GPU export,
# lion_distill.train.loop) and a Ray Train checkpoint with fp32 weights and AdamW's two moments.
EXPORT_BYTES, CHECKPOINT_BYTES = 2, 12
HUB_TIMEOUT_S = 5.0


def safetensors_parameters(path: str) -> int:
    """Parameters in one .safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def cached_parameters(model: str) -> int | None:
    """Parameters of a hub model whose snapshot this machine's Hugging Face cache holds."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model, local_files_only=True, allow_patterns=["*.safetensors"])
    except Exception:  # not cached, or no valid hub id
        return None
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors")]
    return sum(safetensors_parameters(f) for f in files) or None


def hub_parameters(model: str) -> int | None:
    found = cached_parameters(model)
    if found is not None:
        return found
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model, expand=["safetensors"], timeout=HUB_TIMEOUT_S)
    except Exception:  # no network, a private model without a token: the run finds out when it loads
        return None
    return info.safetensors.total if info.safetensors else None


def space_problem(name: str, params: int, run_dir: str, *, exports: int, checkpoints: int) -> str | None:
    """One line when the local run directory's filesystem has less free space than `exports`
    exported students and `checkpoints` Ray Train checkpoints of `params` parameters."""
    folder = os.path.abspath(os.path.expanduser(run_dir))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    need = params * (exports * EXPORT_BYTES + checkpoints * CHECKPOINT_BYTES)
    free = shutil.disk_usage(folder).free
    if need <= free:
        return None
    return (
        f"{name}.model: {params / 1e9:.2f}B parameters: {exports} exported students (bf16) and {checkpoints} "
        f"training checkpoints (fp32 weights and AdamW) need {need / 1e9:.1f} GB, but run_dir {run_dir!r} has "
        f"{free / 1e9:.1f} GB free: free space or move run_dir"
        f"{' (or set train.keep_checkpoints: false)' if checkpoints > 2 else ''}"
    )
