"""The `openai` backend: any OpenAI-compatible endpoint, many requests in flight.

`await OpenAIGenerator(role, ...)(batch) -> batch` is an async callable over a batch
dict (no Ray import): Ray Data runs it in an actor pool, several batches at once
on the actor's event loop; bare, `asyncio.run(generator(batch))` (one event loop
per generator: its HTTP session belongs to the first loop it runs on).

What is built on what:
- retries, exponential backoff with jitter, `Retry-After`: the `openai` client's
  own (configured with the endpoint's `max_retries` and `timeout_s`). Requests go
  through `client.post` with a plain JSON body and come back as a dict: the same
  request path as `chat.completions.create` (retries, errors, headers), without
  the typed-params transform and the pydantic response models, which walk every
  message and field and cost a third of the client's CPU a request; an httpx
  event hook tags every HTTP attempt with the row's request id, so retries are
  counted per row;
- transport: openai's aiohttp transport (`openai.DefaultAioHttpClient`, about
  30% less client CPU a request than httpx's, and the client is CPU-bound at
  hundreds of requests/s), with its error mapping corrected so that failure
  reasons read as they do with httpx (see `_AiohttpTransport`); httpx when
  aiohttp is missing. Event hooks live on the httpx client, so they still run;
- progress: one bar per actor while it has batches open, updated every `PROGRESS_EVERY` requests
  (Ray's tqdm_ray inside Ray, shown on the driver; plain tqdm otherwise);
- rate limits: the shared `gate` (one named Ray actor per endpoint, see
  lion_distill.llm.gate) holds requests/min and tokens/min buckets and learns from the
  server's `retry-after` / `x-ratelimit-*` headers, so every actor of the cluster
  backs off together; each actor leases permits from it in blocks and admits
  its requests locally (lion_distill.llm.ratelimit.LeasedGate), returning what it did
  not use whenever it goes idle (no batch open);
- budget: each request's worst-case cost is reserved (from the actor's leased
  slice of the role's budget) before it is sent, so a run stops before
  `budget_usd`, not after; rows refused fail with the kind `budget`. The budget is the
  run's: one gate job per run directory and role, seeded with the spend log
  (lion_distill.llm.ledger), to which every completed request is written;
- cache: lion_distill.llm.cache, one per stage, keyed by (model, prompt, sampling, structured
  output, logprobs, draw). lion_distill.llm.generate joins each row to the stage's cache in
  Ray Data before this actor (CACHED_COL): a row that arrives with its cached answer is
  not sent (counted `_api_cached`). The actor loads no cache, unless Ray restarted it (it
  was killed with batches in hand, which Ray Data hands it again): then it reads the stage's
  answers so far once, those its last life got after the join included, so none is paid
  twice. It records each answer it gets (only answered requests) as it comes
  (lion_distill.llm.cache.CacheWriter), before the batch is done.

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

from lion_distill.config.models import RoleConfig
from lion_distill.data.rundir import RunDir
from lion_distill.errors import ErrorKind
from lion_distill.llm.cache import CacheWriter, cache_key, cached_response, read_cache, request_seed, sampling_key
from lion_distill.llm.ledger import SpendLog, cost_usd
from lion_distill.llm.ratelimit import REFUSED, Admission, ServerHints
from lion_distill.llm.reasoning import message_reasoning
from lion_distill.llm.responses import (
    CACHE_KEY_COL,
    CACHED_COL,
    DRAW_COL,
    ERROR,
    LENGTH,
    PROMPT_COL,
    STOP,
    decode_prompt,
    error_row,
    merge_responses,
    overflow_kind,
    response_row,
    top_logprobs_json,
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
    if not isinstance(exc, httpx2.ConnectTimeout) or isinstance(
        cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)
    ):
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
            return httpx2.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=_Stream(response.stream),
                request=request,
                extensions=response.extensions,
            )

    limits = httpx2.Limits(
        max_connections=max(DEFAULT_CONNECTION_LIMITS.max_connections, max_connections),
        max_keepalive_connections=max(DEFAULT_CONNECTION_LIMITS.max_keepalive_connections, max_connections),
    )
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


def resolve_api_key(role: RoleConfig, env=os.environ) -> Secret:
    endpoint = role.openai
    value = env.get(endpoint.api_key_env)
    if value:
        return Secret(value)
    host = urlparse(endpoint.base_url or "https://api.openai.com").hostname
    if host in LOOPBACK:
        return Secret("EMPTY")
    raise ValueError(
        f"openai.api_key_env: environment variable {endpoint.api_key_env!r} is not set "
        f"(needed for {endpoint.base_url or 'api.openai.com'})"
    )


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


def request_body(
    role: RoleConfig, prompt, structured_output: dict | None, logprobs: int | None, draw: str | None = None
) -> dict:
    """The JSON body for one prompt: chat for messages, completions for a raw string;
    a drawn request (lion_distill.llm.generate's `draw`) sends its own seed."""
    s = role.sampling
    body: dict = {
        **s.extra,
        "model": role.model,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
    }
    if s.seed is not None:
        body["seed"] = request_seed(s.seed, draw)
    chat = isinstance(prompt, list)
    body["messages" if chat else "prompt"] = prompt
    if chat and role.chat_template_kwargs:  # vLLM's and Ray Serve LLM's field; sent only when set
        body["chat_template_kwargs"] = role.chat_template_kwargs
    if logprobs is not None:
        body.update({"logprobs": True, "top_logprobs": logprobs} if chat else {"logprobs": logprobs})
    if structured_output:
        if chat and "json" in structured_output:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": structured_output["json"]},
            }
        else:  # vLLM's structured outputs (regex, choice, json on completions)
            body["structured_outputs"] = structured_output
    return body


