"""Demo-sized Lion runs (one iteration; in the MLflow one the student is evaluated before and after
training) tracked in an MLflow file store and in TensorBoard event files, read back with their own readers: the
iteration's summary (hard fraction, gap, new instructions, relative score), each stage's figures,
Ray Train rank 0's per-step loss, the config (key variable names, never a key) and the plots."""
import json

import pytest

from engine.lion import loop
from tests.test_lion_e2e import DEMO, KEY, KEY_ENV, files_containing, overrides

pytestmark = pytest.mark.ray


def _run(run, server, backend: str, evaluate: bool) -> dict:
    sets = overrides(run, server, iterations=1, sample=8, new=2, evaluate=evaluate)
    sets += ["lion.final_imitation=false", f"tracking.backend={backend}", "tracking.run_name=demo",
             "tracking.project=lion-e2e", *(["eval.questions.sample_size=4"] if evaluate else [])]
    state = loop.run(loop.load(DEMO, sets))
    assert state["done"]
    return state


def _steps(points) -> dict[int, float]:
    return {p.step: p.value for p in points}


def test_lion_run_tracked_in_an_mlflow_file_store(ray_cluster, vllm_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(KEY_ENV, KEY)
    run = tmp_path / "run"
    state = _run(run, vllm_server, "mlflow", evaluate=True)
    client = MlflowClient(str(run / "mlruns"))
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    job = client.get_run(run_id)
    assert job.info.run_name == "demo" and job.info.status == "FINISHED"
    summary = state["summary"]
    history = {key: _steps(client.get_metric_history(run_id, key)) for key in (
        "summary/hard_fraction", "summary/mean_gap", "summary/new_instructions", "summary/eval_relative_score",
        "lion/hard_fraction", "timing_s/imitation/train")}
    assert history["summary/hard_fraction"] == {1: pytest.approx(summary["iter_0"]["hard_fraction"])}
    assert history["summary/new_instructions"] == {1: summary["iter_0"]["new_instructions"]}
    assert history["summary/eval_relative_score"] == {0: pytest.approx(summary["iter_-1"]["eval_relative_score"]),
                                                      1: pytest.approx(summary["iter_0"]["eval_relative_score"])}
    assert set(history["lion/hard_fraction"]) == set(history["timing_s/imitation/train"]) == {1}
    assert json.loads(job.data.params["teacher.openai.api_key_env"]) == KEY_ENV
    # Ray Train's rank 0 logged the imitation's loss at every optimizer step, in a child run.
    steps = int(json.loads((run / "iter_0" / "imitation" / "metrics.json").read_text())["steps/imitation/train"])
    children = client.search_runs([job.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert [c.info.run_name for c in children] == ["demo/lion-demo-iter0-imitation"]
    assert sorted(_steps(client.get_metric_history(children[0].info.run_id, "train/loss"))) == list(range(1, steps + 1))
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"config.json", "report.md", "plots/hard_fraction_gap.png", "plots/relative_score.png"} <= artifacts
    assert files_containing(run, KEY) == []


def test_lion_run_tracked_in_tensorboard_event_files(ray_cluster, vllm_server, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(KEY_ENV, KEY)
    run = tmp_path / "run"
    state = _run(run, vllm_server, "tensorboard", evaluate=False)  # the evaluation's figures: the MLflow test
    events = EventAccumulator(str(run / "tensorboard" / "demo"), size_guidance={"images": 0}).Reload()
    assert _steps(events.Scalars("summary/hard_fraction")) == {1: pytest.approx(state["summary"]["iter_0"]["hard_fraction"])}
    assert _steps(events.Scalars("summary/new_instructions")) == {1: state["summary"]["iter_0"]["new_instructions"]}
    assert {"plots/hard_fraction_gap.png", "plots/stage_throughput.png"} <= set(events.Tags()["images"])
    curve = EventAccumulator(str(run / "tensorboard" / "demo" / "train" / "lion-demo-iter0-imitation")).Reload()
    steps = int(json.loads((run / "iter_0" / "imitation" / "metrics.json").read_text())["steps/imitation/train"])
    assert sorted(_steps(curve.Scalars("train/loss"))) == list(range(1, steps + 1))
    assert files_containing(run, KEY) == []
