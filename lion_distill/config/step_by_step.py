"""The distilling step-by-step job's config (jobs/step_by_step.py). Defaults are the reference
code's (google-research/distilling-step-by-step `run.py`: T5 v1.1, lr 5e-5, batch 64, 10K steps,
the HF Trainer's linear schedule without warmup), except where docs/step-by-step.md says why not.

Example (the released PaLM rationales on your copy of the full CQA set; everything else defaults)::

    run_dir: runs/sbs-cqa
    data: {task: cqa, data_dir: /data/step-by-step}
    teacher: {source: released}
    student: {model: google/t5-v1_1-base}

A generating teacher is any LLM role (`teacher.role`: vllm, hf or openai); `teacher.constraint`
adds a vLLM structured-output regex on the reply's answer tail. `grid` spreads one run over
label sources, seeds and student sizes: one command runs a paper figure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from lion_distill.config.models import PlanConfig, RoleConfig, Strict, TrackingConfig, TrainConfig

Method = Literal["standard_finetune", "standard_distill", "step_by_step"]
METHODS: tuple[str, ...] = ("standard_finetune", "standard_distill", "step_by_step")
# The reference's student (run.py `--from_pretrained`); T5 v1.1 saw no supervised task (MNLI,
# RTE...) in pre-training, unlike the original T5, which would flatter the NLI baselines.
REFERENCE_STUDENT = "google/t5-v1_1-base"


class TaskData(Strict):
    """The task: one of the paper's, read from data_dir, or your own JSONL."""

    task: Literal["cqa", "svamp", "esnli", "anli1", "jsonl"] = Field(
        description="One of the paper's four tasks, or jsonl: your own task (train_file, test_file)."
    )
    # No default: the repository's data/step-by-step is a 40-row demo slice.
    data_dir: str | None = Field(
        None,
        description="A paper task's folder in the original layout ({task}/{task}_{split}.json, "
        "{task}/llm/{split}_CoT_*.json): your copy of the full sets.",
    )
    allow_partial: bool = Field(
        False,
        description="Allow a split smaller than the dataset's published size (a slice, train_limit); refused "
        "otherwise, so a paper config never silently trains on a slice.",
    )
    train_file: str | None = Field(
        None, description="jsonl: the training rows (input, label, optional choices and completion)."
    )
    test_file: str | None = Field(None, description="jsonl: the test rows, in train_file's format.")
    labels: list[str] | None = Field(None, description="jsonl: the label space (null: each row's `choices`).")
    answer_phrase: str = Field(
        "So the answer is", description="jsonl: what the prompt puts before the answer, as the paper's prompts."
    )
    train_limit: PositiveInt | None = Field(None, description="Read only the first N training rows (a trial run).")
    test_limit: PositiveInt | None = Field(None, description="Read only the first N test rows (a trial run).")
    valid_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="Held out of each training fraction for validation, as the reference's 10% of its subsample "
        "(never of test; e-SNLI and ANLI use their dev split sized by the same fraction).",
    )
    seed: int = Field(0, description="The run's seed where grid.seeds is null: draws the fractions, seeds training.")
    nli_input: Literal["labelled", "eos_joined"] = Field(
        "labelled",
        description="The student's input for e-SNLI and ANLI: labelled, the few-shot prompt's "
        '"Premise: ...\\nHypothesis: ..." (what the teacher saw); eos_joined, the reference\'s premise</s>hypothesis '
        "(run.py: tokenizer.eos_token.join([premise, hypothesis])).",
    )

    @model_validator(mode="after")
    def _jsonl_files(self) -> TaskData:
        if self.task == "jsonl" and not (self.train_file and self.test_file):
            raise ValueError("task jsonl needs train_file and test_file (JSON lines: input, label, optional choices)")
        if self.task != "jsonl" and (self.train_file or self.test_file or self.labels):
            raise ValueError(f"train_file, test_file and labels are for task jsonl; {self.task} reads data_dir")
        return self

    def folder(self) -> str:
        if self.data_dir is None:
            raise ValueError(
                f"data.data_dir: {self.task} needs the folder with the full sets (layout of "
                "data/step-by-step); the repository's slice is for demos (with data.allow_partial: true)"
            )
        return self.data_dir


class TeacherConfig(Strict):
    """Where the rationales come from: the released PaLM completions, or a teacher LLM asked few-shot."""

    source: Literal["released", "generate"] = Field(
        "released",
        description="released: the PaLM 540B completions shipped with the data (the paper's own rationales), or a "
        "jsonl task's `completion` field; generate: `role` answers the few-shot chain-of-thought prompt.",
    )
    role: RoleConfig | None = Field(None, description="The teacher LLM, for source generate.")
    prompt_file: str | None = Field(
        None,
        description="The few-shot prompt with one {input} slot (null: lion_distill/step_by_step/prompts/<task>.txt; "
        "a jsonl task needs its own, example data/step-by-step/my-task/prompt.txt).",
    )
    constraint: Literal["auto", "regex", "none"] = Field(
        "auto",
        description="auto: a regex on the answer tail (free chain of thought, then the answer phrase and a label) "
        "where vllm serves the teacher, none for an API; regex: also for an openai endpoint that is a vLLM server.",
    )
    max_rationale_chars: PositiveInt = Field(600, description="The constraint's bound on the free chain of thought.")

    @model_validator(mode="after")
    def _role_for_generate(self) -> TeacherConfig:
        if self.source == "generate" and self.role is None:
            raise ValueError("source generate needs a role (backend, model, sampling)")
        if self.source == "released" and self.role is not None:
            raise ValueError("source released reads the PaLM completions; remove role or set source: generate")
        return self


