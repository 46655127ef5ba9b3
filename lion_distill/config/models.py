"""Pydantic models for the sections of a run (the whole Lion run: lion_distill.config.run). Every
default is the paper's setting.

A run config is YAML; `lion_distill.config.load_config` reads it and applies `--set a.b=c`
overrides. Unknown keys are rejected everywhere (`extra="forbid"`), so a typo in a
field name fails loudly instead of silently using the default.

Example (the smallest valid file; everything else defaults)::

    run_dir: runs/demo
    data: {pool_files: [data/self-instruct/seed_tasks.jsonl]}
    teacher: {backend: openai, model: gpt-3.5-turbo, openai: {api_key_env: OPENAI_API_KEY}}
    student: {backend: vllm, model: /models/llama-7b}
    referee: {backend: openai, model: gpt-3.5-turbo, openai: {api_key_env: OPENAI_API_KEY}}
    generator: {backend: openai, model: gpt-3.5-turbo, openai: {api_key_env: OPENAI_API_KEY}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Sampling settings beyond the four above that both vLLM's `SamplingParams` and its
# OpenAI-compatible chat/completions requests accept (tests/test_config.py checks this
# list against the installed vLLM). OpenAI's own API takes only stop, presence_penalty,
# frequency_penalty and logit_bias of them. Left out on purpose: what the engine sets
# itself (logprobs, structured outputs), `n` (one reply per row) and `logit_bias` (its
# integer keys do not survive the Arrow rows Ray Data hands to the vLLM stage).
SAMPLING_EXTRA_KEYS = frozenset(
    {
        "stop",
        "stop_token_ids",
        "top_k",
        "min_p",
        "min_tokens",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "bad_words",
        "allowed_token_ids",
        "ignore_eos",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
    }
)


class SamplingParams(Strict):
    """How a role samples. `extra` passes more settings, unchanged, to vLLM's SamplingParams
    and into the OpenAI request body::

        sampling: {temperature: 0.7, max_tokens: 256, extra: {stop: ["###"], top_k: 50, repetition_penalty: 1.1}}
    """

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: PositiveInt = 512
    seed: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _known_extra_keys(cls, extra: dict) -> dict:
        unknown = sorted(set(extra) - SAMPLING_EXTRA_KEYS)
        if unknown:
            raise ValueError(
                f"unknown sampling setting(s) {', '.join(map(repr, unknown))}; "
                f"sampling.extra takes {', '.join(sorted(SAMPLING_EXTRA_KEYS))}"
            )
        return extra


class Parallelism(Strict):
    tensor_parallel_size: PositiveInt = 1
    replicas: PositiveInt = 1
    batch_size: PositiveInt = 32


class OpenAIEndpoint(Strict):
    """An OpenAI-compatible endpoint: OpenAI itself, `vllm serve`, Ray Serve LLM."""

    base_url: str | None = None  # None: the openai client's default (api.openai.com)
    # The *name* of the variable holding the key; the key itself never enters a config.
    api_key_env: str = "OPENAI_API_KEY"
    requests_per_minute: PositiveInt = 3_500
    tokens_per_minute: PositiveInt = 90_000
    max_concurrent_requests: PositiveInt = 64
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0.0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0.0)
    timeout_s: PositiveFloat = 60.0
    max_retries: int = Field(6, ge=0)
    budget_usd: PositiveFloat | None = None  # stop the stage cleanly once spent


class RoleConfig(Strict):
    """One LLM role (teacher, student, referee or generator) and how it is served."""

    backend: Literal["vllm", "hf", "openai"]
    model: str = Field(min_length=1)  # a local path, or a name the backend resolves
    sampling: SamplingParams = SamplingParams()
    parallelism: Parallelism = Parallelism()
    openai: OpenAIEndpoint | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: PositiveInt | None = None
    # Passed through to vllm.LLM / vLLMEngineProcessorConfig(engine_kwargs=...).
    engine_kwargs: dict = Field(default_factory=dict)
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra variables for the role's chat template (e.g. {enable_thinking: false}), given alike to vLLM's "
            "chat template stage, to Ray Serve LLM and OpenAI-compatible servers as the request's chat_template_kwargs, "
            "and to the tokenizer wherever the engine renders the template itself (training, NLL, the plan); "
            "default none, the template's own defaults."
        ),
    )
    reasoning: Literal["keep", "drop"] = Field(
        "drop",
        description=(
            "For a role whose answers are trained on (the teacher): keep trains the student on the thinking "
            "(the responses' reasoning column) rendered the way the student's chat template renders thinking; "
            "drop trains on the final answer alone. Default drop: Lion trains on answers, and its teacher does not think."
        ),
    )

    @model_validator(mode="after")
    def _endpoint_matches_backend(self) -> RoleConfig:
        if self.backend == "openai" and self.openai is None:
            self.openai = OpenAIEndpoint()
        if self.backend != "openai" and self.openai is not None:
            raise ValueError(
                f"'openai' settings given but backend is {self.backend!r}; set backend: openai or remove them"
            )
        if self.backend == "hf" and self.sampling.extra:
            raise ValueError(
                "sampling.extra goes to vLLM and OpenAI-compatible servers; the hf backend "
                f"does not take it (got {sorted(self.sampling.extra)}): serve the role with vllm or openai"
            )
        return self


class StudentRoleConfig(RoleConfig):
    """The student: a role, and the format it is trained, asked, evaluated and exported in."""

    prompt_format: Literal["chat", "alpaca"] | None = Field(
        None,
        description=(
            "chat: every instruction is a conversation in the student's own chat template, trained with the loss on "
            "its assistant turns and asked through chat completions; alpaca: Lion's `### Instruction:` layout "
            "(src/train.py's PROMPT_DICT), byte for byte. Default (null): chat when the student's tokenizer has a "
            "chat template, alpaca otherwise, fixed when the run starts."
        ),
    )


class ServingConfig(Strict):
    """How a job serves its `vllm` roles (lion_distill.llm.serving). `serving: per_stage` is
    shorthand for `serving: {mode: per_stage}`."""

    # shared: one long-lived engine per distinct model and engine settings for the whole
    # job (the student's per iteration); per_stage: every generate() call starts its own.
    mode: Literal["shared", "per_stage"] = "shared"
    # keep: frozen engines hold their GPUs while the student trains (the cluster has room
    # for both); release: every engine stops before training and starts again after.
    during_training: Literal["keep", "release"] = "keep"
    retries: int = Field(3, ge=0)  # re-sends of the requests an engine lost (it died) before they fail
    # How long an engine may take to start (its first start included: GPUs to free up, the
    # model to download and load) or to restart; past it the stage ends with a line naming the
    # role and what it waited for, and the run stays resumable. A per-stage engine's stage
    # (Ray Data's vLLM processor) gives it to each of its actor pools in turn: the chat-template
    # and tokenizer workers (seconds each), then the engines.
    ready_timeout_s: PositiveFloat = 900.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"mode": value} if isinstance(value, str) else value


class LionConfig(Strict):
    iterations: PositiveInt = 3
    new_instructions_per_iteration: PositiveInt = 6_000
    hard_easy_ratio: tuple[PositiveFloat, PositiveFloat] = (1.0, 1.0)
    tau: float = 1.0  # an instruction is hard when teacher_score - student_score >= tau
    rouge_l_threshold: float = Field(0.7, gt=0.0, le=1.0)
    # "above": F1 > threshold rejects, as Lion's code (`max(rouge_scores) > 0.7`);
    # "at_or_above": F1 >= threshold rejects, as the paper's text ("below 0.7" is novel).
    rouge_l_reject: Literal["above", "at_or_above"] = "above"
    # "rouge": rouge-score's own tokenizer (parity with the paper; sees no tokens in
    # non-Latin text). "unicode": words of every script, CJK character by character.
    rouge_l_tokenizer: Literal["rouge", "unicode"] = "rouge"
    # What ROUGE-L compares: the instruction alone (Lion's code) or instruction + input.
    rouge_l_field: Literal["instruction", "instruction_input"] = "instruction"
    # Where ROUGE-L's index of the cache pool is held: null, the driver (fastest on one machine); N,
    # in N Ray actors of 1 CPU; "auto", the driver below 250K instructions, else an actor per 1M
    # (lion_distill.lion.generation.rouge_l_shards: the index is about 1.1 GB at 1M, on the head node otherwise).
    rouge_l_shards: PositiveInt | Literal["auto"] | None = "auto"
    # Imitate the last iteration's new instructions too (the paper trains on 52K + 3 x 6K):
    # the final student comes from this stage, iter_<iterations>/imitation.
    final_imitation: bool = True
    # A teacher answer cut at max_tokens / max_model_len is left out of imitation (false),
    # or trained on without an end-of-sequence token (true). Counted either way.
    train_on_truncated: bool = False
    # An imitation with fewer trainable answers than this share of its instructions stops with
    # the cause (every answer cut at max_tokens, say) instead of training on (nearly) nothing.
    min_imitation_fraction: float = Field(0.5, ge=0.0, le=1.0)
    generation_rounds: PositiveInt = 5  # ask the generator again until quotas are met, at most this often
    # The generator's prompt: Lion's (prompt_hard.txt / prompt_easy.txt, the reply is the bare new
    # instruction) or "structured" (the seed's input shown, the reply "### Instruction: / ### Input:",
    # so a new instruction can come with an input).
    generator_prompt: Literal["lion", "structured"] = "lion"
    # Lion caps the generator's reply at 4 x the seed instruction's words (tokens) and drops
    # replies cut there: a reply of that many completion tokens or more is rejected ("truncated").
    # null: no cap beyond the generator's max_tokens.
    generator_tokens_per_seed_word: PositiveInt | None = 4
    # Constrain the referee's review / the generator's reply to their formats (vLLM guided
    # decoding). auto: a regex where the role is served by vLLM, nothing for hf or an API.
    # The generator is free by default: CANDIDATE_REGEX's one-line shape fits a random model
    # (the tiny demo sets it), not the instructions a real model should write.
    referee_constraint: Literal["auto", "regex", "json", "none"] = "auto"
    # The referee's rubric: Lion's own (explanation first, scores on the last two lines),
    # or FastChat's Vicuna prompt (scores on the first line) that the evaluation uses.
    referee_prompt: Literal["lion", "vicuna"] = "lion"
    generator_constraint: Literal["auto", "regex", "json", "none"] = "none"
    referee_retries: int = Field(2, ge=0)  # re-asks of an unparseable review before it is excluded
    student_retries: int = Field(2, ge=0)  # re-asks of a failed student request before its pair is excluded
    referee_logprobs: bool = False  # probability-weighted scores from the score tokens' logprobs
    seed: int = 42

    @property
    def hard_fraction(self) -> float:
        hard, easy = self.hard_easy_ratio
        return hard / (hard + easy)


class LoraConfig(Strict):
    """A LoRA student (lion_distill.train.lora, PEFT): the base stays frozen, only the adapter trains;
    the export is the merged model. Defaults are PEFT's own LoraConfig defaults. `target_modules`:
    module names (["q_proj", "v_proj"]), "all-linear", or None for PEFT's per-architecture choice."""

    r: PositiveInt = 8
    alpha: PositiveFloat = 8.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] | None = None
    save_adapter: bool = False  # also the adapter alone, <export>/lora_adapter (vLLM's enable_lora)
    # QLoRA: the frozen base quantised to 4-bit NF4 (bitsandbytes: CUDA, and its CPU backend too).
    load_in_4bit: bool = False


