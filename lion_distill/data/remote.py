"""Models in an object store (any pyarrow filesystem URI: s3://, gs://, hdfs://...): each node
that loads one downloads it once into a local cache and loads it from there.

    model = local_model("s3://bucket/runs/x/iter_0/imitation/student")   # -> ~/.cache/lion-distill/models/<key>
    AutoModelForCausalLM.from_pretrained(model)

A local folder or a hub id comes back as it is. Every loader of a model calls this where it
runs (an engine replica, a generation actor, a training worker, the tokenising tasks), so a
student exported into an `s3://` run directory is loaded on whichever node needs it; nothing
assumes the driver's disk is shared.

The cache key is the URI and the listing of its files (names, sizes, modification times): a
re-exported student (a resumed imitation) is downloaded again, an unchanged one never twice.
Loaders on one node take a file lock, so the first downloads and the others wait and reuse
it; a download goes to a temporary folder renamed into place, so a killed one leaves nothing
that looks complete. `LION_MODEL_CACHE` moves the cache (default ~/.cache/lion-distill/models;
a run's students stay there until removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

CACHE_ENV = "LION_MODEL_CACHE"
# Written last into an exported model (lion_distill.train.checkpoint.publish_dir): on an object store,
# which cannot swap a folder in whole, a folder without it is an export still being copied.
EXPORT_COMPLETE = "export_complete.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def is_uri(path) -> bool:
    """A location on a pyarrow filesystem other than this node's disk (a str or a Path)."""
    return "://" in str(path)


def export_complete(fs, path: str) -> bool:
    """A whole export at `path` on the pyarrow filesystem `fs`: its mark, or, for a local export
    (swapped in whole; one made before exports were marked), its config.json."""
    import pyarrow.fs as pafs

    marked = fs.get_file_info(f"{path.rstrip('/')}/{EXPORT_COMPLETE}").type == pafs.FileType.File
    local = isinstance(fs, pafs.LocalFileSystem)
    return marked or (local and fs.get_file_info(f"{path.rstrip('/')}/config.json").type == pafs.FileType.File)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lion-distill" / "models")


def model_problems(field: str, model: str) -> list[str]:
    """A model at a URI, checked from where the driver stands: a Hugging Face folder (its
    config.json) is there, and the endpoint and credentials reach it."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(model)
        found = fs.get_file_info(f"{path.rstrip('/')}/config.json").type == pafs.FileType.File
    except (OSError, ValueError) as e:
        return [f"{field}: {model} cannot be read ({str(e).strip().splitlines()[0]})"]
    return [] if found else [f"{field}: {model} has no config.json (a Hugging Face model folder was expected)"]


def local_model(model: str, *, tokenizer_only: bool = False) -> str:
    """A model folder on this node: `model` itself unless it is a URI, else its local copy
    (downloaded now if this node has none of this version). `tokenizer_only`: all but the
    weight files, for a process that only tokenises (no 14 GB of LLaMA-7B on a CPU node)."""
    if not is_uri(model):
        return model
    import pyarrow.fs as pafs
    from filelock import FileLock

    fs, path = pafs.FileSystem.from_uri(model)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [f for f in infos if f.type == pafs.FileType.File and not (tokenizer_only and f.path.endswith(WEIGHTS))]
    if not files:
        raise FileNotFoundError(f"{model}: no model files there")
    listing = sorted((f.path, f.size, f.mtime_ns) for f in files)
    key = hashlib.sha256(json.dumps([model, tokenizer_only, listing]).encode()).hexdigest()[:16]
    target = cache_root() / key
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not target.is_dir():  # another loader on this node may have fetched it while we waited
            staging = Path(f"{target}.tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            local = pafs.LocalFileSystem()
            if tokenizer_only:
                for f in files:
                    dest = staging / f.path[len(path.rstrip("/")) + 1 :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    pafs.copy_files(f.path, str(dest), source_filesystem=fs, destination_filesystem=local)
            else:  # the whole folder in one call: pyarrow fetches the weight shards in parallel
                pafs.copy_files(path, str(staging), source_filesystem=fs, destination_filesystem=local)
            os.replace(staging, target)
    return str(target)
