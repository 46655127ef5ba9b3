"""The `eval` section: an LLM-judged relative score against a reference (Lion's Vicuna-80
protocol). The same model configures the evaluation job (`EvalJobConfig`) and, as an
optional `eval` field of a Lion `RunConfig`, an evaluation of the student before
training and after every imitation stage (there the candidate is the student).

Example (the evaluation job; Vicuna-80 with the gpt-3.5-turbo answers as reference)::

    run_dir: runs/eval
    eval:
      questions: {files: [data/vicuna80/questions.jsonl], field_map: {instruction: text}}
      reference: {name: gpt-3.5-turbo, answers: data/vicuna80/answers_gpt-3.5-turbo.jsonl}
      judge: {backend: openai, model: gpt-4, openai: {api_key_env: OPENAI_API_KEY}}
      candidates:
        - {name: lion-7b, lion_run: runs/lion-7b}                # the run's latest student
        - {name: vicuna, role: {backend: vllm, model: /models/vicuna-7b}, prompt: chat}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from lion_distill.config.models import PlanConfig, RoleConfig, Strict, TrackingConfig


class QuestionsConfig(Strict):
    """Question files, read and rejected as instruction pools are (lion_distill.data)."""

    files: list[str] = Field(min_length=1, description="Question files: JSONL, Alpaca JSON or parquet.")
    field_map: dict[Literal["instruction", "input"], str] = Field(
        default_factory=dict, description="Which fields hold the question and its input (Vicuna: {instruction: text})."
    )
    key_field: str = Field(
        "question_id", description="What reference answers are keyed by; a row without it is keyed by its stable id."
    )
    category_field: str = Field("category", description="A question's category; a row without it is in category all.")
    max_instruction_chars: PositiveInt = Field(4_096, description="A longer question is rejected and counted.")
    sample_size: PositiveInt | None = Field(
        None, description="A seeded sample of this many questions (a trial run); null: all."
    )


class ReferenceConfig(Strict):
    """The answers the candidates are scored against: a file, or a role that answers."""

    name: str = Field("reference", description="The reference's name in the report (e.g. gpt-3.5-turbo).")
    answers: str | None = Field(
        None, description="A JSONL file with one answer per question, keyed by the questions' key_field."
    )
    key_field: str = Field("question_id", description="The answers file's key field.")
    text_field: str = Field("text", description="The answers file's field holding the answer.")
    role: RoleConfig | None = Field(None, description="A model that answers the questions instead of a file.")

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceConfig:
        if (self.answers is None) == (self.role is None):
            raise ValueError(
                "give exactly one of 'answers' (a file of reference answers) and 'role' (a model that answers)"
            )
        return self


class CandidateConfig(Strict):
    """A model under evaluation: a role (any backend, any local Hugging Face folder), or
    the student of a Lion run directory, served as that run's config serves its student."""

    name: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="The candidate's name, also its folder under eval/."
    )
    role: RoleConfig | None = Field(None, description="A model under evaluation and how to serve it.")
    lion_run: str | None = Field(None, description="A Lion run directory: its student is the candidate.")
    iteration: int | None = Field(None, ge=0, description="With lion_run: that iteration's student (null: the latest).")
    prompt: Literal["alpaca", "chat"] | None = Field(
        None,
        description=(
            "How a question is asked: chat (its chat template, as chat models are served) or alpaca (Lion's "
            "layout). Default: the format a Lion run's student was trained in (its student.prompt_format), "
            "chat for a role."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> CandidateConfig:
        if (self.role is None) == (self.lion_run is None):
            raise ValueError(
                "give exactly one of 'role' (a model and how to serve it) and 'lion_run' (a Lion run directory)"
            )
        if self.iteration is not None and self.lion_run is None:
            raise ValueError("'iteration' picks a student of 'lion_run'; it needs lion_run")
        if self.prompt is None and self.role is not None:
            self.prompt = "chat"
        return self


class EvalConfig(Strict):
    """Lion's relative score (Vicuna-80 judged by an LLM, as FastChat's eval)."""

    questions: QuestionsConfig = Field(description="The questions, read and rejected as instruction pools are.")
    reference: ReferenceConfig = Field(description="The answers every candidate is scored against.")
    judge: RoleConfig = Field(description="The judge that reviews each pair (the paper's GPT-4).")
    candidates: list[CandidateConfig] = Field(
        default_factory=list, description="The evaluation job's models under evaluation; in a Lion run, the student."
    )
    judge_constraint: Literal["auto", "regex", "json", "none"] = Field(
        "auto", description="As lion.referee_constraint: a guided-decoding regex where vLLM serves the judge."
    )
    judge_prompt: Literal["fastchat", "vicuna", "lion"] = Field(
        "fastchat",
        description="fastchat: FastChat's three prompts routed by category as its reviewer.jsonl (coding, math, "
        "else general); vicuna: the general prompt for every question; lion: Lion's referee prompt.",
    )
    judge_retries: int = Field(
        2, ge=0, description="Re-asks of an unparseable review (another seed) before it is excluded and counted."
    )
    # Failures come disproportionately from bad candidates, and a score over the rest flatters them.
    min_judged_fraction: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Below this share of questions judged, the evaluation fails naming the failures instead of "
        "reporting a score.",
    )
    judge_logprobs: bool = Field(False, description="Score by the probability-weighted score tokens.")
    tie_margin: float = Field(
        0.0, ge=0.0, description="|candidate - reference| at most this (mean of both orders) is a tie."
    )
    bootstrap_samples: PositiveInt = Field(
        2_000, description="Bootstrap resamples of the questions for the 95% interval."
    )
    seed: int = Field(42, description="Seeds the question sample and the bootstrap.")

    @model_validator(mode="after")
    def _unique_candidates(self) -> EvalConfig:
        names = [c.name for c in self.candidates]
        # A candidate's name is its role's name in the spend log, beside "judge" and "reference".
        if len(set(names)) != len(names) or {self.reference.name, "judge", "reference"} & set(names):
            raise ValueError(
                f"candidate names must be unique and differ from the reference's name, 'judge' and 'reference': {names}"
            )
        return self


class EvalJobConfig(Strict):
    """The evaluation job: `python jobs/evaluate.py --config configs/eval-demo.yaml`."""

    run_dir: str = Field(
        min_length=1, description="Where the job keeps everything: a local path or a pyarrow filesystem URI."
    )
    name: str = Field("eval", description="The job's name, in its logs, report and tracking run.")
    eval: EvalConfig = Field(description="What is evaluated, against what, judged by whom.")
    plan: PlanConfig = Field(
        default_factory=PlanConfig, description="What `--plan` assumes before anything is observed."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")

    @model_validator(mode="after")
    def _has_candidates(self) -> EvalJobConfig:
        if not self.eval.candidates:
            raise ValueError("eval.candidates: name at least one model to evaluate")
        return self
