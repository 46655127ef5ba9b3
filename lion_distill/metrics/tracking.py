"""Experiment tracking: a job's figures in MLflow, Weights & Biases or TensorBoard, through each
library's own client.

    tracking: {backend: mlflow, project: lion, run_name: demo, uri: runs/demo/mlruns}

The stage runner (lion_distill.runner) opens one tracking run per job and logs into it: the resolved
config (it holds the *names* of key variables, never their values) as parameters and as
`config.json`; after each stage, its figures (`<stage>/metrics.json` where the stage writes one)
and its summary (Lion's: hard fraction, mean gap, new instructions, the evaluation's relative score
and whatever else the iteration's stages report); after each report, the report and its plots as
artifacts. Steps: a Lion iteration's figures are logged at step k + 1 (the student has been trained
k + 1 times; the base student's evaluation is step 0), any other job's at the stage's position.

Training curves come from Ray Train's rank 0 (lion_distill.metrics.curve, inside the train loop), to
where `worker_target` says: loss, learning rate and gradient norm at every optimizer step, in a run
of their own per training stage, tied to the job's run.

A resumed job continues the same run (its id is kept in the run directory, `tracking.json`). A
tracker that fails while the job runs is reported once and switched off: figures are never worth
a paid run. Whether it can start at all is preflight's question (`problems`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from numbers import Real

from lion_distill.config.models import TrackingConfig
from lion_distill.data import RunDir
from lion_distill.metrics.curve import FILE_STORE_OPT_IN

log = logging.getLogger("lion_distill")

STATE_FILE = "tracking.json"
LIBRARIES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "torch.utils.tensorboard"}
DEFAULT_FOLDERS = {"mlflow": "mlruns", "wandb": ".", "tensorboard": "tensorboard"}


def location(cfg: TrackingConfig, run_dir: str) -> str:
    """Where the backend writes: `uri`, else a folder inside a local run directory."""
    if cfg.uri:
        return cfg.uri
    return os.path.join(run_dir, DEFAULT_FOLDERS[cfg.backend])


def problems(name: str, cfg: TrackingConfig, run_dir: str, env=os.environ) -> list[str]:
    """Why the backend could not start, one line each ([] when it can, or is off)."""
    if cfg.backend == "none":
        return []
    import importlib.util

    module = LIBRARIES[cfg.backend]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return [f"{name}.backend: {cfg.backend} is not installed (pip install 'lion-distill[tracking]')"]
    if not cfg.uri and "://" in run_dir:
        return [
            f"{name}.uri: the run directory {run_dir} is remote; give the tracker a uri (a server or a local folder)"
        ]
    where = location(cfg, run_dir)
    if cfg.backend == "wandb" and env.get("WANDB_MODE") not in ("offline", "disabled") and not env.get("WANDB_API_KEY"):
        return [f"{name}: wandb needs WANDB_API_KEY in the environment (or WANDB_MODE=offline)"]
    if where.startswith(("http://", "https://")):
        return _server_problems(name, where)
    folder = where.removeprefix("file://")
    if "://" in folder:
        return []  # a store the library resolves itself (databricks, ...): its first write tells
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".probe-{uuid.uuid4().hex[:8]}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        return [f"{name}.uri: {folder} is not writable ({e.strerror or e})"]
    return []


def _server_problems(name: str, url: str) -> list[str]:
    import urllib.request

    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5).close()
    except OSError as e:
        return [f"{name}.uri: the tracking server {url} does not answer ({getattr(e, 'reason', e)})"]
    return []


def numeric(figures: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) dict, flattened with '/': what a tracker can plot."""
    out = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(numeric(value, f"{prefix}{key}/"))
        elif isinstance(value, Real) and not isinstance(value, bool) and value == value:  # NaN is no figure
            out[f"{prefix}{key}"] = float(value)
    return out


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A config as `a.b.c: value` strings (MLflow parameters)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)[:500]  # MLflow's limit on a parameter's value
    return out


