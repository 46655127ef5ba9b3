"""benchmarks/gpu_smoke.py, the prepared run for a lent GPU (docs/gpu.md), on CPU: its --dry-run
executes every step's code with tiny sizes in a process where Ray, vLLM and pydantic cannot be
imported (a lent machine has none of them), its two spawned CPU ranks included; and its clock
gives each step its share of the budget and skips what comes after a spent one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "benchmarks" / "gpu_smoke.py"
# Imported first by every Python process started with this folder on PYTHONPATH (site's sitecustomize).
NOT_ON_A_LENT_GPU = """import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"ray", "vllm", "pydantic"}:
            raise ModuleNotFoundError(f"{name}: not installed on a lent GPU machine")
sys.meta_path.insert(0, _Absent())
"""
PEAK = 1e12  # a made-up peak, so that the dry run computes an MFU too


def test_the_dry_run_runs_every_step_without_ray_vllm_or_pydantic(tmp_path):
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / "sitecustomize.py").write_text(NOT_ON_A_LENT_GPU)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "absent"), str(REPO)])}
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert "not installed on a lent GPU machine" in blocked.stderr  # the switch works, in every process
    out = tmp_path / "smoke.json"
    argv = ["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--peak-flops", str(PEAK)]
    done = subprocess.run([sys.executable, str(SMOKE), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(
        ["env", "mfu", "llama", "t5", "checkpoint", "qlora", "generate"], "ok"
    ), {name: s.get("error") for name, s in steps.items()}
    assert all(s["seconds"] > 0 for s in steps.values()) and report["total_s"] <= report["budget_s"]

    env_figures, mfu = steps["env"]["figures"], steps["mfu"]["figures"]
    assert env_figures["backend"] == "gloo" and env_figures["peak_bf16_flops"] == PEAK
    for run in mfu.values():  # benchmarks/training.py's figure: lion_distill.train.flops over the steps' time
        assert run["mfu"] == pytest.approx(run["model_flops_per_token"] * run["tokens_per_s"] / PEAK)
    assert [run["activation_checkpointing"] for run in mfu.values()] == [False, True]
    for name in ("llama", "t5"):
        figures = steps[name]["figures"]
        assert figures["relative_difference"] == 0.0  # fp32 on CPU: load_sharded's model is from_pretrained's
        assert figures["accumulation_1"]["finite"] and figures["accumulation_4"]["finite"]
    t5 = steps["t5"]["figures"]
    assert t5["embeddings_one_weight_after_a_step"] and t5["head_its_own_after_a_step"]
    checkpoint = steps["checkpoint"]["figures"]
    assert checkpoint["exact"] and checkpoint["export_dtype"] == "torch.bfloat16"
    assert checkpoint["config_dtype"] == "bfloat16"
    assert steps["qlora"]["figures"]["finite"] and steps["qlora"]["figures"]["four_bit_weights"] > 0
    generated = steps["generate"]["figures"]
    assert set(generated) == {"t5", "llama", "qlora"}
    assert all(g["dtype"] == "torch.bfloat16" and g["new_tokens"] > 0 for g in generated.values())


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.syspath_prepend(str(SMOKE.parent))
    import gpu_smoke

    return gpu_smoke


def test_a_step_runs_until_its_share_is_spent_and_a_failure_is_a_figure(smoke, tmp_path, monkeypatch):
    """A scripted clock (seconds as the steps spend them) over the real scheduler: a step that
    overruns eats the shares after it, which are skipped until the budget catches up; a step's
    exception is recorded and the rest still run; the JSON is rewritten after each step."""
    now = [0.0]
    monkeypatch.setattr(smoke, "time", SimpleNamespace(monotonic=lambda: now[0]))
    out = tmp_path / "smoke.json"
    seen = {}

    def spends(name, seconds, fail=False):
        def step(run):
            seen[name] = (round(run.left(), 6), json.loads(out.read_text()) if out.exists() else None)
            now[0] += seconds
            if fail:
                raise RuntimeError("CUDA error: an illegal memory access")
            return {"spent": seconds}

        return step

    # Budget 100 s: the shares end at 5, 25, 40, 55, 75, 90 and 100 s.
    steps = {
        "env": spends("env", 2),
        "mfu": spends("mfu", 45),  # to 47 s: past llama's end (40 s)
        "llama": spends("llama", 1),
        "t5": spends("t5", 1, fail=True),
        "checkpoint": spends("checkpoint", 1),
        "qlora": spends("qlora", 1),
        "generate": spends("generate", 1),
    }
    monkeypatch.setattr(smoke, "STEPS", steps)
    run = smoke.Run(SimpleNamespace(dry_run=True, work=str(tmp_path / "work"), peak_flops=None))
    report = smoke.run_steps(run, 100.0, out)
    status = {name: s["status"] for name, s in report["steps"].items()}
    assert status == {
        "env": "ok",
        "mfu": "ok",
        "llama": "skipped",
        "t5": "failed",
        "checkpoint": "ok",
        "qlora": "ok",
        "generate": "ok",
    }
    assert seen["env"][0] == 5 and seen["mfu"][0] == 23 and seen["t5"][0] == 55 - 47  # each step's own deadline
    assert "illegal memory access" in report["steps"]["t5"]["error"]
    assert list(seen["checkpoint"][1]["steps"]) == ["env", "mfu", "llama", "t5"]  # written before the next began
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
