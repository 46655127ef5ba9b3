"""The `openai` backend: any OpenAI-compatible endpoint, many requests in flight.

`OpenAIGenerator(role, ...)(batch) -> batch` is a plain callable over a batch dict
(no Ray import): Ray Data runs it in an actor pool, a benchmark can call it bare.

What is built on what:
- retries, exponential backoff with jitter, `Retry-After`: the `openai` client's
  own (configured with the endpoint's `max_retries` and `timeout_s`); an httpx
  event hook tags every HTTP attempt with the row's request id, so retries are
  counted per row;
- transport: openai's aiohttp transport (`openai.DefaultAioHttpClient`, about
  30% less client CPU a request than httpx's, and the client is CPU-bound at
  hundreds of requests/s), with its error mapping corrected so that failure
  reasons read as they do with httpx (see `_AiohttpTransport`); httpx when
  aiohttp is missing. Event hooks live on the httpx client, so they still run;
- progress: one bar per actor batch, updated every `PROGRESS_EVERY` requests
  (Ray's tqdm_ray inside Ray, shown on the driver; plain tqdm otherwise);
- rate limits: the shared `gate` (one named Ray actor per endpoint, see
  engine.llm.gate) holds requests/min and tokens/min buckets and learns from the
  server's `retry-after` / `x-ratelimit-*` headers, so every actor of the cluster
  backs off together; each actor leases permits from it in blocks and admits
  its requests locally (engine.llm.ratelimit.LeasedGate), returning what it did
  not use at the end of every batch;
- budget: each request's worst-case cost is reserved (from the actor's leased
  slice of the job's budget) before it is sent, so a job stops before
  `budget_usd`, not after; rows refused get "failed: budget";
- cache: engine.llm.cache, keyed by (model, prompt, sampling, structured output,
  logprobs); only answered requests are stored.

The API key: read from the variable `openai.api_key_env` names, wrapped in
`Secret` (its repr is masked) and handed only to the client. A loopback
endpoint (a local vLLM server has no auth) may run without it: the client then
sends the placeholder "EMPTY". A remote endpoint without the variable is refused.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from urllib.parse import urlparse

import openai

from engine.config.models import RoleConfig
from engine.data.rundir import RunDir
from engine.llm.cache import ResponseCache, cache_key
from engine.llm.ledger import cost_usd
from engine.llm.ratelimit import REFUSED, Admission, ServerHints
from engine.llm.responses import (
    PROMPT_COL, decode_prompt, failed_row, merge_responses, response_row, top_logprobs_json,
)

REQUEST_ID_HEADER = "x-engine-request-id"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
PROGRESS_EVERY = 32


def _remapped(exc: BaseException):
    """The httpx exception httpx itself would raise for this aiohttp error, or None to keep
    the transport's own. The vendored transport maps every `aiohttp.ClientConnectionError`
    it has no closer entry for (refused connection, server disconnect) to
    `httpx.ConnectTimeout`, which openai reports as a timeout; httpx reports those as
    ConnectError / RemoteProtocolError / ReadError, and a body cut short as
    RemoteProtocolError (aiohttp: ClientPayloadError, mapped to ReadError)."""
    import aiohttp
    import httpx2

    cause = exc.__cause__
    if not isinstance(cause, aiohttp.ClientError):
        return None
    if isinstance(exc, httpx2.ReadError) and isinstance(cause, aiohttp.ClientPayloadError):
        return httpx2.RemoteProtocolError(str(cause))
    if not isinstance(exc, httpx2.ConnectTimeout) or isinstance(cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return None
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(str(cause))
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx2.RemoteProtocolError(str(cause))
    return httpx2.ReadError(str(cause))


def _http_client(event_hooks: dict, max_connections: int):
    """openai's aiohttp-backed client (its defaults, our hooks), errors mapped as httpx maps them."""
    try:
        import httpx2
        from openai._constants import DEFAULT_CONNECTION_LIMITS
        from openai._vendor.httpx_aiohttp.transport import AiohttpTransport
    except ImportError:
        return openai.DefaultAsyncHttpxClient(event_hooks=event_hooks)

    class _Stream(httpx2.AsyncByteStream):
        def __init__(self, inner):
            self.inner = inner

        async def __aiter__(self):
            try:
                async for chunk in self.inner:
                    yield chunk
            except httpx2.TransportError as exc:
                better = _remapped(exc)
                if better is None:
                    raise
                raise better from exc.__cause__

        async def aclose(self) -> None:
            await self.inner.aclose()

    class _AiohttpTransport(AiohttpTransport):
        async def handle_async_request(self, request):
            try:
                response = await super().handle_async_request(request)
            except httpx2.TransportError as exc:
                better = _remapped(exc)
                if better is None:
                    raise
                raise better from exc.__cause__
            return httpx2.Response(status_code=response.status_code, headers=response.headers,
                                   stream=_Stream(response.stream), request=request, extensions=response.extensions)

    limits = httpx2.Limits(max_connections=max(DEFAULT_CONNECTION_LIMITS.max_connections, max_connections),
                           max_keepalive_connections=max(DEFAULT_CONNECTION_LIMITS.max_keepalive_connections,
                                                         max_connections))
    return openai.DefaultAioHttpClient(event_hooks=event_hooks, transport=_AiohttpTransport(limits=limits))


