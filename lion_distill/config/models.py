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

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of every request the role gets.")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling: the share of probability mass sampled from."
    )
    max_tokens: PositiveInt = Field(
        512, description="The most completion tokens a reply may have; a reply cut there has finish_reason `length`."
    )
    seed: int | None = Field(
        None,
        description="The sampling seed sent with each request (null: none; Lion's generator derives one per draw).",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="More sampling settings passed unchanged to vLLM's SamplingParams and the OpenAI request body "
        "(stop, top_k, min_p, repetition_penalty, ...; any other key is an error naming it; not for `hf`).",
    )

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
    """How many GPUs and engines serve a local role."""

    tensor_parallel_size: PositiveInt = Field(
        1, description="GPUs one engine spans (vLLM tensor parallelism), all on one node."
    )
    replicas: PositiveInt = Field(1, description="Engines (or `hf` actors) that serve the role side by side.")
    batch_size: PositiveInt = Field(32, description="Rows per Ray Data batch handed to an engine or API actor.")


class OpenAIEndpoint(Strict):
    """An OpenAI-compatible endpoint: OpenAI itself, `vllm serve`, Ray Serve LLM."""

    base_url: str | None = Field(
        None, description="The endpoint's URL, e.g. http://host:8000/v1 (null: the openai client's api.openai.com)."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="The name of the environment variable that holds the key; the key itself never enters a config.",
    )
    requests_per_minute: PositiveInt = Field(
        3_500, description="The role's request rate across the cluster (a token bucket leased to every API actor)."
    )
    tokens_per_minute: PositiveInt = Field(90_000, description="The role's token rate across the cluster.")
    max_concurrent_requests: PositiveInt = Field(64, description="Requests in flight at once, per API actor.")
    price_per_1k_prompt_tokens: float = Field(
        0.0, ge=0.0, description="Dollars per 1,000 prompt tokens, for the ledger, the budget and `--plan`."
    )
    price_per_1k_completion_tokens: float = Field(
        0.0, ge=0.0, description="Dollars per 1,000 completion tokens, for the ledger, the budget and `--plan`."
    )
    timeout_s: PositiveFloat = Field(60.0, description="Seconds one request may take before it is retried.")
    max_retries: int = Field(
        6, ge=0, description="Retries of a failed request (exponential backoff with jitter, `Retry-After` honoured)."
    )
    budget_usd: PositiveFloat | None = Field(
        None,
        description="The run's budget for this role, across stages, iterations and resumed jobs: the stage stops "
        "cleanly once it is spent (null: no limit).",
    )
    max_retry_after_s: PositiveFloat = Field(
        60.0,
        description="The longest pause a server's Retry-After (or a rate-limit reset with nothing left) imposes "
        "on every actor of the cluster, in seconds; a longer one is cut to this. Default 60: the openai "
        "client's own cap on the Retry-After it honours.",
    )