class TrainConfig(Strict):
    architecture: Literal["causal", "seq2seq"] = "causal"
    learning_rate: PositiveFloat = 2e-5
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    # cosine: warmup then cosine decay to 0; linear: warmup then linear decay to 0 (the HF
    # Trainer's default, what distilling step-by-step's reference code trains with)
    lr_schedule: Literal["cosine", "linear"] = "cosine"
    epochs: PositiveInt = 3
    # An exact optimizer-step budget (stops mid-epoch, as the HF Trainer's max_steps); None: `epochs`.
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 8  # per worker, per step before accumulation
    gradient_accumulation_steps: PositiveInt = 1
    max_grad_norm: PositiveFloat = 1.0
    max_length: PositiveInt = 512
    num_workers: int = Field(1, ge=0)  # 0: run the loop in the driver (fast tests)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    activation_checkpointing: bool = False
    rationale_weight: float = Field(1.0, ge=0.0)  # step-by-step's lambda
    checkpoint_every_steps: PositiveInt = 500
    # false: once a training's student is exported, its Ray Train checkpoints (weights and optimizer
    # state, two kept) are deleted; true keeps them.
    keep_checkpoints: bool = False
    max_failures: int = Field(2, ge=0)
    # How long the training workers may wait for their resources (GPUs busy, the autoscaler
    # adding nodes); past it the stage ends naming what they waited for (Ray Train alone
    # would wait on, retrying forever).
    start_timeout_s: PositiveFloat = 600.0
    seed: int = 42
    lora: LoraConfig | None = None  # None: full fine-tuning (the papers' way)


