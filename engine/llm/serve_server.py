"""The deployment class of a job's engines: Ray Serve LLM's `LLMServer`, plus `chat_dict`
and `completions_dict`, which take an OpenAI request body and give back the reply as a
plain dict. The OpenAI request and reply classes are vLLM's: a stage's Ray Data actor that
sends or receives them imports vLLM (8.7 s measured on this machine's two cores, every
stage, as the actor is new each time); with plain dicts only the replica, which has vLLM
loaded anyway, does (benchmarks/serve_throughput.py)."""
from ray.serve.llm import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest


class JobLLMServer(LLMServer):
    async def chat_dict(self, body: dict):
        async for reply in await self.chat(ChatCompletionRequest(**_own_fields(body))):
            yield reply.model_dump()

    async def completions_dict(self, body: dict):
        async for reply in await self.completions(CompletionRequest(**_own_fields(body))):
            yield reply.model_dump()


def _own_fields(body: dict) -> dict:
    """Without the stage's bookkeeping: its `request_id` counts from 0 in every actor, and two
    stages' actors may share an engine; Serve stamps a unique one instead."""
    return {k: v for k, v in body.items() if k not in ("request_id", "idx_in_batch")}
