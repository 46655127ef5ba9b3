"""Experiment tracking without Ray (lion_distill.metrics.tracking): each backend's real client writes, its
own reader reads back; a resumed job continues its run; the per-step training curve (the path Ray
Train's rank 0 takes) lands beside it; a backend that cannot start is one preflight line; one that
fails mid-run is switched off, not fatal."""

import json

import pytest

from lion_distill.config.models import TrackingConfig
from lion_distill.data import RunDir
from lion_distill.metrics import tracking
from lion_distill.metrics.curve import TrainingCurve
from lion_distill.preflight import preflight
from tests.fixtures.server_process import free_port

CONFIG = {"teacher": {"model": "gpt-3.5-turbo", "openai": {"api_key_env": "LION_KEY"}}, "lion": {"tau": 1.0}}


def _job(run: RunDir, backend: str, **extra):
    """What the stage runner does with a tracker over one Lion iteration's stages."""
    tracker = tracking.open_tracker(TrackingConfig(backend=backend, project="lion-test", **extra), run, "lion-demo")
    tracking.log_config(tracker, CONFIG)
    run.write_json(
        "iter_0/discrimination/metrics.json",
        {"lion/hard_fraction": 0.25, "timing_s/discrimination/referee": 3.5, "lion/note": "text is no figure"},
    )
    tracking.log_stage(tracker, run, "iter_0/discrimination", 2, {"hard_fraction": 0.25, "mean_gap": 1.5})
    tracking.log_stage(tracker, run, "iter_-1/eval", 0, {"eval_relative_score": 0.61})
    with tracking.active(tracker):
        tracking.store("plots/hard_fraction.png", _png())
        curve = TrainingCurve(tracking.worker_target("iter_0/imitation/train"), rank=0)
    for step, loss in enumerate([2.0, 1.5, 1.0], start=1):
        curve.log({"train/loss": loss}, step)
    curve.close()
    run.write_bytes("report.md", b"# report")
    tracking.log_report(tracker, run, run.path("report.md"))
    tracker.close()
    return tracker


def _png() -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_mlflow_file_store_read_back_with_its_client(tmp_path):
    from mlflow.tracking import MlflowClient

    run = RunDir(tmp_path / "run")
    tracker = _job(run, "mlflow")
    client = MlflowClient(str(tmp_path / "run" / "mlruns"))
    job = client.get_run(tracker.run_id)
    assert job.info.run_name == "lion-demo" and job.info.status == "FINISHED"
    assert json.loads(job.data.params["teacher.openai.api_key_env"]) == "LION_KEY"
    history = client.get_metric_history(tracker.run_id, "lion/hard_fraction")
    assert [(m.value, m.step) for m in history] == [(0.25, 1)]  # iteration 0's figures at step 1
    assert [(m.value, m.step) for m in client.get_metric_history(tracker.run_id, "summary/eval_relative_score")] == [
        (0.61, 0)
    ]
    assert "lion/note" not in job.data.metrics
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)} | {
        a.path for a in client.list_artifacts(tracker.run_id, "plots")
    }
    assert artifacts == {"config.json", "report.md", "plots", "plots/hard_fraction.png"}
    # The training curve: a child run of the job's, one point per optimizer step.
    children = client.search_runs([job.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert [c.info.run_name for c in children] == ["lion-demo/iter_0/imitation/train"]
    curve = client.get_metric_history(children[0].info.run_id, "train/loss")
    assert [(m.step, m.value) for m in curve] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    # A resumed job continues the same run.
    again = tracking.open_tracker(TrackingConfig(backend="mlflow", project="lion-test"), run, "lion-demo")
    assert again.run_id == tracker.run_id
    again.params(CONFIG)  # the same parameters again: accepted
    again.close()


def test_tensorboard_events_read_back_with_its_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "run")
    tracker = _job(run, "tensorboard", run_name="tb")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "tb"), size_guidance={"images": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("lion/hard_fraction")] == [(1, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("summary/eval_relative_score")] == [(0, pytest.approx(0.61))]
    assert "plots/hard_fraction.png" in events.Tags()["images"]
    assert "LION_KEY" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert (tmp_path / "run" / "tensorboard" / "tb" / "artifacts" / "report.md").read_text() == "# report"
    curve = EventAccumulator(tracker.worker("iter_0/imitation/train")["uri"]).Reload()
    assert [(e.step, e.value) for e in curve.Scalars("train/loss")] == [(1, 2.0), (2, 1.5), (3, 1.0)]


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "run")
    tracker = _job(run, "wandb")
    curve_id = tracker.worker("iter_0/imitation/train")["id"]
    folders = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    by_id = {i: next(f for f in folders if f.name.endswith(f"-{i}")) for i in (tracker.run_id, curve_id)}
    job = by_id[tracker.run_id]
    assert (job / f"run-{tracker.run_id}.wandb").stat().st_size > 0
    assert (job / "files" / "report.md").read_text() == "# report"
    assert (job / "files" / "plots" / "hard_fraction.png").is_file()
    assert json.loads((job / "files" / "config.json").read_text()) == CONFIG
    assert (by_id[curve_id] / f"run-{curve_id}.wandb").is_file()  # the training curve's run, in the job's group