class DatasetSource(Strict):
    """A Hugging Face `datasets.load_dataset` source for the seed pool (lion_distill.data.hf)."""

    path: str  # a builder (json, parquet, csv, arrow) for local files, or a hub id (needs the hub)
    data_files: list[str] = Field(default_factory=list)  # the builder's files (globs allowed)
    split: str = "train"
    name: str | None = None  # a hub dataset's configuration


class DataConfig(Strict):
    # Instruction or conversation files (.json, .jsonl, .parquet) and `datasets` folders (save_to_disk).
    pool_files: list[str] = Field(default_factory=list)
    datasets: list[DatasetSource] = Field(default_factory=list)  # load_dataset sources, read after pool_files
    # For generic JSONL: which of a row's fields hold the instruction and its input.
    field_map: dict[Literal["instruction", "input"], str] = Field(default_factory=dict)
    max_instruction_chars: PositiveInt = 4_096
    sample_size: PositiveInt | None = None  # start from a seeded random sample of the pool (a trial run)

    @model_validator(mode="after")
    def _some_pool(self):
        if not self.pool_files and not self.datasets:
            raise ValueError(
                "give the seed pool: pool_files (files or `datasets` folders) and/or datasets (load_dataset sources)"
            )
        return self

    def sources(self) -> list[dict]:
        return [s.model_dump() for s in self.datasets]


