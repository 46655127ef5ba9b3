"""The distill job's config (jobs/distill.py): the teacher answers a pool, the student distils them
(the `distill` section: its answers, or their logits too), evaluation as in Lion."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from lion_distill.config.evaluate import EvalConfig
from lion_distill.config.models import (
    DataConfig,
    DistillConfig,
    PlanConfig,
    RoleConfig,
    ServingConfig,
    Strict,
    TrackingConfig,
    TrainConfig,
)


class DistillRunConfig(Strict):
    ROLES: ClassVar[tuple[str, ...]] = ("teacher", "student")

    run_dir: str = Field(min_length=1, description="The run directory: a local path or any pyarrow filesystem URI.")
    name: str = Field("distill", description="The run's name, for its Ray Train runs and its tracker.")
    data: DataConfig = Field(description="The pool the teacher answers and the student trains on.")
    teacher: RoleConfig = Field(description="The teacher; open weights (vllm, hf, a vLLM server) for logit_kd.")
    student: RoleConfig = Field(description="The student: a local model (vllm or hf), fine-tuned.")
    distill: DistillConfig = Field(DistillConfig(), description="What the student learns: answers or logits.")
    train: TrainConfig = Field(TrainConfig(), description="How the student is fine-tuned (Ray Train, FSDP2).")
    train_on_truncated: bool = Field(
        False,
        description="A teacher answer cut at max_tokens is left out of training (false, as Lion's imitation by "
        "default: lion.train_on_truncated) or trained on without an end-of-sequence token (true).",
    )
    eval: EvalConfig | None = Field(
        None, description="Evaluate the student before and after training, as a Lion run does; null: no evaluation."
    )
    plan: PlanConfig = Field(PlanConfig(), description="What --plan assumes where nothing is observed yet.")
    serving: ServingConfig = Field(ServingConfig(), description="How the job serves its vllm roles.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="Experiment tracking.")

    @model_validator(mode="after")
    def _student_is_local(self) -> DistillRunConfig:
        if self.student.backend == "openai":
            raise ValueError("student.backend: the student is fine-tuned, so it must be a local model (vllm or hf)")
        if self.eval is not None and self.eval.candidates:
            raise ValueError("eval.candidates: in a distill run the candidate is the student")
        return self