def _progress_bar(total: int, desc: str):
    """tqdm_ray inside Ray (its bars are drawn on the driver), plain tqdm elsewhere; imported lazily."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.experimental.tqdm_ray import tqdm
        return tqdm(total=total, desc=desc, unit="req")
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="req", mininterval=1.0)


class Secret:
    """A value that never prints: repr/str are masked, so logs and tracebacks stay clean."""
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__


def resolve_api_key(role: RoleConfig) -> Secret:
    endpoint = role.openai
    value = os.environ.get(endpoint.api_key_env)
    if value:
        return Secret(value)
    host = urlparse(endpoint.base_url or "https://api.openai.com").hostname
    if host in LOOPBACK:
        return Secret("EMPTY")
    raise ValueError(f"openai.api_key_env: environment variable {endpoint.api_key_env!r} is not set "
                     f"(needed for {endpoint.base_url or 'api.openai.com'})")


class LocalGate:
    """The gate for one process (benchmarks, tests without Ray): same calls as the Ray actor's proxy."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.admission = Admission(requests_per_minute, tokens_per_minute)

    async def admit(self, job, tokens, cost_estimate, budget):
        return self.admission.admit(job, tokens, cost_estimate, budget, time.monotonic())

    async def settle(self, job, tokens_estimate, tokens_used, cost_estimate, cost):
        self.admission.settle(job, tokens_estimate, tokens_used, cost_estimate, cost, time.monotonic())

    async def observe(self, hints):
        self.admission.observe(hints, time.monotonic())

    async def release(self):
        pass


