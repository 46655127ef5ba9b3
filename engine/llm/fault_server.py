"""A small OpenAI-compatible chat server for fault injection and client benchmarks.

It is not a model: it answers every chat request with a fixed text after a fixed
latency, or, when the last user message names a fault, misbehaves:
  "fault:429"       429 with Retry-After: 1 on the first attempt, then answers
  "fault:500"       500 on the first attempt, then answers
  "fault:stall"     holds the response far past any sane client timeout
  "fault:malformed" 200 with a body that is not JSON
  "fault:cutoff"    promises a body longer than it sends, then closes
Runs in a background thread on loopback: `with FaultServer(latency_s=0.1) as s: s.base_url`.
`hits` counts requests per message text (attempts included). `GET /v1/_window` answers, and
starts afresh, the chat requests answered since the last call and the span from the first
one's arrival to the last one's answer: a client's throughput as the server saw it.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from aiohttp import web


class FaultServer:
    def __init__(self, latency_s: float = 0.0, completion_tokens: int = 8, stall_s: float = 30.0):
        self.latency_s, self.completion_tokens, self.stall_s = latency_s, completion_tokens, stall_s
        self.hits: Counter[str] = Counter()
        self.authorizations: set[str] = set()
        self._answered, self._first_arrival, self._last_answer = 0, None, 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def __enter__(self) -> FaultServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/_window", self._take_window)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _take_window(self, request: web.Request) -> web.Response:
        span = self._last_answer - self._first_arrival if self._answered else 0.0
        window = {"answered": self._answered, "span_s": span}
        self._answered, self._first_arrival = 0, None
        return web.json_response(window)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self._first_arrival is None:
            self._first_arrival = time.perf_counter()
        response = await self._answer(request)
        self._answered, self._last_answer = self._answered + 1, time.perf_counter()
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.authorizations.add(request.headers.get("Authorization", ""))
        text = body["messages"][-1]["content"]
        self.hits[text] += 1
        first = self.hits[text] == 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if text == "fault:429" and first:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"})
        if text == "fault:500" and first:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if text == "fault:stall":
            await asyncio.sleep(self.stall_s)
        if text == "fault:malformed":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        if text == "fault:cutoff":
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"id": "cut", "choi')
            request.transport.close()
            return resp
        return web.json_response(self.completion(body["model"], text))

    def completion(self, model: str, text: str) -> dict:
        return {
            "id": f"chatcmpl-{self.total_hits}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(text.split()) + 1, "completion_tokens": self.completion_tokens,
                      "total_tokens": len(text.split()) + 1 + self.completion_tokens},
        }


def serve_in_subprocess(latency_s: float = 0.0):
    """-> (Popen, base_url): the server in its own process, so a benchmark's client and
    its driver (Ray Data's executor) do not share a GIL with it. Stop with .terminate()."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "engine.llm.fault_server", str(latency_s)],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


if __name__ == "__main__":  # python -m engine.llm.fault_server LATENCY_S: prints its base URL, serves until killed
    import signal
    import sys

    with FaultServer(latency_s=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as _server:
        print(_server.base_url, flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
