"""A demo-sized Lion run (one iteration) tracked in TensorBoard event files, read back with
TensorBoard's reader: the iteration's summary, Ray Train rank 0's per-step loss and the plots. The
MLflow backend is checked on the demo's own end-to-end run (test_lion_e2e.py), with the evaluation."""
import json

import pytest

from engine.lion import loop
from tests.test_lion_e2e import DEMO, KEY, KEY_ENV, files_containing, overrides

pytestmark = pytest.mark.ray


def _run(run, server, backend: str) -> dict:
    sets = overrides(run, server, iterations=1, sample=8, new=2)
    sets += ["lion.final_imitation=false", f"tracking.backend={backend}", "tracking.run_name=demo",
             "tracking.project=lion-e2e"]
    state = loop.run(loop.load(DEMO, sets))
    assert state["done"]
    return state


def _steps(points) -> dict[int, float]:
    return {p.step: p.value for p in points}


def test_lion_run_tracked_in_tensorboard_event_files(ray_cluster, vllm_server, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(KEY_ENV, KEY)
    run = tmp_path / "run"
    state = _run(run, vllm_server, "tensorboard")
    events = EventAccumulator(str(run / "tensorboard" / "demo"), size_guidance={"images": 0}).Reload()
    assert _steps(events.Scalars("summary/hard_fraction")) == {1: pytest.approx(state["summary"]["iter_0"]["hard_fraction"])}
    assert _steps(events.Scalars("summary/new_instructions")) == {1: state["summary"]["iter_0"]["new_instructions"]}
    assert {"plots/hard_fraction_gap.png", "plots/stage_throughput.png"} <= set(events.Tags()["images"])
    curve = EventAccumulator(str(run / "tensorboard" / "demo" / "train" / "lion-demo-iter0-imitation")).Reload()
    steps = int(json.loads((run / "iter_0" / "imitation" / "metrics.json").read_text())["steps/imitation/train"])
    assert sorted(_steps(curve.Scalars("train/loss"))) == list(range(1, steps + 1))
    assert files_containing(run, KEY) == []
