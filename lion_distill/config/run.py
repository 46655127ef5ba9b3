"""The Lion run's config: every section together (`RunConfig`). Its own module because the
`eval` section (lion_distill.config.evaluate) builds on the role models of lion_distill.config.models, so
that module cannot also hold the whole run without importing in a circle."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from lion_distill.config.evaluate import EvalConfig
from lion_distill.config.models import (
    DataConfig,
    LionConfig,
    PlanConfig,
    RoleConfig,
    ServingConfig,
    Strict,
    StudentRoleConfig,
    TrackingConfig,
    TrainConfig,
)


class RunConfig(Strict):
    ROLES: ClassVar[tuple[str, ...]] = ("teacher", "student", "referee", "generator")

    run_dir: str = Field(min_length=1)  # local path or any pyarrow filesystem URI
    name: str = "lion"
    data: DataConfig
    teacher: RoleConfig
    student: StudentRoleConfig
    referee: RoleConfig
    generator: RoleConfig
    lion: LionConfig = LionConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig | None = None  # evaluate the student before training and after every imitation
    plan: PlanConfig = PlanConfig()
    serving: ServingConfig = ServingConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _student_is_local(self) -> RunConfig:
        if self.student.backend == "openai":
            raise ValueError(
                "student.backend: the student is fine-tuned, so it must be a local model (vllm or hf), not openai"
            )
        if self.eval is not None and self.eval.candidates:
            raise ValueError(
                "eval.candidates: in a Lion run the candidate is the student; evaluate other models with jobs/evaluate.py"
            )
        return self