def stage_step(stage: str, index: int) -> int:
    """A Lion iteration's stages at k + 1 (iter_-1, the base student's evaluation, at 0); others at
    their position in the job."""
    match = re.match(r"iter_(-?\d+)/", stage)
    return int(match.group(1)) + 1 if match else index


class Tracker:
    """One job's tracking run. Subclasses implement _params, _log, _artifact, _close and worker()."""

    backend = "none"

    def __init__(self, cfg: TrackingConfig, where: str, run_name: str, run_id: str | None):
        self.cfg, self.where, self.run_name = cfg, where, run_name
        self.run_id = run_id
        self.broken = False

    def log(self, figures: dict[str, float], step: int) -> None:
        if figures:
            self._guard("log figures", self._log, figures, step)

    def artifact(self, name: str, data: bytes) -> None:
        """A file (the config, the report, a plot) stored with the run under `name`."""

        def write():
            with tempfile.TemporaryDirectory(prefix="artifact-") as tmp:
                path = os.path.join(tmp, os.path.basename(name))
                with open(path, "wb") as f:
                    f.write(data)
                self._artifact(path, os.path.dirname(name))

        self._guard(f"store {name}", write)

    def params(self, config: dict) -> None:
        """The resolved config, as the backend keeps a run's settings."""
        self._guard("log the config", self._params, config)

    def close(self, failed: bool = False) -> None:
        self._guard("close", self._close, failed)

    def worker(self, stage: str) -> dict | None:
        """What Ray Train's rank 0 needs to log this training stage's curves (picklable)."""
        return None

    def _guard(self, what: str, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any library error: the run goes on without tracking
            self.broken = True
            log.warning(
                "tracking (%s) failed to %s, and is off for the rest of this job: %s: %s",
                self.backend,
                what,
                type(e).__name__,
                e,
            )

    def _params(self, config): ...

    def _log(self, figures, step): ...

    def _artifact(self, path, folder): ...

    def _close(self, failed): ...


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, cfg, where, run_name, run_id):
        super().__init__(cfg, where, run_name, run_id)
        os.environ.setdefault(FILE_STORE_OPT_IN, "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(where)
        experiment = self.client.get_experiment_by_name(cfg.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.project)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def _params(self, config):
        from mlflow.entities import Param

        # A resumed run logs its parameters again, which MLflow accepts only unchanged: the new ones only.
        existing = self.client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flat_params(config).items() if k not in existing]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _log(self, figures, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in figures.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def _artifact(self, path, folder):
        self.client.log_artifact(self.run_id, path, folder or None)

    def _close(self, failed):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def worker(self, stage):
        return {
            "backend": "mlflow",
            "uri": self.where,
            "project": self.cfg.project,
            "name": f"{self.run_name}/{stage}",
            "parent": self.run_id,
        }


class WandbTracker(Tracker):
    backend = "wandb"

    def __init__(self, cfg, where, run_name, run_id):
        super().__init__(cfg, where, run_name, run_id or uuid.uuid4().hex[:12])
        import wandb

        os.makedirs(where, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            name=run_name,
            group=run_name,
            job_type="job",
            dir=where,
            id=self.run_id,
            resume="allow",
        )

    def _params(self, config):
        self.run.config.update(config, allow_val_change=True)

    def _log(self, figures, step):
        self.run.log(figures, step=max(step, self.run.step))  # W&B steps never go back

    def _artifact(self, path, folder):
        # A file in the run's own folder is uploaded with the run (offline: kept there for `wandb sync`).
        target = os.path.join(self.run.dir, folder, os.path.basename(path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)

    def _close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)

    def worker(self, stage):
        return {
            "backend": "wandb",
            "uri": self.where,
            "project": self.cfg.project,
            "name": f"{self.run_name}/{stage}",
            "parent": self.run_name,
            "id": f"{self.run_id}-{re.sub(r'[^A-Za-z0-9_-]', '-', stage)}",
            # The workers' environment is the cluster's: offline mode goes with the target
            # (a key never does: WANDB_API_KEY must be in the workers' environment).
            "mode": os.environ.get("WANDB_MODE"),
        }


class TensorboardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, cfg, where, run_name, run_id):
        super().__init__(cfg, where, run_name, run_id or run_name)
        from torch.utils.tensorboard import SummaryWriter

        self.folder = os.path.join(where, self.run_id)
        self.writer = SummaryWriter(log_dir=self.folder)

    def _params(self, config):
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def _log(self, figures, step):
        for key, value in figures.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _artifact(self, path, folder):
        """Images show in TensorBoard; other files are copied beside the events."""
        name = os.path.join(folder, os.path.basename(path)) if folder else os.path.basename(path)
        if path.endswith(".png"):
            from matplotlib.image import imread

            self.writer.add_image(name, imread(path)[..., :3], dataformats="HWC")
            self.writer.flush()
            return
        target = os.path.join(self.folder, "artifacts", name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)

    def _close(self, failed):
        self.writer.close()

    def worker(self, stage):
        return {"backend": "tensorboard", "uri": os.path.join(self.folder, "train", stage.replace("/", "_"))}


