"""The deployment class of a job's engines: Ray Serve LLM's `LLMServer`, plus `chat_dict`
and `completions_dict`, which take an OpenAI request body and give back the reply as a
plain dict, and `score_dict`, a scoring pass's prompt logprobs made into the teacher signal's
lists (lion_distill.llm.scorers). The OpenAI request and reply classes are vLLM's: a stage's Ray Data actor that
sends or receives them imports vLLM (8.7 s measured on this machine's two cores, every
stage, as the actor is new each time); with plain dicts only the replica, which has vLLM
loaded anyway, does (benchmarks/serve_throughput.py).

An engine that does not start raises `EngineRootCause` with its own exception's line
(lion_distill.llm.engine_start): vLLM's engine core runs in a process of its own, whose exception
the replica sees only as `Engine core initialization failed. See root cause above`; the root
cause is in that process's log, which is this replica's stdout/stderr (the child inherits
them), so the replica reads what was written there while the engine started.

A model in an object store (a student exported into an `s3://` run directory) is loaded from
the replica's node's copy (lion_distill.data.remote), not by Ray's own bucket download, which knows
only some schemes and none of a pyarrow URI's options."""

import asyncio
import os

from ray.serve.llm import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from lion_distill.data.remote import is_uri, local_model
from lion_distill.llm.engine_start import EngineRootCause, exception_line
from lion_distill.llm.scorers import from_prompt_logprobs, signal_row

LOG_TAIL_BYTES = 256 << 10


class JobLLMServer(LLMServer):
    async def __init__(self, llm_config, **kwargs):
        await super().__init__(await asyncio.to_thread(with_local_model, llm_config), **kwargs)

    async def start(self):
        marks = _log_marks()
        try:
            await super().start()
        except Exception as exc:
            root = _innermost(exc)  # Serve LLM wraps vLLM's own ("Failed to create vLLM engine config: ...")
            own = f"{type(root).__name__}: {' '.join(str(root).split())}"[:600]  # a pydantic error spans lines
            cause = (exception_line(_logged_since(marks)) if "root cause" in str(exc) else None) or own
            raise EngineRootCause(cause) from exc

    async def chat_dict(self, body: dict):
        async for reply in await self.chat(ChatCompletionRequest(**_own_fields(body))):
            yield reply.model_dump()

    async def completions_dict(self, body: dict):
        async for reply in await self.completions(CompletionRequest(**_own_fields(body))):
            yield reply.model_dump()

    async def score_dict(self, body: dict):
        """A scoring pass's request (lion_distill.llm.scorers.serve_scoring: id, prompt_ids, answer_ids,
        k) -> its signal row: one token generated after prompt + answer, the prompt's top-k logprobs."""
        # Ray Data hands the ids over as numpy arrays, on which `+` would add, not concatenate.
        row = {"id": body["id"], **{name: [int(t) for t in body[name]] for name in ("prompt_ids", "answer_ids")}}
        request = CompletionRequest(
            model=body["model"],
            prompt=row["prompt_ids"] + row["answer_ids"],
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=body["k"],
        )
        async for reply in await self.completions(request):
            reply = reply.model_dump()
            if reply.get("error"):  # vLLM's ErrorResponse: a top k over max_logprobs, say
                error = f"engine error: {' '.join(str(reply['error'].get('message')).split())[:300]}"
                yield signal_row(row["id"], row["answer_ids"], len(row["prompt_ids"]), error=error)
            else:
                yield from_prompt_logprobs(row, reply["choices"][0].get("prompt_logprobs"), body["k"])


def with_local_model(llm_config):
    """The config with its model source on this node's disk (the served model id unchanged)."""
    loading = llm_config.model_loading_config
    if not isinstance(loading.model_source, str) or not is_uri(loading.model_source):
        return llm_config
    local = loading.model_copy(update={"model_source": local_model(loading.model_source)})
    return llm_config.model_copy(update={"model_loading_config": local})


def _own_fields(body: dict) -> dict:
    """Without the stage's bookkeeping: its `request_id` counts from 0 in every actor, and two
    stages' actors may share an engine; Serve stamps a unique one instead."""
    return {k: v for k, v in body.items() if k not in ("request_id", "idx_in_batch")}


def _innermost(exc: BaseException) -> BaseException:
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def _log_marks() -> dict[str, int]:
    """This process's stdout and stderr files (Ray's worker logs) and their sizes now."""
    marks = {}
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            marks[path] = os.path.getsize(path)
        except OSError:  # not a file (a terminal, a pipe) or no /proc: nothing to read back
            pass
    return marks


def _logged_since(marks: dict[str, int]) -> str:
    text = []
    for path, start in marks.items():
        try:
            with open(path, "rb") as f:
                f.seek(max(start, os.path.getsize(path) - LOG_TAIL_BYTES))
                text.append(f.read().decode(errors="replace"))
        except OSError:
            pass
    return "\n".join(text)
