"""Where a scoring pass runs (lion_distill.llm.scoring), one per backend, each over Arrow batches of
(id, prompt_ids, answer_ids) to batches of the signal columns (lion_distill.llm.token_signal) with
`_error` (None, or why the row has no signal):

    hf        HFScorer: a transformers forward of prompt + answer, log-softmax, top k
    vllm      per stage: Ray Data's vLLM processor on token-id prompts with `prompt_logprobs`;
              in a job's engines block: the role's Ray Serve LLM engine (JobLLMServer.score_dict)
    openai    OpenAIScorer: POST /completions with the ids as the prompt and vLLM's `prompt_logprobs`
              (an OpenAI-compatible vLLM server; OpenAI's own API has no prompt logprobs)

Every engine computes prompt logprobs as the plain log-softmax of the logits, whatever the sampling
temperature (docs/environment.md); `max_tokens` is 1, so a pass costs a prefill and one token.
"""

from __future__ import annotations

import asyncio
from functools import partial

import pyarrow as pa

from lion_distill.config.models import RoleConfig
from lion_distill.llm.token_signal import SCORING, SignalError, prompt_topk

ERROR = "_error"
REQUEST = ("id", "prompt_ids", "answer_ids")
OUT = ("id", "token_ids", "topk_ids", "topk_logprobs", "token_logprobs", "source", "prompt_tokens", ERROR)


def signal_row(row_id: str, answer_ids, n_prompt: int, topk: dict | None = None, error: str | None = None) -> dict:
    """One request's result in OUT's columns: the signal, or the reason there is none."""
    out = {"id": row_id, "token_ids": [int(t) for t in answer_ids], "source": SCORING}
    out.update(topk or {"topk_ids": None, "topk_logprobs": None, "token_logprobs": None})
    return {**out, "prompt_tokens": n_prompt + len(answer_ids), ERROR: error}


def from_prompt_logprobs(row: dict, prompt_logprobs, k: int) -> dict:
    """A row's result from its pass's prompt_logprobs (the engine's reply), or its error."""
    prompt, answer = list(row["prompt_ids"]), list(row["answer_ids"])
    if prompt_logprobs is None:
        return signal_row(row["id"], answer, len(prompt), error="the engine returned no prompt logprobs")
    try:
        return signal_row(row["id"], answer, len(prompt), prompt_topk(prompt_logprobs, len(prompt), answer, k))
    except SignalError as exc:
        return signal_row(row["id"], answer, len(prompt), error=str(exc))


def table_of(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{name: r.get(name) for name in OUT} for r in rows])


class HFScorer:
    """The teacher in transformers (on a GPU where the cluster gives it one): one forward per row."""

    def __init__(self, model_path: str, k: int):
        import torch
        from transformers import AutoModelForCausalLM

        from lion_distill.data.remote import local_model

        self.torch, self.k = torch, k
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(local_model(model_path), dtype=dtype).to(self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table_of([self.one(row) for row in batch.select(list(REQUEST)).to_pylist()])

    def one(self, row: dict) -> dict:
        torch = self.torch
        prompt, answer = list(row["prompt_ids"]), list(row["answer_ids"])
        ids = torch.tensor([prompt + answer], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) + len(answer) - 1]
            logprobs = torch.log_softmax(logits.float(), -1)
            values, top = logprobs.topk(self.k, dim=-1)
            own = logprobs.gather(-1, torch.tensor(answer, device=self.device)[:, None])[:, 0]
        topk = {"topk_ids": top.int().tolist(), "topk_logprobs": values.tolist(), "token_logprobs": own.tolist()}
        return signal_row(row["id"], answer, len(prompt), topk)