class RoleConfig(Strict):
    """One LLM role (teacher, student, referee or generator) and how it is served."""

    backend: Literal["vllm", "hf", "openai"] = Field(
        description="How the role is served: vLLM engines, transformers `generate` actors, or an OpenAI-compatible API."
    )
    model: str = Field(
        min_length=1,
        description="A local model folder, an object-store URI, a Hugging Face hub name (downloaded on each node), "
        "`tiny://...` or `smol://...`; an API role's model name.",
    )
    sampling: SamplingParams = Field(SamplingParams(), description="How the role samples.")
    parallelism: Parallelism = Field(Parallelism(), description="GPUs and engines of a local role.")
    openai: OpenAIEndpoint | None = Field(
        None, description="The endpoint of an `openai` role (defaults apply when the backend is openai)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights' precision (auto: bfloat16 on a GPU, float32 on a CPU)."
    )
    max_model_len: PositiveInt | None = Field(
        None, description="The engine's context length in tokens (null: the model's own)."
    )
    engine_kwargs: dict = Field(
        default_factory=dict,
        description="More vLLM engine arguments, passed to the engine unchanged (e.g. gpu_memory_utilization).",
    )
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

    mode: Literal["shared", "per_stage"] = Field(
        "shared",
        description="shared: one long-lived Ray Serve LLM engine per distinct model and engine settings for the "
        "whole job (the student's per iteration); per_stage: every vLLM stage starts its own.",
    )
    during_training: Literal["keep", "release"] = Field(
        "keep",
        description="keep: frozen engines hold their GPUs while the student trains; release: every engine stops "
        "before training and starts again on next use.",
    )
    retries: int = Field(3, ge=0, description="Re-sends of the requests a dead engine lost, before they fail.")
    # A per-stage engine's stage (Ray Data's vLLM processor) gives it to each of its actor pools in
    # turn: the chat-template and tokenizer workers (seconds each), then the engines.
    ready_timeout_s: PositiveFloat = Field(
        900.0,
        description="Seconds an engine may take to start (first start included: GPUs to free up, the model to "
        "download and load) or restart; past it the stage ends naming the role, and the run stays resumable.",
    )
    call_timeout_s: PositiveFloat = Field(
        120.0,
        description="How long one call to the job's own state actor (lion_distill.runner) may take, in "
        "seconds, before the job stops naming it instead of waiting on (the actor's node gone, say). "
        "Default 120: the call reads and writes one small file.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"mode": value} if isinstance(value, str) else value


class LionConfig(Strict):
    """Lion's loop (arXiv 2305.12870); defaults are the paper's and its code's (tests/reference/lion)."""

    iterations: PositiveInt = Field(
        3, description="Lion iterations (imitation, discrimination, generation); the paper's 3."
    )
    new_instructions_per_iteration: PositiveInt = Field(
        6_000, description="New instructions the generator must add each iteration; the paper's 6,000."
    )
    hard_easy_ratio: tuple[PositiveFloat, PositiveFloat] = Field(
        (1.0, 1.0), description="Hard to easy seeds sampled for generation; the paper's 1:1."
    )
    tau: float = Field(
        1.0, description="An instruction is hard when teacher_score - student_score >= tau; the paper's 1.0."
    )
    rouge_l_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="A candidate whose ROUGE-L F1 against the pool passes this is not novel; 0.7 as Lion.",
    )
    rouge_l_reject: Literal["above", "at_or_above"] = Field(
        "above",
        description="above: F1 > threshold rejects, as Lion's code (`max(rouge_scores) > 0.7`); at_or_above: "
        'F1 >= threshold rejects, as the paper\'s text ("below 0.7" is novel).',
    )
    rouge_l_tokenizer: Literal["rouge", "unicode"] = Field(
        "rouge",
        description="rouge: rouge-score's own tokenizer, as Lion (it sees no tokens in non-Latin text); unicode: "
        "words of every script, CJK character by character.",
    )
    rouge_l_field: Literal["instruction", "instruction_input"] = Field(
        "instruction", description="What ROUGE-L compares: the instruction alone (Lion's code) or instruction + input."
    )
    # lion_distill.lion.generation.rouge_l_shards: the index is about 1.1 GB at 1M instructions,
    # on the head node otherwise.
    rouge_l_shards: PositiveInt | Literal["auto"] | None = Field(
        "auto",
        description="Where ROUGE-L's index of the cache pool lives: null, the driver; N, N Ray actors of 1 CPU; "
        "auto, the driver below 250K instructions, else an actor per 1M (the decisions are the same either way).",
    )
    final_imitation: bool = Field(
        True,
        description="Imitate the last iteration's new instructions too (the paper trains on 52K + 3 x 6K): the "
        "final student comes from iter_<iterations>/imitation.",
    )
    train_on_truncated: bool = Field(
        False,
        description="A teacher answer cut at max_tokens or max_model_len is left out of imitation and counted "
        "(false, as Lion), or trained on without an end-of-sequence token (true).",
    )
    min_imitation_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="An imitation with fewer trainable answers than this share of its instructions stops with the "
        "cause instead of training on (nearly) nothing.",
    )
    generation_rounds: PositiveInt = Field(
        50,
        description="A safety cap on the generator's rounds: each round asks again for what the quotas still lack, "
        "as Lion's loop does until it has them all (src/generate_hard_instruction.py `while len(...) < "
        "num_instructions_to_generate`); the metrics (lion/generation_round_cap) and the report say when it binds.",
    )
    quota_rebalance: bool = Field(
        False,
        description="false: each kind (hard, easy) is seeded only by its own instructions until it has its quota, "
        "as Lion's two scripts do; true: a kind with no instructions, or still short after a round, moves its "
        "quota to the other kind, so an iteration reaches its N new instructions where it can.",
    )
    candidate_filter: Literal["clean", "lion"] = Field(
        "clean",
        description="How a generator reply becomes a candidate: clean (the project's: a heading, quotes, list "
        "markers, an appended answer are read away, then Lion's filters apply, non-Latin instructions kept); "
        "lion (Lion's post_process_gpt3_response: the reply whole is kept or dropped, src/generate_hard_instruction.py).",
    )
    generator_prompt: Literal["lion", "structured"] = Field(
        "lion",
        description="lion: Lion's prompt_hard.txt / prompt_easy.txt, the reply the bare new instruction; structured: "
        "the seed's input shown and the reply `### Instruction:` / `### Input:`, so a new instruction can have an input.",
    )
    generator_tokens_per_seed_word: PositiveInt | None = Field(
        4,
        description="Lion's generator max_tokens, this many tokens per word of the seed as the prompt shows it "
        "(its instruction, and its input where shown; src/generate_hard_instruction.py `max_tokens = "
        "len(...split()) * 4`): each round asks at its largest seed's cap and a reply of its own seed's cap or more "
        'is rejected as cut ("truncated"); null: the generator\'s sampling.max_tokens, no per-seed cap.',
    )
    referee_constraint: Literal["auto", "regex", "json", "none"] = Field(
        "auto",
        description="Holds the referee's review to its rubric's layout with vLLM guided decoding: auto, a regex "
        "where vLLM serves the referee and nothing for hf or an API.",
    )
    referee_prompt: Literal["lion", "vicuna"] = Field(
        "lion",
        description="The referee's rubric: Lion's own (src/chatgpt_referee.py: explanation first, scores on the last "
        "two lines) or FastChat's Vicuna prompt (scores on the first line).",
    )
    # CANDIDATE_REGEX's one-line shape fits a random model (the tiny demo sets it), not the
    # instructions a real model should write.
    generator_constraint: Literal["auto", "regex", "json", "none"] = Field(
        "none", description="Holds the generator's reply to one line with guided decoding; none by default, as Lion."
    )
    referee_retries: int | None = Field(
        2,
        ge=0,
        description="Re-asks of an unparseable review before it is excluded; null: again until a round reads no "
        "more reviews than the one before, as Lion's recheck loop (src/chatgpt_referee.py `while "
        "len(new_question_idx_list) < len(old_question_idx_list)`).",
    )
    referee_retry_temperature: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description="The referee's temperature when it is asked again; null: its own, raised to at least 0.5 so that "
        "a new draw can differ; 0.2 is Lion's (its recheck sends the same request, src/chatgpt_referee.py).",
    )
    show_input: bool = Field(
        True,
        description="true: every role (teacher, student, referee, generator) sees an instruction's Alpaca input; "
        "false: the instruction alone, as Lion's scripts ask (src/chatgpt_inference.py, lion_inference.py, "
        "chatgpt_referee.py and generate_hard_instruction.py read `instruction` only); rows and ids keep it.",
    )
    discrimination_teacher: Literal["reuse", "ask_again"] = Field(
        "reuse",
        description="reuse: discrimination judges the teacher answers already paid for (imitation's, earlier "
        "iterations'); ask_again: the teacher answers the whole cache pool anew each iteration, as Lion's step "
        "2.1 (README: chatgpt_inference.py on the Cache Pool).",
    )
    student_retries: int = Field(
        2, ge=0, description="Re-asks of a failed student request before its pair is excluded and counted."
    )
    referee_logprobs: bool = Field(
        False,
        description="Score by the probability-weighted score tokens (their logprobs) instead of the sampled ones.",
    )
    discriminator: Literal["referee", "divergence"] = Field(
        "referee",
        description="How discrimination finds hard instructions: referee, the paper's LLM judge of teacher vs "
        "student answers; divergence, judge-free, the student's mean per-token divergence from the teacher on the "
        "teacher's answer (distill.divergence over the teacher's top-k; no referee call, no position bias; needs an "
        "open-weight teacher of the student's vocabulary).",
    )
    divergence_tau: float | None = Field(
        None,
        ge=0.0,
        description="With discriminator: divergence, an instruction is hard when its divergence (nats a token) is at "
        "least this; null: the `divergence_hard_share` most divergent instructions are hard instead.",
    )
    divergence_hard_share: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="With discriminator: divergence and no divergence_tau, the share of instructions, the most "
        "divergent, that are hard (0.5: as many hard as easy, the generator's default 1:1 hard:easy ratio).",
    )
    seed: int = Field(
        42, description="Seeds the pool's sample (data.sample_size) and each iteration's draw of hard and easy seeds."
    )

    @property
    def hard_fraction(self) -> float:
        hard, easy = self.hard_easy_ratio
        return hard / (hard + easy)


