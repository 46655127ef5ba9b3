"""The Lion run's config: every section together (`RunConfig`). Its own module because the
`eval` section (lion_distill.config.evaluate) builds on the role models of lion_distill.config.models, so
that module cannot also hold the whole run without importing in a circle."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from lion_distill.config.evaluate import EvalConfig
from lion_distill.config.models import (
    DataConfig,
    DistillConfig,
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
    """A Lion run (jobs/lion.py): every section together."""

    ROLES: ClassVar[tuple[str, ...]] = ("teacher", "student", "referee", "generator")

    run_dir: str = Field(
        min_length=1,
        description="Where the run keeps everything: a local path every node mounts, or any pyarrow filesystem "
        "URI (s3://bucket/run, options such as ?endpoint_override= included).",
    )
    name: str = Field("lion", description="The job's name, in its logs, report and tracking run.")
    data: DataConfig = Field(description="The seed pool.")
    teacher: RoleConfig = Field(description="Answers the train and cache pools (the paper's gpt-3.5-turbo).")
    student: StudentRoleConfig = Field(description="The model distilled into: a local model (vllm or hf), fine-tuned.")
    referee: RoleConfig = Field(description="Scores teacher and student answers to find the hard instructions.")
    generator: RoleConfig = Field(description="Writes new instructions from hard and easy ones.")
    lion: LionConfig = Field(LionConfig(), description="Lion's loop.")
    distill: DistillConfig = Field(
        DistillConfig(), description="What imitation trains the student on: the answers, or their logits too."
    )
    train: TrainConfig = Field(TrainConfig(), description="How the student is fine-tuned.")
    eval: EvalConfig | None = Field(
        None, description="Evaluate the student before training and after every imitation (null: no evaluation)."
    )
    plan: PlanConfig = Field(PlanConfig(), description="What `--plan` assumes before the run has measured anything.")
    serving: ServingConfig = Field(ServingConfig(), description="How the job serves its vllm roles.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="Experiment tracking.")

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
