"""The `vllm` backend: Ray's own `ray.data.llm.build_processor` with a
`vLLMEngineProcessorConfig` (chat template, tokenize, vLLM engine, detokenize
stages), wrapped so its rows come out in the engine's response contract.

What Ray's processor does not give, derived here: `finish_reason` (it reports
token counts only: "length" when max_tokens were generated, else "stop"), a
failed row of its kind (from `__inference_error__`, the only trace Ray keeps of the exception;
error rows bypass postprocess, so normalising happens in a map after the processor), and logprobs
as the JSON top-k maps of lion_distill.llm.responses.
"""

from __future__ import annotations

import json
from functools import partial

import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig

from lion_distill.config.models import RoleConfig
from lion_distill.llm.cache import request_seed
from lion_distill.llm.engine_args import EngineSpec, engine_spec
from lion_distill.llm.parts import write_parts
from lion_distill.llm.reasoning import split_reasoning
from lion_distill.llm.responses import (
    DRAW_COL,
    PROMPT_COL,
    RESPONSE_FIELDS,
    decode_prompt,
    finish_reason_from_counts,
    inference_error_row,
)


def sampling_params(role: RoleConfig, structured_output: dict | None, logprobs: int | None, gpu: bool) -> dict:
    s = role.sampling
    params = {**s.extra, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
    if s.seed is not None and gpu:
        params["seed"] = s.seed
    if logprobs is not None:
        params["logprobs"] = logprobs
    if structured_output:
        # A JSON schema travels as a string: Arrow would widen a dict into a struct.
        params["structured_outputs"] = {k: json.dumps(v) if k == "json" else v for k, v in structured_output.items()}
    return params


def to_engine_request(row: dict, chat: bool, params: dict) -> dict:
    row = dict(row)
    prompt = decode_prompt(row.pop(PROMPT_COL))
    draw = row.pop(DRAW_COL, None)
    if draw is not None and "seed" in params:  # a seeded GPU engine: the draw's own seed
        params = {**params, "seed": request_seed(params["seed"], draw)}
    if isinstance(prompt, list) != chat:
        raise ValueError(
            f"row id={row.get('id')!r}: to_prompt must return the same kind (messages or string) "
            "for every row of a vllm stage"
        )
    return {**row, ("messages" if chat else "prompt"): prompt, "sampling_params": params}


def logprob_steps(steps) -> list[dict[str, float]] | None:
    """Ray's [{token_id: {logprob, rank, decoded_token}}] -> [{token_text: logprob}]."""
    if steps is None:
        return None
    return [{v["decoded_token"]: v["logprob"] for v in step.values() if v is not None} for step in steps]


def to_response(
    row: dict,
    *,
    keep: list[str],
    role_name: str,
    max_tokens: int,
    with_logprobs: bool,
    max_model_len: int | None = None,
) -> dict:
    out = {k: row.get(k) for k in keep}
    error = row.get("__inference_error__") or ""
    out["role"] = role_name
    if error:
        failure = inference_error_row(str(error))
        out.update({k: failure[k] for k in RESPONSE_FIELDS})
    else:
        done, prompt = int(row.get("num_generated_tokens") or 0), int(row.get("num_input_tokens") or 0)
        text, reasoning = split_reasoning(row.get("generated_text"))  # no reasoning parser in this stage
        out.update(
            text=text,
            reasoning=reasoning,
            finish_reason=finish_reason_from_counts(done, max_tokens, prompt, max_model_len),
            prompt_tokens=prompt,
            completion_tokens=done,
            error_kind=None,
            error=None,
        )
    if with_logprobs:
        steps = None if error else logprob_steps(row.get("logprobs"))
        out["logprobs"] = None if steps is None else json.dumps(steps, ensure_ascii=False)
    return out


def processor_config(role: RoleConfig, spec: EngineSpec, *, chat: bool) -> vLLMEngineProcessorConfig:
    """Ray Data's vLLM stage for one role: `replicas` engines, each in its placement."""
    # Without GPUs vLLM's Ray metrics would import ray.serve (docs/environment.md).
    extra = {} if spec.gpu else {"log_engine_metrics": False}
    return vLLMEngineProcessorConfig(
        model_source=spec.model,
        engine_kwargs=spec.engine_kwargs,
        batch_size=role.parallelism.batch_size,
        concurrency=spec.replicas,
        chat_template_stage={"enabled": chat, "chat_template_kwargs": role.chat_template_kwargs or None},
        tokenize_stage=True,
        detokenize_stage=True,
        should_continue_on_error=True,
        placement_group_config=spec.placement(),
        **extra,
    )


def run_vllm(
    role: RoleConfig,
    prompted: ray.data.Dataset,
    *,
    chat: bool,
    keep: list[str],
    role_name: str,
    structured_output: dict | None,
    logprobs: int | None,
    start_timeout_s: float,
    draw: str | None = None,
    parts=None,
) -> tuple[ray.data.MaterializedDataset, float]:
    """-> (the stage's answers in the response contract, GPUs held). The engines get
    `start_timeout_s` to be placed and loaded (Ray Data waits for its actor pool's first
    actors that long, each of the stage's actor pools in turn: the chat-template and tokenizer
    workers, then the engines); past it the stage ends with lion_distill.llm.fit.WaitedTooLong."""
    from lion_distill.llm.engine_start import ResourceWatch
    from lion_distill.llm.fit import WaitedTooLong, cluster_gpus, engines_on_gpus

    spec = engine_spec(role, engines_on_gpus(), draw)
    config = processor_config(role, spec, chat=chat)
    params = sampling_params(role, structured_output, logprobs, spec.gpu)
    processor = build_processor(config, preprocess=partial(to_engine_request, chat=chat, params=params))
    out = processor(prompted).map(
        partial(
            to_response,
            keep=keep,
            role_name=role_name,
            max_tokens=role.sampling.max_tokens,
            with_logprobs=logprobs is not None,
            max_model_len=spec.engine_kwargs.get("max_model_len"),
        )
    )
    out = write_parts(out, parts)  # each block kept as it finishes (lion_distill.llm.parts)
    out.context.wait_for_min_actors_s = start_timeout_s
    with ResourceWatch(for_s=3 * start_timeout_s + 120) as watch:  # three pools' deadlines
        try:
            done = out.materialize()
        except ray.exceptions.GetTimeoutError as e:
            if "starting actors" not in str(e):
                raise
            what = "its engines' resources" if watch.waited() else "its engines to start"
            raise WaitedTooLong(role_name, spec.ask(), start_timeout_s, cluster_gpus().describe(), what=what) from None
    return done, float(spec.gpus)