class DistillConfig(Strict):
    """What the student learns from the teacher, for every job that trains one (Lion's imitation, the
    distill job): the answer text (`sft`, the papers' way) or, with an open-weight teacher of the
    student's vocabulary, the teacher's next-token distribution too (`logit_kd`, lion_distill.train.kd_loss).
    docs/distillation-modes.md says which to choose, from benchmarks/RESULTS.md."""

    mode: Literal["sft", "logit_kd"] = Field(
        "sft",
        description="sft: cross-entropy on the teacher's answer tokens (Lion's and distilling step-by-step's "
        "training, the default); logit_kd: the divergence from the teacher's top-k next-token log-probabilities "
        "at each answer token (word-level KD, Kim & Rush 2016; GKD's supervised KD, arXiv 2306.13649).",
    )
    top_k: PositiveInt = Field(
        20,
        description="How many of the teacher's most likely tokens are kept at each answer position; 20 is vLLM's "
        "default max_logprobs (the most a vLLM server returns), and the teacher's engine is started with "
        "max_logprobs raised to top_k when it is larger.",
    )
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl",
        description="forward_kl: KL(teacher || student), the classic KD (Hinton et al. 2015); reverse_kl: "
        "KL(student || teacher) (MiniLLM, arXiv 2306.08543); jsd: GKD's generalized Jensen-Shannon divergence "
        "with `beta`.",
    )
    beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="GKD's generalized JSD interpolation (divergence: jsd): 0 is the forward KL, 1 the reverse KL, "
        "0.5 the symmetric JSD (TRL's GKDConfig default, as GKD's paper).",
    )
    temperature: PositiveFloat = Field(
        1.0,
        description="Softmax temperature of both distributions in the loss; 1 (TRL's DistillationConfig default) "
        "uses the teacher's log-probabilities as the engine returns them.",
    )
    tail: bool = Field(
        True,
        description="Add a bucket for the probability mass outside the teacher's top k, so that a small k does not "
        "make the loss vanish (TRL's `loss_add_tail`, default on); off renormalises both distributions over the k.",
    )
    kd_coef: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="loss = kd_coef x divergence + (1 - kd_coef) x cross-entropy on the teacher's tokens; 1, the "
        "divergence alone, as GKD and TRL's distillation trainers train.",
    )
    teacher_tokenizer: str | None = Field(
        None,
        description="A local folder with the teacher's tokenizer, for a teacher served by an API: it renders the "
        "prompts the teacher scores and is checked against the student's vocabulary; default the teacher's model "
        "folder.",
    )