def parse_completion(resp, chat: bool) -> dict:
    """A chat.completion / text_completion JSON object -> a response row; any other shape fails the row."""
    try:
        choice = resp["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        reasoning = message_reasoning(choice["message"]) if chat else None
        logprobs = choice.get("logprobs") or {}
        if chat and logprobs.get("content") is not None:
            steps = [
                {**{t["token"]: t["logprob"] for t in c.get("top_logprobs") or ()}, c["token"]: c["logprob"]}
                for c in logprobs["content"]
            ]
        elif not chat and logprobs.get("top_logprobs") is not None:
            steps = [dict(d or {}) for d in logprobs["top_logprobs"]]
        else:
            steps = None
        usage = resp.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        return error_row(ErrorKind.UNPARSEABLE, f"malformed response ({type(exc).__name__}: {str(exc)[:80]})")
    if text is None and reasoning:  # a reply that is all thinking (cut before its answer)
        text = ""
    if not isinstance(text, str):
        return error_row(ErrorKind.UNPARSEABLE, "response without text")
    finish = FINISH_REASONS.get(choice.get("finish_reason"), STOP)
    if finish == ERROR:
        failure = error_row(*STOPPED_BY[choice["finish_reason"]])
        return {**failure, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return response_row(text, finish, prompt_tokens, completion_tokens, top_logprobs_json(steps), reasoning)


# An API's finish_reason -> the row's (stop | length | error); any other (tool_calls, ...) is a stop.
FINISH_REASONS = {"stop": STOP, "length": LENGTH, "content_filter": ERROR, "abort": ERROR}
STOPPED_BY = {
    "content_filter": (ErrorKind.REFUSED, "the endpoint's content filter stopped the answer"),
    "abort": (ErrorKind.ENGINE_LOST, "the engine aborted the request"),
}
# HTTP status -> the kind of failure, for the statuses that are not the request's own fault or
# a context overflow (lion_distill.llm.responses.overflow_kind reads those from the message).
STATUS_KINDS = {401: ErrorKind.REFUSED, 403: ErrorKind.REFUSED, 404: ErrorKind.REFUSED, 408: ErrorKind.TIMEOUT}
# What vLLM names (VLLMValidationError's parameter) or OpenAI codes a prompt too long for the context.
OVERFLOW_PARAMS, OVERFLOW_CODES = {"input_tokens", "input_text"}, {"context_length_exceeded"}


def failure_row(exc: BaseException) -> dict:
    """The openai client's exception (after its own retries) -> the failed row, its kind set here."""
    if isinstance(exc, openai.APITimeoutError):
        return error_row(ErrorKind.TIMEOUT, "timeout")
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unknown"
        return error_row(ErrorKind.CONNECTION, f"connection error ({cause})")
    if isinstance(exc, openai.APIStatusError):
        message = _server_message(exc)
        return error_row(
            status_kind(exc.status_code, message, exc.code, exc.param), f"HTTP {exc.status_code}: {message}"
        )
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):  # a body that is not the JSON asked for
        return error_row(ErrorKind.UNPARSEABLE, f"{type(exc).__name__}: {str(exc)[:160]}")
    return error_row(ErrorKind.SERVER_ERROR, f"{type(exc).__name__}: {str(exc)[:160]}")


def status_kind(status: int, message: str, code: str | None = None, param: str | None = None) -> ErrorKind:
    """An HTTP error reply -> its kind, from the status, the error body's `code` and `param`, and
    for a 4xx the message (a context overflow has no status of its own)."""
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    if status in STATUS_KINDS:
        return STATUS_KINDS[status]
    if code in OVERFLOW_CODES or param in OVERFLOW_PARAMS:
        return ErrorKind.CONTEXT_OVERFLOW
    return overflow_kind(message, ErrorKind.BAD_REQUEST)


def _server_message(exc: openai.APIStatusError) -> str:
    """What the server said: its error body's message (the client's own text quotes the whole body)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.message)[:300]


class OpenAIGenerator:
    def __init__(
        self,
        role: RoleConfig,
        *,
        role_name: str,
        api_key: Secret,
        gate=None,
        run_dir_uri: str | None = None,
        job: str = "",
        structured_output: dict | None = None,
        logprobs: int | None = None,
        stage: str = "",
    ):
        self.role, self.endpoint, self.role_name = role, role.openai, role_name
        self.structured_output, self.logprobs, self.job = structured_output, logprobs, job
        self.gate = gate or LocalGate(self.endpoint.requests_per_minute, self.endpoint.tokens_per_minute)
        self.cache = CacheWriter(RunDir(run_dir_uri), stage) if run_dir_uri else None
        self.answered_before = _answered_before_restart(run_dir_uri, stage)
        self.spend = SpendLog(RunDir(run_dir_uri), role=role_name, stage=stage) if run_dir_uri else None
        self.attempts: Counter[str] = Counter()
        self.budget_spent = False
        self._in_flight = asyncio.Semaphore(self.endpoint.max_concurrent_requests)
        http = _http_client(
            {"request": [self._on_request], "response": [self._on_response]}, self.endpoint.max_concurrent_requests
        )
        self._bar, self._done, self._open_batches = None, 0, 0
        self._sampling = sampling_key(role)  # part of every cache key
        self.client = openai.AsyncOpenAI(
            api_key=api_key.reveal(),
            base_url=self.endpoint.base_url,
            http_client=http,
            max_retries=self.endpoint.max_retries,
            timeout=self.endpoint.timeout_s,
        )

    async def _on_request(self, request) -> None:
        rid = request.headers.get(REQUEST_ID_HEADER)
        if rid:
            self.attempts[rid] += 1

    async def _on_response(self, response) -> None:
        hints = ServerHints.from_headers(response.headers, self.endpoint.max_retry_after_s)
        if hints is not None:
            await self.gate.observe(hints)

    async def __call__(self, batch: dict) -> dict:
        """One batch; Ray Data runs several at once on the actor's event loop (see
        lion_distill.llm.generate), so one slow request never leaves the others' slots idle."""
        prompts = [decode_prompt(p) for p in batch[PROMPT_COL]]
        n = len(prompts)
        draws, keys, cached = (
            list(batch[c]) if c in batch else [None] * n for c in (DRAW_COL, CACHE_KEY_COL, CACHED_COL)
        )
        self._batch_opened(n)
        try:
            responses = await asyncio.gather(*(self._answer(*row) for row in zip(prompts, draws, keys, cached)))
        finally:
            await self._batch_closed()
        return merge_responses(batch, responses, self.role_name, self.logprobs is not None)

    def _batch_opened(self, rows: int) -> None:
        self._open_batches += 1
        if self._bar is None:
            self._bar, self._done = _progress_bar(rows, f"{self.role_name} ({self.role.model})"), 0
        else:
            self._bar.total += rows

    async def _batch_closed(self) -> None:
        self._open_batches -= 1
        if self.cache is not None:
            self.cache.flush()
        if self.spend is not None:
            self.spend.flush()
        if self._open_batches == 0:  # idle: close the bar, hand unused permits back to the gate
            bar, self._bar = self._bar, None
            bar.update(self._done % PROGRESS_EVERY)
            bar.close()
            await self.gate.release()

    async def _answer(self, prompt, draw: str | None, key: str | None, cached: str | None) -> dict:
        row = await self._answer_one(prompt, draw, key, cached)
        self._done += 1
        if self._bar is not None and self._done % PROGRESS_EVERY == 0:
            self._bar.update(PROGRESS_EVERY)
        return row

    async def _answer_one(self, prompt, draw: str | None, key: str | None, cached: str | None) -> dict:
        hit = cached_response(cached)  # joined to the row by lion_distill.llm.generate
        if hit is None and key is not None:
            hit = self.answered_before.get(key)
        if hit is not None:
            return {**hit, **_api(cached=1)}
        if self.budget_spent:
            return {**_budget_spent(), **_api()}
        async with self._in_flight:
            return await self._send(prompt, key, draw)

    async def _send(self, prompt, key: str | None, draw: str | None) -> dict:
        max_tokens = self.role.sampling.max_tokens
        # Rough upper bound (~3 chars a token) so reservations err on the safe side.
        prompt_est = len(prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)) // 3 + 8
        tokens_est, cost_est = prompt_est + max_tokens, cost_usd(self.endpoint, prompt_est, max_tokens)
        wait = await self.gate.admit(self.job, tokens_est, cost_est, self.endpoint.budget_usd)
        if wait == REFUSED:
            self.budget_spent = True
            return {**_budget_spent(), **_api()}
        if wait > 0:
            await asyncio.sleep(wait)
        rid = uuid.uuid4().hex
        chat = isinstance(prompt, list)
        body = request_body(self.role, prompt, self.structured_output, self.logprobs, draw)
        try:
            row = parse_completion(
                await self.client.post(
                    "/chat/completions" if chat else "/completions",
                    body=body,
                    cast_to=dict,
                    options={"headers": {REQUEST_ID_HEADER: rid}},
                ),
                chat,
            )
        except Exception as exc:  # every failure becomes a counted row of its kind
            row = failure_row(exc)
        attempts = self.attempts.pop(rid, 1)
        cost = cost_usd(self.endpoint, row["prompt_tokens"], row["completion_tokens"])
        await self.gate.settle(self.job, tokens_est, row["prompt_tokens"] + row["completion_tokens"], cost_est, cost)
        if self.spend is not None:
            self.spend.add(
                retries=max(0, attempts - 1),
                failed=row["text"] is None,
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                cost_usd=cost,
            )
        if row["text"] is not None and self.cache is not None:
            if key is None:  # run bare, without generate's key column
                key = cache_key(self.role.model, prompt, self._sampling, self.structured_output, self.logprobs, draw)
            self.cache.put(key, row)
        return {**row, **_api(requests=1, retries=max(0, attempts - 1), cost=cost)}


def _answered_before_restart(run_dir_uri: str | None, stage: str) -> dict[str, dict]:
    """In an actor Ray restarted, the stage's cached answers by key; else nothing (no read)."""
    if not run_dir_uri or "ray" not in sys.modules:
        return {}
    import ray

    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is None or context.get_actor_id() is None or not context.was_current_actor_reconstructed:
        return {}
    table = read_cache(RunDir(run_dir_uri), stage)
    responses = table.select(table.column_names[1:]).to_pylist()
    return dict(zip(table.column("key").to_pylist(), responses))


def _budget_spent() -> dict:
    return error_row(ErrorKind.BUDGET, "not sent: the role's budget_usd would be exceeded")


def _api(requests: int = 0, retries: int = 0, cached: int = 0, cost: float = 0.0) -> dict:
    return {"_api_requests": requests, "_api_retries": retries, "_api_cached": cached, "_api_cost_usd": cost}
