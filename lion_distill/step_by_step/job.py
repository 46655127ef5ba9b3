"""Distilling step-by-step, end to end: a teacher's rationales (or the released PaLM ones), T5
students trained three ways across fractions of the training data, test accuracy.

    python jobs/step_by_step.py --config configs/step-by-step-demo.yaml [--set fractions=[0.5,1.0] ...]
    ray job submit --working-dir . -- python jobs/step_by_step.py --config configs/step-by-step-cqa.yaml

Stages: `rationales`, `train/<cell>` for each cell of the grid (method x fraction, and label
source x seed x student where `grid` spans them), `evaluate`. Run
again with the same run_dir to resume after the last completed stage; a generating teacher on an
API pays nothing twice (its replies are cached under run_dir/llm_cache).
"""

from __future__ import annotations

import logging
import os
from functools import partial

from lion_distill.config import load_config
from lion_distill.config.step_by_step import StepByStepConfig
from lion_distill.data import RunDir
from lion_distill.local_models import resolve_local_models
from lion_distill.run_config import store_config
from lion_distill.runner import Stage, run_stages
from lion_distill.step_by_step.grid import Cell, cells
from lion_distill.step_by_step.report import write_report
from lion_distill.step_by_step.stages import evaluate, rationales, train_cell
from lion_distill.train import delete_checkpoints

log = logging.getLogger("lion_distill.step_by_step")


def step_by_step_stages(cfg: StepByStepConfig, run: RunDir) -> list[Stage]:
    """rationales, then every cell of the grid (lion_distill.step_by_step.grid), then evaluate."""

    def train(cell: Cell) -> Stage:
        # Optimizer state, twice the model: only an unfinished stage needs it (lion_distill.runner's cleanup).
        cleanup = (
            None
            if cfg.train.keep_checkpoints
            else partial(delete_checkpoints, run.uri_of(f"train/{cell.key}", "model"))
        )
        return Stage(f"train/{cell.key}", lambda state: train_cell(cfg, run, cell), cleanup=cleanup)

    return [
        Stage("rationales", lambda state: rationales(cfg, run)),
        *(train(c) for c in cells(cfg)),
        Stage("evaluate", lambda state: evaluate(cfg, run, state["outputs"])),
    ]


def absolute_paths(cfg: StepByStepConfig) -> StepByStepConfig:
    """Paths as absolute: Ray workers do not share the job's working directory."""

    def absolute(path: str | None) -> str | None:
        return os.path.abspath(path) if path and "://" not in path and os.path.exists(path) else path

    data = cfg.data.model_copy(
        update={k: absolute(getattr(cfg.data, k)) for k in ("data_dir", "train_file", "test_file")}
    )
    teacher = cfg.teacher.model_copy(update={"prompt_file": absolute(cfg.teacher.prompt_file)})
    if teacher.role is not None:
        teacher = teacher.model_copy(
            update={"role": teacher.role.model_copy(update={"model": absolute(teacher.role.model)})}
        )
    student = cfg.student.model_copy(update={"model": absolute(cfg.student.model)})
    grid = (
        cfg.grid.model_copy(update={"students": [absolute(s) for s in cfg.grid.students]})
        if cfg.grid.students
        else cfg.grid
    )
    run_dir = cfg.run_dir if "://" in cfg.run_dir else os.path.abspath(cfg.run_dir)
    return cfg.model_copy(
        update={"data": data, "teacher": teacher, "student": student, "grid": grid, "run_dir": run_dir}
    )


def load(path: str, overrides: list[str]) -> StepByStepConfig:
    return resolve_local_models(load_config(path, overrides, model=StepByStepConfig))


def resolved(cfg: StepByStepConfig) -> StepByStepConfig:
    """The config as the run uses it and stores it in config.json: its paths absolute."""
    return absolute_paths(cfg)


def run(cfg: StepByStepConfig, allow_config_change: bool = False) -> dict:
    cfg = resolved(cfg)
    rundir = RunDir(cfg.run_dir)
    config = store_config(rundir, cfg, allow_config_change)  # a resumed run's config is the stored one
    state = run_stages(
        rundir,
        job="step_by_step",
        name=cfg.name,
        stages=step_by_step_stages(cfg, rundir),
        report=write_report,
        tracking_cfg=cfg.tracking,
        config=config,
    )
    write_report(rundir)
    log.info("done: report %s", rundir.path("report.md"))
    return state