class LoraConfig(Strict):
    """A LoRA student (lion_distill.train.lora, PEFT): the base stays frozen, only the adapter trains;
    the export is the merged model. Defaults are PEFT's own LoraConfig defaults."""

    r: PositiveInt = Field(8, description="The adapter's rank; PEFT's default 8.")
    alpha: PositiveFloat = Field(8.0, description="LoRA's scaling alpha (the update is B·A·alpha/r); PEFT's default 8.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input; PEFT's default 0.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names to adapt ([q_proj, v_proj]), all-linear, or null for PEFT's choice per architecture.",
    )
    save_adapter: bool = Field(
        False,
        description="Also write the adapter alone, <export>/lora_adapter (PEFT's format, for vLLM's enable_lora).",
    )
    load_in_4bit: bool = Field(
        False,
        description="QLoRA (Dettmers et al., 2023): the frozen base quantised to 4-bit NF4 by bitsandbytes "
        "(CUDA, and its CPU backend).",
    )


class TrainConfig(Strict):
    """How the student is fine-tuned (Ray Train + FSDP2). Lion's defaults are Alpaca's recipe, which
    Lion's src/train.py reuses; step-by-step's job overrides them with its reference's."""

    architecture: Literal["causal", "seq2seq"] = Field(
        "causal", description="causal: a decoder LLM trained on its answers (Lion); seq2seq: a T5 (step-by-step)."
    )
    learning_rate: PositiveFloat = Field(2e-5, description="AdamW's peak learning rate; Lion's (Alpaca's) 2e-5.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's weight decay; Lion's 0.")
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="The share of optimizer steps spent warming up; Lion's 0.03."
    )
    lr_schedule: Literal["cosine", "linear"] = Field(
        "cosine",
        description="cosine (Lion's): warmup then cosine decay to 0; linear: warmup then linear decay to 0 (the HF "
        "Trainer's default, what step-by-step's reference trains with).",
    )
    epochs: PositiveInt = Field(3, description="Passes over the training rows; Lion's 3.")
    max_steps: PositiveInt | None = Field(
        None,
        description="An exact optimizer-step budget that stops mid-epoch if need be, as the HF Trainer's max_steps "
        "(null: `epochs` whole epochs).",
    )
    batch_size: PositiveInt = Field(8, description="Rows per worker per micro-batch, before accumulation.")
    gradient_accumulation_steps: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    max_grad_norm: PositiveFloat = Field(1.0, description="Gradient clipping norm; the HF Trainer's 1.0.")
    max_length: PositiveInt = Field(
        512,
        description="Tokens of prompt and answer kept per row; a row whose prompt is longer is dropped and counted.",
    )
    num_workers: int = Field(
        1,
        ge=0,
        description="Ray Train workers (FSDP2 ranks); 0 trains in the job's own process (Ray Train's local mode).",
    )
    gpus_per_worker: Literal[0, 1] = Field(
        0,
        description="GPUs each training worker holds: 0 trains on CPU (gloo), 1 gives each FSDP rank its own GPU "
        "(NCCL); a rank drives one device, so a fraction would put two NCCL ranks on one GPU and more than 1 would "
        "leave GPUs idle.",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each block's activations in backward to save memory."
    )
    rationale_weight: float = Field(
        1.0, ge=0.0, description="Step-by-step's lambda: loss = label_loss + rationale_weight * rationale_loss."
    )
    label_weight: float = Field(
        1.0,
        ge=0.0,
        description="Step-by-step's multi-task loss is label_weight x label loss + rationale_weight x rationale loss; "
        "0.5 and 0.5 are the reference's alpha 0.5 (model_utils.py: alpha x label + (1 - alpha) x rationale). "
        "A label-only (standard) training is never weighted.",
    )
    max_target_length: PositiveInt | None = Field(
        None,
        description="A seq2seq target (label, rationale) is cut at this many tokens; null: at max_length. 256 is "
        "the reference's (run.py: tokenizer(..., max_length=256, truncation=True)).",
    )
    log_every_steps: int = Field(
        10,
        ge=0,
        description="Optimizer steps between training lines in the job's log (step, loss, tokens/s, ETA); 0: none.",
    )
    checkpoint_every_steps: PositiveInt = Field(
        500, description="Optimizer steps between Ray Train checkpoints (one is also written at every epoch's end)."
    )
    keep_checkpoints: bool = Field(
        False,
        description="Keep a training's Ray Train checkpoints (weights and optimizer state, about 84 GB for a 7B) "
        "once its student is exported (false: delete them).",
    )
    max_failures: int = Field(
        2, ge=0, description="Worker failures a training survives, resuming from its last checkpoint."
    )
    # Ray Train alone would wait on, retrying forever.
    start_timeout_s: PositiveFloat = Field(
        600.0,
        description="Seconds the training workers may wait for their resources (GPUs busy, the autoscaler adding "
        "nodes); past it the stage ends naming what they waited for.",
    )
    seed: int = Field(42, description="Seeds torch (dropout, any newly initialised weights) and each epoch's shuffle.")
    lora: LoraConfig | None = Field(
        None, description="A LoRA or QLoRA student; null: full fine-tuning (the papers' way)."
    )

    @field_validator("gpus_per_worker", mode="before")
    @classmethod
    def _one_device_a_rank(cls, value):
        if value not in (0, 1) or isinstance(value, bool):
            raise ValueError(
                f"{value!r}: a training worker is one FSDP rank on one device: 0 (CPU) or 1 (one GPU); "
                "below 1 two NCCL ranks would share a GPU, above 1 the extra GPUs would sit idle "
                "(more GPUs: more num_workers)"
            )
        return int(value)