TRACKERS = {"mlflow": MlflowTracker, "wandb": WandbTracker, "tensorboard": TensorboardTracker}


def open_tracker(cfg: TrackingConfig | None, run: RunDir, job_name: str) -> Tracker | None:
    """The job's tracking run (the one a resumed job began), or None when tracking is off."""
    if cfg is None or cfg.backend == "none":
        return None
    saved = run.read_json(STATE_FILE, {})
    run_dir = run.uri if "://" in run.uri else run.root
    run_id = saved.get("run_id") if saved.get("backend") == cfg.backend else None
    try:
        tracker = TRACKERS[cfg.backend](cfg, location(cfg, run_dir), cfg.run_name or job_name, run_id)
    except Exception as e:  # noqa: BLE001 - one line, before any stage runs (preflight catches the usual causes)
        raise TrackingError(
            f"tracking: {cfg.backend} could not start at {location(cfg, run_dir)}: {type(e).__name__}: {e}"
        ) from e
    run.write_json(STATE_FILE, {"backend": cfg.backend, "run_id": tracker.run_id, "where": tracker.where})
    return tracker


class TrackingError(RuntimeError):
    """The tracking backend could not start."""


# The tracker of the job running in this process: the train loop asks it for its workers' target.
_active: Tracker | None = None


@contextmanager
def active(tracker: Tracker | None):
    global _active
    previous, _active = _active, tracker
    try:
        yield tracker
    finally:
        _active = previous


def worker_target(stage: str) -> dict | None:
    return _active.worker(stage) if _active is not None and not _active.broken else None


def log_config(tracker: Tracker, config: dict) -> None:
    """The resolved config: parameters of the run, and `config.json` with it."""
    tracker.params(config)
    tracker.artifact("config.json", json.dumps(config, indent=2).encode())


def log_stage(tracker: Tracker, run: RunDir, stage: str, index: int, summary: dict) -> None:
    """A finished stage's figures (its `<stage>/metrics.json`, where it writes one) and its
    summary (under `summary/`), at the stage's step."""
    figures = numeric(run.read_json(f"{stage}/metrics.json", {}))
    figures.update(numeric(summary, "summary/"))
    tracker.log(figures, stage_step(stage, index))


def log_report(tracker: Tracker, run: RunDir, report_path) -> None:
    """The report a job just wrote (its plots went with save_plots, lion_distill.metrics.report)."""
    root = run.path().rstrip("/") + "/"
    if isinstance(report_path, str) and report_path.startswith(root):
        name = report_path[len(root) :]
        tracker.artifact(name, run.read_bytes(name))


def store(name: str, data: bytes) -> None:
    """A file the running job wrote (a report's plot) to its tracker, if it has one."""
    if _active is not None:
        _active.artifact(name, data)
