"""Ray Train rank 0's per-step training curve (loss, learning rate, gradient norm), in the job's
experiment tracker (lion_distill.metrics.tracking): each training stage a run of its own tied to the
job's, made by the library's own Ray Train integration where it has one (`setup_mlflow`: an MLflow
child run; `setup_wandb`: a W&B run in the job's group), else a TensorBoard folder under the job's.

    curve = TrainingCurve(config["tracking"], rank)     # the target tracking.worker_target() gave the driver
    curve.log({"train/loss": loss}, step)
    curve.close()
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lion_distill")

# MLflow 3 refuses a file store unless asked (lion_distill.metrics.tracking sets it for the driver).
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"


class TrainingCurve:
    """Rank 0's per-step figures of one training stage; a no-op elsewhere or without tracking."""

    def __init__(self, target: dict | None, rank: int):
        self.sink, self.kind = None, None
        if not target or rank != 0:
            return
        try:
            self.kind = target["backend"]
            self.sink = _curve_sink(target)
        except Exception as e:  # noqa: BLE001 - see Tracker._guard
            log.warning("tracking: the training curve could not start (%s: %s)", type(e).__name__, e)

    def log(self, figures: dict[str, float], step: int) -> None:
        if self.sink is None:
            return
        try:
            if self.kind == "mlflow":
                self.sink.log_metrics(figures, step=step)
            elif self.kind == "wandb":
                self.sink.log(figures, step=step)
            else:
                for key, value in figures.items():
                    self.sink.add_scalar(key, value, step)
        except Exception as e:  # noqa: BLE001
            log.warning("tracking: training curve off (%s: %s)", type(e).__name__, e)
            self.sink = None

    def close(self) -> None:
        if self.sink is None:
            return
        {
            "mlflow": lambda: self.sink.end_run(),
            "wandb": lambda: self.sink.finish(),
            "tensorboard": lambda: self.sink.close(),
        }[self.kind]()


def _curve_sink(target: dict):
    if target["backend"] == "mlflow":
        from ray.air.integrations.mlflow import setup_mlflow

        os.environ.setdefault(FILE_STORE_OPT_IN, "true")
        return setup_mlflow(
            tracking_uri=target["uri"],
            experiment_name=target["project"],
            run_name=target["name"],
            tags={"mlflow.parentRunId": target["parent"]},
            create_experiment_if_not_exists=True,
            rank_zero_only=False,
        )  # TrainingCurve already picked rank 0
    if target["backend"] == "wandb":
        from ray.air.integrations.wandb import setup_wandb

        return setup_wandb(
            project=target["project"],
            name=target["name"],
            group=target["parent"],
            id=target["id"],
            resume="allow",
            dir=target["uri"],
            job_type="train",
            mode=target["mode"],
            rank_zero_only=False,
        )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=target["uri"])