class DatasetSource(Strict):
    """A Hugging Face `datasets.load_dataset` source for the seed pool (lion_distill.data.hf)."""

    path: str = Field(
        description="A builder (json, parquet, csv, arrow) for local files, or a hub dataset id (needs the hub)."
    )
    data_files: list[str] = Field(default_factory=list, description="The builder's files (globs allowed).")
    split: str = Field("train", description="The split to read.")
    name: str | None = Field(None, description="A hub dataset's configuration name.")


class DataConfig(Strict):
    """Lion's seed pool: instructions or conversations (docs/data-formats.md)."""

    pool_files: list[str] = Field(
        default_factory=list,
        description="Instruction or conversation files (.json, .jsonl, .parquet) and `datasets` folders (save_to_disk).",
    )
    datasets: list[DatasetSource] = Field(
        default_factory=list, description="Hugging Face load_dataset sources, read after pool_files."
    )
    field_map: dict[Literal["instruction", "input"], str] = Field(
        default_factory=dict,
        description="For generic JSONL: which of a row's fields hold the instruction and its input.",
    )
    max_instruction_chars: PositiveInt = Field(
        4_096, description="A longer instruction is rejected and counted when the pool loads."
    )
    sample_size: PositiveInt | None = Field(
        None, description="Start from a seeded random sample of this many pool rows (a trial run); null: all."
    )

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

    chars_per_token: PositiveFloat = Field(
        4.0, description="Characters per token where no local tokenizer counts a role's prompt tokens."
    )
    tokenizers: dict[str, str] = Field(
        default_factory=dict,
        description="Role -> a local tokenizer folder that counts an API role's tokens (e.g. the model a server serves).",
    )
    completion_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="A reply's length as a fraction of its role's max_tokens."
    )
    answer_tokens: PositiveInt = Field(
        300,
        description="A whole teacher answer's length, below which a teacher's max_tokens is warned of: "
        "gpt-3.5-turbo's Vicuna-80 answers in data/vicuna80 average 1,206 characters.",
    )
    referee_failure_rate: float = Field(
        0.02, ge=0.0, le=1.0, description="Share of reviews asked again, per retry round."
    )
    generator_acceptance_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of generator replies kept as new instructions."
    )
    tokens_per_s_per_gpu: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Role -> generated tokens/s per GPU, for GPU-hours."
    )
    train_tokens_per_s_per_gpu: PositiveFloat | None = Field(
        None, description="The student's training tokens/s per GPU, for GPU-hours."
    )


class TrackingConfig(Strict):
    """Experiment tracking (lion_distill.metrics.tracking). Credentials come from the libraries' own
    variables (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN...), never from the config."""

    backend: Literal["mlflow", "wandb", "tensorboard", "none"] = Field(
        "none", description="The experiment tracker every stage's figures, the config and the reports go to."
    )
    project: str = Field("lion-distill", min_length=1, description="MLflow's experiment, W&B's project.")
    run_name: str | None = Field(None, description="The tracking run's name (null: the job's `name`).")
    uri: str | None = Field(
        None,
        description="MLflow's tracking URI (a server, or a folder), W&B's folder, TensorBoard's log folder (null: "
        "run_dir/mlruns, run_dir/wandb, run_dir/tensorboard).",
    )