def request_kwargs(role: RoleConfig, prompt, structured_output: dict | None, logprobs: int | None) -> dict:
    """The create() arguments for one prompt: chat for messages, completions for a raw string."""
    s = role.sampling
    kw: dict = {"model": role.model, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
    if s.seed is not None:
        kw["seed"] = s.seed
    chat = isinstance(prompt, list)
    kw["messages" if chat else "prompt"] = prompt
    if logprobs is not None:
        kw.update({"logprobs": True, "top_logprobs": logprobs} if chat else {"logprobs": logprobs})
    if structured_output:
        if chat and "json" in structured_output:
            kw["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "output", "schema": structured_output["json"]}}
        else:  # vLLM's structured outputs (regex, choice, json on completions)
            kw["extra_body"] = {"structured_outputs": structured_output}
    return kw


def parse_completion(resp, chat: bool) -> dict:
    choice = resp.choices[0]
    usage = resp.usage
    steps = None
    if chat:
        text = choice.message.content
        if choice.logprobs is not None and choice.logprobs.content is not None:
            steps = [{**{t.token: t.logprob for t in c.top_logprobs}, c.token: c.logprob} for c in choice.logprobs.content]
    else:
        text = choice.text
        if choice.logprobs is not None and choice.logprobs.top_logprobs is not None:
            steps = [dict(d or {}) for d in choice.logprobs.top_logprobs]
    if text is None:
        return failed_row("response without text")
    return response_row(text, choice.finish_reason or "stop", getattr(usage, "prompt_tokens", 0) or 0,
                        getattr(usage, "completion_tokens", 0) or 0, top_logprobs_json(steps))


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error ({type(exc.__cause__).__name__ if exc.__cause__ else 'unknown'})"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


class OpenAIGenerator:
    def __init__(self, role: RoleConfig, *, role_name: str, api_key: Secret, gate=None, run_dir_uri: str | None = None,
                 job: str = "", structured_output: dict | None = None, logprobs: int | None = None):
        self.role, self.endpoint, self.role_name = role, role.openai, role_name
        self.structured_output, self.logprobs, self.job = structured_output, logprobs, job
        self.gate = gate or LocalGate(self.endpoint.requests_per_minute, self.endpoint.tokens_per_minute)
        self.cache = ResponseCache(RunDir(run_dir_uri)) if run_dir_uri else None
        self.attempts: Counter[str] = Counter()
        self.budget_spent = False
        self._loop = asyncio.new_event_loop()
        self._in_flight = asyncio.Semaphore(self.endpoint.max_concurrent_requests)
        http = _http_client({"request": [self._on_request], "response": [self._on_response]},
                            self.endpoint.max_concurrent_requests)
        self._bar, self._done = None, 0
        self.client = openai.AsyncOpenAI(api_key=api_key.reveal(), base_url=self.endpoint.base_url, http_client=http,
                                         max_retries=self.endpoint.max_retries, timeout=self.endpoint.timeout_s)

    async def _on_request(self, request) -> None:
        rid = request.headers.get(REQUEST_ID_HEADER)
        if rid:
            self.attempts[rid] += 1

    async def _on_response(self, response) -> None:
        hints = ServerHints.from_headers(response.headers)
        if hints is not None:
            await self.gate.observe(hints)

    def __call__(self, batch: dict) -> dict:
        prompts = [decode_prompt(p) for p in batch[PROMPT_COL]]
        self._bar, self._done = _progress_bar(len(prompts), f"{self.role_name} ({self.role.model})"), 0
        try:
            responses = self._loop.run_until_complete(self._answer_all(prompts))
        finally:
            self._bar.update(self._done % PROGRESS_EVERY)
            self._bar.close()
            self._bar = None
            self._loop.run_until_complete(self.gate.release())
            if self.cache is not None:
                self.cache.flush()
        return merge_responses(batch, responses, self.role_name, self.logprobs is not None)

    async def _answer_all(self, prompts: list) -> list[dict]:
        return await asyncio.gather(*(self._answer(p) for p in prompts))

    async def _answer(self, prompt) -> dict:
        row = await self._answer_one(prompt)
        self._done += 1
        if self._bar is not None and self._done % PROGRESS_EVERY == 0:
            self._bar.update(PROGRESS_EVERY)
        return row

    async def _answer_one(self, prompt) -> dict:
        sampling = self.role.sampling.model_dump()
        key = cache_key(self.role.model, prompt, sampling, self.structured_output, self.logprobs)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            return {**hit, **_api(cached=1)}
        if self.budget_spent:
            return {**failed_row("budget"), **_api()}
        async with self._in_flight:
            return await self._send(prompt, key)

    async def _send(self, prompt, key: str) -> dict:
        max_tokens = self.role.sampling.max_tokens
        # Rough upper bound (~3 chars a token) so reservations err on the safe side.
        prompt_est = len(prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)) // 3 + 8
        tokens_est, cost_est = prompt_est + max_tokens, cost_usd(self.endpoint, prompt_est, max_tokens)
        wait = await self.gate.admit(self.job, tokens_est, cost_est, self.endpoint.budget_usd)
        if wait == REFUSED:
            self.budget_spent = True
            return {**failed_row("budget"), **_api()}
        if wait > 0:
            await asyncio.sleep(wait)
        rid = uuid.uuid4().hex
        chat = isinstance(prompt, list)
        kwargs = request_kwargs(self.role, prompt, self.structured_output, self.logprobs)
        create = self.client.chat.completions.create if chat else self.client.completions.create
        try:
            row = parse_completion(await create(**kwargs, extra_headers={REQUEST_ID_HEADER: rid}), chat)
        except Exception as exc:  # every failure becomes a counted, reasoned row
            row = failed_row(failure_reason(exc))
        attempts = self.attempts.pop(rid, 1)
        cost = cost_usd(self.endpoint, row["prompt_tokens"], row["completion_tokens"])
        await self.gate.settle(self.job, tokens_est, row["prompt_tokens"] + row["completion_tokens"], cost_est, cost)
        if row["text"] is not None and self.cache is not None:
            self.cache.put(key, row)
        return {**row, **_api(requests=1, retries=max(0, attempts - 1), cost=cost)}


def _api(requests: int = 0, retries: int = 0, cached: int = 0, cost: float = 0.0) -> dict:
    return {"_api_requests": requests, "_api_retries": retries, "_api_cached": cached, "_api_cost_usd": cost}