class OpenAIScorer:
    """An OpenAI-compatible vLLM server's completions endpoint, the ids as the prompt: its
    `prompt_logprobs` (top k, plus each token's own) over prompt + answer. Requests of a batch run
    concurrently up to the endpoint's max_concurrent_requests; a refused one (a top k over the
    server's max_logprobs) is a row with the server's message, which the pass raises."""

    def __init__(self, role: RoleConfig, k: int, api_key):
        import openai

        self.role, self.k = role, k
        self.client = openai.AsyncOpenAI(
            api_key=api_key.reveal(),
            base_url=role.openai.base_url,
            max_retries=role.openai.max_retries,
            timeout=role.openai.timeout_s,
        )
        self.slots = asyncio.Semaphore(role.openai.max_concurrent_requests)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(list(REQUEST)).to_pylist()
        return table_of(await asyncio.gather(*(self.one(row) for row in rows)))

    async def one(self, row: dict) -> dict:
        import openai

        body = {
            "model": self.role.model,
            "prompt": [int(t) for t in row["prompt_ids"]] + [int(t) for t in row["answer_ids"]],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.k,
        }
        async with self.slots:
            try:
                reply = await self.client.post("/completions", body=body, cast_to=dict)
            except openai.APIStatusError as exc:  # the server's own words: "... greater than max allowed: 20"
                message = f"HTTP {exc.status_code}: {' '.join(str(exc.message).split())[:300]}"
                return signal_row(row["id"], row["answer_ids"], len(row["prompt_ids"]), error=message)
            except openai.APIError as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                return signal_row(row["id"], row["answer_ids"], len(row["prompt_ids"]), error=error)
        choice = (reply.get("choices") or [{}])[0]
        return from_prompt_logprobs(row, choice.get("prompt_logprobs"), self.k)


def vllm_scoring(role: RoleConfig, ds, k: int, *, gpu: bool, start_timeout_s: float):
    """Ray Data's vLLM processor on the rows' token ids: no chat template, tokenizer or detokenizer
    stage, one token generated, the prompt's logprobs kept."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from lion_distill.llm.engine_args import engine_spec

    spec = engine_spec(role, gpu, logprobs=k)  # this pass's own engine: room for k
    config = vLLMEngineProcessorConfig(
        model_source=role.model,
        engine_kwargs=spec.engine_kwargs,
        batch_size=role.parallelism.batch_size,
        concurrency=role.parallelism.replicas,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        should_continue_on_error=True,
        placement_group_config=spec.placement(),
        **({} if gpu else {"log_engine_metrics": False}),
    )
    params = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k, "detokenize": False}
    processor = build_processor(config, preprocess=partial(_engine_request, params=params))
    out = processor(ds).map(partial(_engine_result, k=k))
    out.context.wait_for_min_actors_s = start_timeout_s
    return out


def _engine_request(row: dict, params: dict) -> dict:
    prompt, answer = list(row["prompt_ids"]), list(row["answer_ids"])
    return {**row, "tokenized_prompt": prompt + answer, "sampling_params": params}


def _engine_result(row: dict, k: int) -> dict:
    error = row.get("__inference_error__")
    if error:
        return signal_row(row["id"], row["answer_ids"], len(row["prompt_ids"]), error=_reason(error))
    return from_prompt_logprobs(row, row.get("prompt_logprobs"), k)


def serve_scoring(engine, role: RoleConfig, ds, k: int):
    """The rows through the job's long-lived engine of the role (lion_distill.llm.serving), each a
    `score_dict` call on its deployment (lion_distill.llm.serve_server): the prompt logprobs are made
    into the signal's lists in the replica, so no map keyed by token ids crosses to Ray Data."""
    from ray.data.llm import ServeDeploymentProcessorConfig, build_processor

    from lion_distill.llm.serve_backend import CONCURRENT_BATCHES, DEPLOYMENT

    config = ServeDeploymentProcessorConfig(
        deployment_name=DEPLOYMENT,
        app_name=engine.app,
        batch_size=role.parallelism.batch_size * CONCURRENT_BATCHES,
        concurrency=role.parallelism.replicas,
        should_continue_on_error=True,
    )
    processor = build_processor(config, preprocess=partial(_serve_request, model_id=engine.model_id, k=k))
    return processor(ds).map(_serve_result)


def _serve_request(row: dict, model_id: str, k: int) -> dict:
    body = {"model": model_id, "k": k, **{name: _plain(row[name]) for name in REQUEST}}
    return {"_in_id": row["id"], "method": "score_dict", "request_kwargs": body}


def _plain(value):
    return value if isinstance(value, str) else [int(t) for t in value]


def _serve_result(row: dict) -> dict:
    error = row.get("__inference_error__")
    if error:
        return signal_row(row["_in_id"], [], 0, error=_reason(error))
    return {name: row.get(name) for name in OUT}


def _reason(error) -> str:
    """An inference error's own last line (a RayTaskError's first lines are only where it was raised)."""
    lines = str(error).strip().splitlines() or [""]
    return lines[-1][:300]