class StudentConfig(Strict):
    """The T5 student and how its test predictions are made."""

    model: str = Field(
        REFERENCE_STUDENT,
        min_length=1,
        description="A T5 checkpoint folder or hub name (the reference's google/t5-v1_1-base; tiny://t5 for tests).",
    )
    max_new_tokens: PositiveInt = Field(64, description="Tokens of a label-only prediction on test.")
    batch_size: PositiveInt = Field(64, description="Rows per batch of test predictions.")
    replicas: PositiveInt = Field(1, description="Prediction actors side by side.")


class GridConfig(Strict):
    """One run over a paper figure: every method x fraction x label source x seed x student.
    None: the run's own `label_source`, `data.seed`, `student.model`."""

    # step_by_step once per label source (the paper's Figures 4-5: gold next to standard
    # finetuning, teacher next to standard distillation); the other methods fix their labels.
    label_sources: list[Literal["gold", "teacher"]] | None = Field(
        None, min_length=1, description="step_by_step once per label source (the paper's Figures 4-5)."
    )
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="Each seed draws its own training fraction and initialises training (the reference's --run).",
    )
    students: list[str] | None = Field(
        None, min_length=1, description="Student models, one series each (the model-size figures)."
    )

    @model_validator(mode="after")
    def _distinct(self) -> GridConfig:
        for name in ("label_sources", "seeds", "students"):
            values = getattr(self, name)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat")
        return self


class StepByStepConfig(Strict):
    """A distilling step-by-step run (jobs/step_by_step.py); defaults are the reference code's."""

    run_dir: str = Field(
        min_length=1, description="Where the job keeps everything: a local path or a pyarrow filesystem URI."
    )
    name: str = Field("step-by-step", description="The job's name, in its logs, report and tracking run.")
    data: TaskData = Field(description="The task and its files.")
    teacher: TeacherConfig = Field(TeacherConfig(), description="Where the rationales come from.")
    student: StudentConfig = Field(StudentConfig(), description="The T5 student and its test predictions.")
    methods: list[Method] = Field(
        default_factory=lambda: list(METHODS),
        min_length=1,
        description="The paper's methods compared: standard_finetune (gold labels), standard_distill (the "
        "teacher's labels), step_by_step (labels plus rationales).",
    )
    fractions: list[float] = Field(
        default_factory=lambda: [0.125, 0.25, 0.5, 1.0],
        min_length=1,
        description="Shares of the training set, nested and seeded: the x axis of the paper's figures.",
    )
    label_source: Literal["gold", "teacher"] = Field(
        "gold", description="step_by_step's labels where grid.label_sources is null."
    )
    steps: PositiveInt | None = Field(
        10_000,
        description="Exactly this many optimizer steps at every fraction, stopping mid-epoch (the reference's "
        "max_steps); null: train.epochs whole epochs.",
    )
    # reference: selection by eye on test is what the reference code leaves to the reader.
    validation: Literal["best", "reference"] = Field(
        "best",
        description="best: validation accuracy `validations` times, the best export kept and scored on test once; "
        "reference: the reference code's protocol, test accuracy every eval_steps and the last export kept.",
    )
    validations: PositiveInt = Field(
        1, description="Validations per training run, evenly spaced (the last at its end), for validation best."
    )
    eval_steps: PositiveInt = Field(
        250, description="Steps between test evaluations, for validation reference (the reference's 250)."
    )
    validation_labels: Literal["method", "gold_dev"] = Field(
        "method",
        description="What validation scores against: method, each cell's own labels (the teacher's for teacher-label "
        "cells); gold_dev, the gold labels of the official dev split where the task has one (e-SNLI, ANLI), as the "
        "reference's valid split keeps them (run.py swaps in the LLM's labels on train only).",
    )
    accuracy: Literal["normalised", "exact"] = Field(
        "normalised",
        description="How a prediction is scored: normalised, case and surrounding spaces ignored (SVAMP: equal values "
        "within 1e-4); exact, the reference's metrics.py: the prediction string equals the label (SVAMP: the two "
        "equations evaluate to equal numbers).",
    )
    unparsed_rows: Literal["drop", "keep"] = Field(
        "drop",
        description="drop: a row whose teacher reply gave no label is left out where the teacher's label is the target, "
        "and a row without a rationale out of step_by_step; keep: every row trains, an unparsed label as a blank "
        "target and an empty rationale as an empty one, as the reference (run.py drops no row; data_utils.py parsers "
        "give a blank label).",
    )
    grid: GridConfig = Field(default_factory=GridConfig, description="One run over a paper figure's grid.")
    train: TrainConfig = Field(
        TrainConfig(
            architecture="seq2seq",
            learning_rate=5e-5,
            batch_size=64,
            max_length=1024,
            warmup_ratio=0.0,
            lr_schedule="linear",
            rationale_weight=1.0,
            epochs=1,
        ),
        description="How each T5 trains; the reference's run.py: lr 5e-5, batch 64, inputs up to 1024 tokens, "
        "linear schedule without warmup.",
    )
    plan: PlanConfig = Field(
        default_factory=PlanConfig, description="What `--plan` assumes (throughputs for GPU-hours)."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")

    @model_validator(mode="before")
    @classmethod
    def _reference_schedule(cls, data):
        """A `train` section that names no schedule gets the reference's (linear, no warmup), not
        TrainConfig's general default."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {
                **data,
                "train": {"architecture": "seq2seq", "warmup_ratio": 0.0, "lr_schedule": "linear", **data["train"]},
            }
        return data

    @model_validator(mode="after")
    def _check(self) -> StepByStepConfig:
        if any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if len(set(self.fractions)) != len(self.fractions) or len(set(self.methods)) != len(self.methods):
            raise ValueError("methods and fractions must not repeat")
        if self.train.architecture != "seq2seq":
            raise ValueError("train.architecture: step-by-step trains a seq2seq (T5) student")
        return self