class PlanConfig(Strict):
    """What `--plan` assumes where the run directory has observed nothing yet (every figure
    observed in an earlier stage of the same run replaces its prior)."""

    chars_per_token: PositiveFloat = 4.0  # an API role's prompt tokens, where no local tokenizer counts them
    # role -> a local tokenizer folder that counts an API role's tokens (e.g. the model a server serves)
    tokenizers: dict[str, str] = Field(default_factory=dict)
    completion_fraction: float = Field(1.0, gt=0.0, le=1.0)  # a reply's length as a fraction of max_tokens
    # A whole teacher answer's length: a teacher max_tokens below it cuts answers, which imitation leaves
    # out. 300: gpt-3.5-turbo's Vicuna-80 answers in data/vicuna80 average 1,206 characters.
    answer_tokens: PositiveInt = 300
    referee_failure_rate: float = Field(0.02, ge=0.0, le=1.0)  # pairs asked again, per retry round
    generator_acceptance_rate: float = Field(0.5, ge=0.0, le=1.0)  # replies kept as new instructions
    # role -> generated tokens/s per GPU, and the student's training tokens/s per GPU: GPU-hours
    tokens_per_s_per_gpu: dict[str, PositiveFloat] = Field(default_factory=dict)
    train_tokens_per_s_per_gpu: PositiveFloat | None = None


class TrackingConfig(Strict):
    """Experiment tracking (lion_distill.metrics.tracking). `uri`: MLflow's tracking URI (a server, or a
    folder: a file store), W&B's folder, TensorBoard's log folder; default: a folder in the run
    directory (mlruns/, wandb/, tensorboard/). Credentials come from the libraries' own variables
    (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN...), never from the config."""

    backend: Literal["mlflow", "wandb", "tensorboard", "none"] = "none"
    project: str = Field("lion-distill", min_length=1)  # MLflow experiment, W&B project
    run_name: str | None = None  # default: the job's name
    uri: str | None = None
