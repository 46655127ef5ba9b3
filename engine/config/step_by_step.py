"""The distilling step-by-step job's config (jobs/step_by_step.py). Defaults are the paper's.

Example (the released PaLM rationales on the repository's CQA slice; everything else defaults)::

    run_dir: runs/sbs-cqa
    data: {task: cqa}
    teacher: {source: released}
    student: {model: t5-base}

A generating teacher is any LLM role (`teacher.role`: vllm, hf or openai); `teacher.constraint`
adds a vLLM structured-output regex that ends in the task's answer phrase.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from engine.config.models import PlanConfig, RoleConfig, Strict, TrackingConfig, TrainConfig

Method = Literal["standard_finetune", "standard_distill", "step_by_step"]
METHODS: tuple[str, ...] = ("standard_finetune", "standard_distill", "step_by_step")


class TaskData(Strict):
    task: Literal["cqa", "svamp", "esnli", "anli1", "jsonl"]
    # The original layout ({task}/{task}_{split}.json, {task}/llm/{split}_CoT_*.json).
    data_dir: str = "data/step-by-step"
    # jsonl: the user's own task (rows `input`, `label`, optional `choices`).
    train_file: str | None = None
    test_file: str | None = None
    labels: list[str] | None = None  # jsonl: the label space; None: each row's `choices`
    answer_phrase: str = "So the answer is"  # jsonl: what the prompt puts before the answer
    train_limit: PositiveInt | None = None  # the first N rows of a split (a trial run)
    test_limit: PositiveInt | None = None
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # held out of train, never of test
    seed: int = 0

    @model_validator(mode="after")
    def _jsonl_files(self) -> TaskData:
        if self.task == "jsonl" and not (self.train_file and self.test_file):
            raise ValueError("task jsonl needs train_file and test_file (JSON lines: input, label, optional choices)")
        if self.task != "jsonl" and (self.train_file or self.test_file or self.labels):
            raise ValueError(f"train_file, test_file and labels are for task jsonl; {self.task} reads data_dir")
        return self


class TeacherConfig(Strict):
    # released: the PaLM completions shipped with the data (the paper's own rationales);
    # generate: `role` answers the few-shot chain-of-thought prompt.
    source: Literal["released", "generate"] = "released"
    role: RoleConfig | None = None
    prompt_file: str | None = None  # default: engine/step_by_step/prompts/<task>.txt
    # auto: a regex where the role is served by vllm; regex: also for an openai endpoint that
    # is a vLLM server; none: unconstrained.
    constraint: Literal["auto", "regex", "none"] = "auto"

    @model_validator(mode="after")
    def _role_for_generate(self) -> TeacherConfig:
        if self.source == "generate" and self.role is None:
            raise ValueError("source generate needs a role (backend, model, sampling)")
        if self.source == "released" and self.role is not None:
            raise ValueError("source released reads the PaLM completions; remove role or set source: generate")
        return self


class StudentConfig(Strict):
    model: str = Field("t5-base", min_length=1)  # a T5 checkpoint folder or name; tiny://t5 for tests
    max_new_tokens: PositiveInt = 64  # label-only predictions
    batch_size: PositiveInt = 64
    replicas: PositiveInt = 1


class StepByStepConfig(Strict):
    run_dir: str = Field(min_length=1)
    name: str = "step-by-step"
    data: TaskData
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    methods: list[Method] = Field(default_factory=lambda: list(METHODS), min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0], min_length=1)
    label_source: Literal["gold", "teacher"] = "gold"  # step_by_step's labels
    # The paper trains a fixed number of steps at every fraction; epochs follow from it.
    steps: PositiveInt | None = 10_000
    # Validation accuracy is measured this many times in each training run, evenly spaced over its
    # steps (the last at its end); the best export is kept (engine.train.Validation).
    validations: PositiveInt = 1
    train: TrainConfig = TrainConfig(architecture="seq2seq", learning_rate=5e-5, batch_size=64, max_length=1024,
                                     warmup_ratio=0.0, rationale_weight=1.0, epochs=1)
    plan: PlanConfig = Field(default_factory=PlanConfig)  # what --plan assumes (throughputs for GPU-hours)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> StepByStepConfig:
        if any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if len(set(self.fractions)) != len(self.fractions) or len(set(self.methods)) != len(self.methods):
            raise ValueError("methods and fractions must not repeat")
        if self.teacher.source == "released" and self.data.task == "jsonl":
            raise ValueError("teacher.source released: PaLM completions exist only for cqa, svamp, esnli, anli1")
        if self.train.architecture != "seq2seq":
            raise ValueError("train.architecture: step-by-step trains a seq2seq (T5) student")
        return self
