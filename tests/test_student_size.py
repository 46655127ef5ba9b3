"""A Lion student named by hub id is sized from this machine's Hugging Face cache (safetensors
headers only), and preflight refuses a run directory whose disk cannot hold its exports and
checkpoints (lion_distill.data.student_size), in milliseconds without Ray."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lion_distill.config import load_config
from lion_distill.data.student_size import cached_parameters, safetensors_parameters, space_problem
from lion_distill.preflight import preflight

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMIT = "0" * 40


def cache_model(cache: Path, repo: str, write) -> None:
    """A hub model's snapshot laid out as huggingface_hub caches it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    write(snapshot)


def header_only(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors header declaring tensors too large to write: sizing must read no more."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * shape[0] * shape[1]
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_parameters_come_from_the_cached_safetensors_headers(hub_cache):
    def shards(snapshot):
        save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(snapshot / "model-00001-of-00002.safetensors"))
        save_file({"c": torch.zeros(2, 2, 2)}, str(snapshot / "model-00002-of-00002.safetensors"))

    cache_model(hub_cache, "org/small", shards)
    assert (
        safetensors_parameters(
            str(next((hub_cache / "models--org--small" / "snapshots").iterdir()) / "model-00002-of-00002.safetensors")
        )
        == 8
    )
    assert cached_parameters("org/small") == 12 + 5 + 8
    assert cached_parameters("org/not-cached") is None


def test_the_free_space_must_hold_every_export_and_the_live_checkpoints(tmp_path):
    run_dir = str(tmp_path / "not" / "made" / "yet")  # sized on the nearest folder that exists
    assert space_problem("student", 1, run_dir, exports=4, checkpoints=2) is None
    line = space_problem("student", 10**13, run_dir, exports=4, checkpoints=2)
    assert line.startswith("student.model: 10000.00B parameters: 4 exported students (bf16) and 2 training ")
    assert f"need {10**13 * (4 * 2 + 2 * 12) / 1e9:.1f} GB" in line and repr(run_dir) in line and "\n" not in line


def test_preflight_refuses_a_run_directory_that_cannot_hold_a_hub_students_exports(hub_cache, tmp_path):
    cache_model(
        hub_cache,
        "org/huge-student",
        lambda s: header_only(s / "model.safetensors", {"w": [10**7, 10**6], "v": [10**6, 10**5]}),
    )
    cfg = load_config(CONFIGS / "demo.yaml", [f"run_dir={tmp_path / 'run'}", "student.model=org/huge-student"])
    checks = preflight(cfg, env={})
    [line] = [p for p in checks.run if p.startswith("student.model:")]
    assert (
        "10100.00B parameters: 3 exported students" in line and "keep_checkpoints" not in line
    )  # 2 iterations, the final
    # Kept checkpoints are counted per imitation; a student that is a local folder is not sized.
    kept = load_config(
        CONFIGS / "demo.yaml",
        [f"run_dir={tmp_path / 'run'}", "student.model=org/huge-student", "train.keep_checkpoints=true"],
    )
    line = next(p for p in preflight(kept, env={}).run if p.startswith("student."))
    assert "and 6 training checkpoints" in line and line.endswith("(or set train.keep_checkpoints: false)")
    local = load_config(CONFIGS / "demo.yaml", [f"run_dir={tmp_path / 'run'}"])
    assert not [p for p in preflight(local, env={}).run if "parameters" in p]
