"""The cells of a run: every method x fraction x label source x seed x student the config's
`grid` spans, each one training run and one test score. Pure, so `--plan` and the report read
the same cells as the job.

A cell's key names only the dimensions that vary, so a run without `grid` keeps the plain
`<method>/<fraction>` keys:

    step_by_step/0.5                        # one label source, seed and student
    step_by_step-teacher/0.5/seed1/t5-v1_1-small
"""

from __future__ import annotations

from dataclasses import dataclass

from lion_distill.config.step_by_step import StepByStepConfig

# The labels each baseline learns from; step_by_step learns from each of grid.label_sources.
FIXED_LABELS = {"standard_finetune": "gold", "standard_distill": "teacher"}


@dataclass(frozen=True)
class Cell:
    method: str
    label_source: str
    fraction: float
    seed: int
    student: str
    key: str  # unique in the run: a stage name suffix and a file name

    @property
    def series(self) -> str:
        """The line it belongs to on a figure: the method (step_by_step with its labels when both run)."""
        return self.key.split("/", 1)[0]


def label_sources(cfg: StepByStepConfig) -> list[str]:
    return cfg.grid.label_sources or [cfg.label_source]


def seeds(cfg: StepByStepConfig) -> list[int]:
    return cfg.grid.seeds or [cfg.data.seed]


def students(cfg: StepByStepConfig) -> list[str]:
    return cfg.grid.students or [cfg.student.model]


def student_name(model: str) -> str:
    """A model's short name in keys: the last path part ("google/t5-v1_1-small" -> "t5-v1_1-small")."""
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def cells(cfg: StepByStepConfig) -> list[Cell]:
    """Every cell, student by student, then method, label source, fraction (smallest first), seed."""
    sources, all_seeds, all_students = label_sources(cfg), seeds(cfg), students(cfg)
    names = [student_name(s) for s in all_students]
    if len(set(names)) != len(names):
        raise ValueError(f"grid.students: {all_students} share a short name; keys would collide")
    out = []
    for student, short in zip(all_students, names):
        for method in cfg.methods:
            for source in [FIXED_LABELS[method]] if method in FIXED_LABELS else sources:
                series = f"{method}-{source}" if method == "step_by_step" and len(sources) > 1 else method
                for fraction in sorted(cfg.fractions):
                    for seed in all_seeds:
                        key = "/".join(
                            [series, f"{fraction:g}"]
                            + ([f"seed{seed}"] if len(all_seeds) > 1 else [])
                            + ([short] if len(all_students) > 1 else [])
                        )
                        out.append(Cell(method, source, fraction, seed, student, key))
    return out
