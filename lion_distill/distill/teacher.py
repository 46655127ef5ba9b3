"""What a white-box mode needs of the teacher, checked and set before a job starts: an engine that
returns `top_k` logprobs, and the student's vocabulary.

vLLM refuses a request for more logprobs than its engine's `max_logprobs` (default 20; docs/
environment.md): with a larger `distill.top_k`, every local vLLM role of the teacher's model is
given `max_logprobs: top_k`, so the teacher still shares one engine with a referee or generator of
the same model (EngineSpec.key, lion_distill.llm.engine_args) instead of starting a second one. A
scoring pass's own per-stage engine gets the same room from engine_spec(role, gpu, logprobs=top_k).
"""

from __future__ import annotations

from lion_distill.llm.engine_args import VLLM_MAX_LOGPROBS


def needs_signal(cfg) -> bool:
    """Does the job score the teacher's answers: logit distillation, or Lion's judge-free discriminator?"""
    lion = getattr(cfg, "lion", None)
    return cfg.distill.mode == "logit_kd" or (lion is not None and lion.discriminator == "divergence")


def with_teacher_logprobs(cfg):
    """The config with max_logprobs raised to distill.top_k on every vLLM role that serves the
    teacher's model and sets none itself; the config as it is where nothing needs raising."""
    k = cfg.distill.top_k
    if not needs_signal(cfg) or k <= VLLM_MAX_LOGPROBS or cfg.teacher.backend != "vllm":
        return cfg

    def raised(role):
        if role is None or role.backend != "vllm" or role.model != cfg.teacher.model:
            return role
        if "max_logprobs" in role.engine_kwargs:  # the user's own (preflight refuses one below top_k)
            return role
        return role.model_copy(update={"engine_kwargs": {**role.engine_kwargs, "max_logprobs": k}})

    update = {name: raised(getattr(cfg, name)) for name in type(cfg).model_fields if name in cfg.ROLES}
    if getattr(cfg, "eval", None) is not None:
        update["eval"] = cfg.eval.model_copy(update={"judge": raised(cfg.eval.judge)})
    return cfg.model_copy(update=update)


def vocabulary_problem(teacher_tokenizer: str, student: str) -> str | None:
    """One line when the teacher's tokenizer and the student's have different vocabularies (the
    token -> id maps): top-k ids of one mean nothing to the other."""
    from lion_distill.train.batches import load_tokenizer

    teacher_vocab, student_vocab = load_tokenizer(teacher_tokenizer).get_vocab(), load_tokenizer(student).get_vocab()
    if teacher_vocab == student_vocab:
        return None
    differ = sum(1 for token, i in teacher_vocab.items() if student_vocab.get(token) != i)
    return (
        f"the teacher's vocabulary ({teacher_tokenizer}: {len(teacher_vocab):,} tokens) is not the student's "
        f"({student}: {len(student_vocab):,} tokens; {differ:,} of the teacher's tokens differ): logits cannot be "
        "distilled across tokenizers here (cross-tokenizer methods are a later step); use distill.mode: sft"
    )


def signal_problems(cfg, env) -> tuple[list[str], list[str]]:
    """What stops a white-box mode: (problems of the config itself, problems only a run meets: a
    server that returns no prompt logprobs, or fewer than top_k). One line each, naming the field."""
    if not needs_signal(cfg):
        return [], []
    import os

    what = "distill.mode: logit_kd" if cfg.distill.mode == "logit_kd" else "lion.discriminator: divergence"
    teacher, k, inputs, run = cfg.teacher, cfg.distill.top_k, [], []
    if cfg.distill.mode == "logit_kd" and teacher.reasoning == "keep":
        # The signal covers the answer's tokens; the trained turn would be the thinking and the answer.
        inputs.append(
            "teacher.reasoning: keep trains the teacher's thinking, which distill.mode logit_kd has no "
            "teacher signal for: set teacher.reasoning: drop, or distill.mode: sft"
        )
    if teacher.backend == "openai":
        host = (teacher.openai.base_url or "https://api.openai.com").split("//", 1)[-1].split("/", 1)[0]
        if host.split(":")[0] == "api.openai.com":
            return [
                f"teacher.openai.base_url: {what} needs the teacher's prompt logprobs, which OpenAI's API does "
                "not return: serve an open-weight teacher (backend vllm or hf, or a vLLM server)"
            ], []
        if not cfg.distill.teacher_tokenizer:
            return [
                f"distill.teacher_tokenizer: {what} with a teacher behind an API needs a local folder with its "
                "tokenizer (to render its prompts and check its vocabulary against the student's)"
            ], []
        run += probe_problems(teacher, k, env)
    limit = teacher.engine_kwargs.get("max_logprobs")
    if teacher.backend == "vllm" and limit is not None and limit < k:
        inputs.append(
            f"teacher.engine_kwargs.max_logprobs: {limit} is below distill.top_k {k}: the engine would "
            f"refuse every request; raise it or lower distill.top_k"
        )
    tokenizer = cfg.distill.teacher_tokenizer or teacher.model
    if os.path.isdir(tokenizer) and os.path.isdir(cfg.student.model):
        problem = vocabulary_problem(tokenizer, cfg.student.model)
        if problem:
            inputs.append(f"{what}: {problem}")
    return inputs, run


def probe_problems(teacher, k: int, env) -> list[str]:
    """One scoring request to the teacher's server (two prompt tokens, one generated): does it
    return `k` prompt logprobs? A refusal (k above its max_logprobs) is its own message."""
    import openai

    from lion_distill.llm.openai_client import resolve_api_key

    url = teacher.openai.base_url
    try:
        client = openai.OpenAI(api_key=resolve_api_key(teacher, env).reveal(), base_url=url, max_retries=0, timeout=30)
        body = {"model": teacher.model, "prompt": [0, 1], "max_tokens": 1, "prompt_logprobs": k}
        reply = client.post("/completions", body=body, cast_to=dict)
    except ValueError:
        return []  # no key: role_checks says so
    except openai.APIStatusError as exc:
        message = " ".join(str(exc.message).split())[:300]
        return [f"teacher.openai.base_url: {url} refused a request for {k} prompt logprobs (distill.top_k): {message}"]
    except openai.APIError as exc:
        return [f"teacher.openai.base_url: {url} did not answer a scoring request: {type(exc).__name__}: {exc}"]
    logprobs = ((reply.get("choices") or [{}])[0]).get("prompt_logprobs")
    if not logprobs or logprobs[-1] is None:
        return [
            f"teacher.openai.base_url: {url} returned no prompt logprobs: distillation from logits needs an "
            "OpenAI-compatible vLLM server (its `prompt_logprobs`)"
        ]
    return []