def test_a_backend_that_cannot_start_is_one_preflight_line(tmp_path, monkeypatch):
    from lion_distill.config import load_config

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    port = free_port()
    cases = {
        "wandb": (
            {"backend": "wandb"},
            "tracking: wandb needs WANDB_API_KEY in the environment (or WANDB_MODE=offline)",
        ),
        "file": (
            {"backend": "mlflow", "uri": str(blocked / "mlruns")},
            f"tracking.uri: {blocked}/mlruns is not writable",
        ),
        "server": (
            {"backend": "mlflow", "uri": f"http://127.0.0.1:{port}"},
            f"tracking.uri: the tracking server http://127.0.0.1:{port} does not answer",
        ),
    }
    for settings, line in cases.values():
        problems = tracking.problems("tracking", TrackingConfig(**settings), str(tmp_path / "run"))
        assert len(problems) == 1 and problems[0].startswith(line), problems
    remote = tracking.problems("tracking", TrackingConfig(backend="tensorboard"), "s3://bucket/run")
    assert remote == [
        "tracking.uri: the run directory s3://bucket/run is remote; give the tracker a uri (a server or a local folder)"
    ]
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\ndata: {{pool_files: [{tmp_path / 'none.jsonl'}]}}\n"
        + "".join(
            f"{r}: {{backend: vllm, model: {tmp_path}}}\n" for r in ("teacher", "student", "referee", "generator")
        )
        + "tracking: {backend: wandb}\n"
    )
    assert (
        "tracking: wandb needs WANDB_API_KEY in the environment (or WANDB_MODE=offline)"
        in preflight(load_config(cfg, [])).problems
    )


def test_a_tracker_failing_mid_run_is_switched_off_not_fatal(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    tracker = tracking.open_tracker(TrackingConfig(backend="mlflow"), run, "job")

    def down(*args, **kwargs):  # a fault a local file store will not produce: the server went away
        raise ConnectionError("tracking server unreachable")

    tracker.client.log_batch = down
    tracker.log({"a": 1.0}, 0)
    tracker.log({"a": 2.0}, 1)
    tracker.artifact("report.md", b"x")
    assert tracker.broken and tracking.worker_target("s") is None
    assert [r.message for r in caplog.records if "tracking" in r.message] == [
        "tracking (mlflow) failed to log figures, and is off for the rest of this job: "
        "ConnectionError: tracking server unreachable"
    ]
    assert tracking.open_tracker(TrackingConfig(), run, "job") is None  # backend none: nothing opens


def test_figures_and_steps():
    assert tracking.numeric({"a": 1, "b": {"c": 2.5, "d": "x", "e": True}, "f": float("nan")}) == {"a": 1.0, "b/c": 2.5}
    assert [
        tracking.stage_step(s, i)
        for i, s in enumerate(["iter_-1/eval", "iter_0/imitation", "iter_2/generation", "rationales"])
    ] == [0, 1, 3, 3]
    assert tracking.flat_params({"a": {"b": 1, "c": None}, "d": []}) == {"a.b": "1", "a.c": "null", "d": "[]"}
