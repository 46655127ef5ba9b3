"""A failed request's kind is set once, at its backend's edge (docs/design.md, "Data contracts"):
the openai client's exceptions and HTTP statuses from a scripted server on loopback, Ray's
processors' inference errors and the Serve engine's error replies, the budget stop; then a real
vLLM server's context-length 400. Milliseconds, but for the last test (the session's vLLM server)."""

import ast
import asyncio
import re
from pathlib import Path

from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
from lion_distill.errors import ErrorKind
from lion_distill.llm.openai_client import OpenAIGenerator, Secret, status_kind
from lion_distill.llm.responses import PROMPT_COL, encode_prompt, error_row, inference_error_row
from lion_distill.llm.serve_backend import RETRY, serve_response
from lion_distill.llm.vllm_backend import to_response
from tests.fixtures.fault_server import FaultServer

REPO = Path(__file__).resolve().parents[1]


def _ask(base_url: str, texts: list[str], model: str = "fake", **endpoint) -> dict:
    """The bare generator (no Ray, its own gate) over one batch of chat prompts; its client closed."""
    role = RoleConfig(
        backend="openai",
        model=model,
        sampling=SamplingParams(temperature=0.0, max_tokens=8),
        parallelism=Parallelism(batch_size=len(texts)),
        openai=OpenAIEndpoint(base_url=base_url, **{"timeout_s": 0.5, "max_retries": 0, **endpoint}),
    )
    generator = OpenAIGenerator(role, role_name="t", api_key=Secret("EMPTY"))

    async def run():
        try:
            return await generator(
                {PROMPT_COL: [encode_prompt([{"role": "user", "content": t}]) for t in texts], "id": texts}
            )
        finally:
            await generator.client.close()

    return asyncio.run(run())


def test_the_openai_clients_failures_become_kinds():
    faults = {
        "fault:429": "rate_limit",
        "fault:500": "server_error",
        "fault:status 503": "server_error",
        "fault:stall": "timeout",
        "fault:status 408": "timeout",
        "fault:cutoff": "connection",
        "fault:status 400 context_length_exceeded": "context_overflow",  # OpenAI's code for it
        "fault:status 400": "bad_request",
        "fault:status 422": "bad_request",
        "fault:status 401": "refused",
        "fault:status 404": "refused",
        "fault:filtered": "refused",  # the content filter stopped the answer
        "fault:malformed": "unparseable",
        "fine": None,
    }
    with FaultServer(stall_s=2.0) as server:
        out = _ask(server.base_url, list(faults))
    assert dict(zip(faults, out["error_kind"])) == faults
    assert [r for r, kind in zip(out["finish_reason"], faults.values()) if kind] == ["error"] * (len(faults) - 1)
    assert out["finish_reason"][-1] == "stop" and out["text"][-1] == "echo: fine" and out["error"][-1] is None
    errors = dict(zip(faults, out["error"]))
    assert errors["fault:status 400"] == "HTTP 400: status 400"  # the server's own message, not the client's wrapper
    assert errors["fault:cutoff"] == "connection error (RemoteProtocolError)" and errors["fault:stall"] == "timeout"
    assert all(text is None for text, kind in zip(out["text"], faults.values()) if kind)


def test_a_spent_budget_fails_every_row_of_the_kind_budget_and_sends_nothing():
    with FaultServer() as server:
        out = _ask(
            server.base_url,
            ["a", "b"],
            price_per_1k_prompt_tokens=1.0,
            price_per_1k_completion_tokens=1.0,
            budget_usd=1e-6,
        )
        assert server.total_hits == 0
    assert list(out["error_kind"]) == ["budget", "budget"] and list(out["_api_requests"]) == [0, 0]
    assert "budget_usd" in out["error"][0]


def test_http_statuses_and_bodies_map_to_kinds():
    vllm_overflow = (
        "This model's maximum context length is 1024 tokens. However, your prompt contains 1063 input tokens, "
        "which exceeds this limit even without any output tokens."
    )
    assert status_kind(400, vllm_overflow) == ErrorKind.CONTEXT_OVERFLOW  # vLLM has no code for it: its text
    assert status_kind(400, "too long", param="input_tokens") == ErrorKind.CONTEXT_OVERFLOW  # VLLMValidationError's
    assert status_kind(400, "x", code="context_length_exceeded") == ErrorKind.CONTEXT_OVERFLOW
    assert status_kind(400, "structured_outputs: bad regex") == ErrorKind.BAD_REQUEST
    assert [status_kind(s, "") for s in (429, 500, 502, 401, 403, 404, 408, 409)] == [
        "rate_limit",
        "server_error",
        "server_error",
        "refused",
        "refused",
        "refused",
        "timeout",
        "bad_request",
    ]


def test_ray_processors_inference_errors_map_to_kinds():
    errors = {
        "VLLMValidationError: The decoder prompt (length 1100) is longer than the maximum model length of 1024.": (
            "context_overflow"
        ),
        "ValueError: nope": "bad_request",
        "TimeoutError: no reply within 60 s": "timeout",
        "RuntimeError: CUDA error: an illegal memory access": "server_error",
    }
    assert {e: inference_error_row(e)["error_kind"] for e in errors} == errors
    # The per-stage vLLM engines' rows (lion_distill.llm.vllm_backend): the error, whole, as the message.
    row = to_response(
        {"id": "x", "__inference_error__": "ValueError: nope"},
        keep=["id"],
        role_name="r",
        max_tokens=8,
        with_logprobs=False,
    )
    assert (row["finish_reason"], row["error_kind"], row["error"], row["text"]) == (
        "error",
        "bad_request",
        "ValueError: nope",
        None,
    )
    fine = to_response(
        {"id": "y", "generated_text": "hi", "num_generated_tokens": 8, "num_input_tokens": 3},
        keep=["id"],
        role_name="r",
        max_tokens=8,
        with_logprobs=False,
    )
    assert (fine["finish_reason"], fine["error_kind"], fine["error"]) == ("length", None, None)


def test_the_serve_engines_replies_map_to_kinds_and_a_lost_request_is_sent_again():
    def reply(**fields):
        return serve_response({"_in__id": "x", **fields}, chat=True, role_name="t", with_logprobs=False)

    lost = reply(error={"code": 500, "message": "EngineDeadError"})
    assert lost[RETRY] and (lost["error_kind"], lost["error"]) == ("engine_lost", "engine error 500: EngineDeadError")
    overflow = reply(error={"code": 400, "message": "This model's maximum context length is 1024 tokens."})
    assert not overflow[RETRY] and overflow["error_kind"] == "context_overflow"
    timeout = reply(__inference_error__="TimeoutError: the engine did not answer")
    assert timeout[RETRY] and timeout["error_kind"] == "timeout"


def test_a_message_never_keeps_a_uris_credentials():
    row = error_row(ErrorKind.CONNECTION, "cannot reach https://me:s3cret@api.example.com/v1")
    assert row["error"] == "cannot reach https://***@api.example.com/v1" and row["text"] is None


def test_no_code_reads_a_failure_from_its_message():
    """After the backend edge a failure is its kind: no module compares a finish_reason, status or
    error message by prefix or pattern (the old `failed: <reason>` strings), so nothing can."""
    banned = ('"failed: ', "is_failed", "failed_mask", 'startswith("failed', "failed_by_reason", "context_overflow(")
    edge = {"lion_distill/llm/responses.py", "lion_distill/llm/openai_client.py"}  # where messages are read, once
    found = [
        f"{path.relative_to(REPO)}: {word}"
        for path in (REPO / "lion_distill").rglob("*.py")
        for word in banned
        if word in path.read_text() and str(path.relative_to(REPO)) not in edge
    ]
    assert found == []
    regex_readers = [
        str(p.relative_to(REPO))
        for p in (REPO / "lion_distill").rglob("*.py")
        if re.search(r"^_OVERFLOW = |overflow_kind\(", p.read_text(), re.MULTILINE)
    ]
    assert sorted(regex_readers) == [
        "lion_distill/llm/openai_client.py",
        "lion_distill/llm/responses.py",
    ]  # the one reading of a context overflow's text: at the openai edge and Ray's processors'


# Where a backend meets its engine or API and reads what it says, once: into an ErrorKind
# (responses, openai_client), or whether an engine's start failed for good (engine_start,
# serve_server, vllm_backend read Ray's and Serve's messages: they have no codes).
EDGE = {
    "lion_distill/llm/responses.py",
    "lion_distill/llm/openai_client.py",
    "lion_distill/llm/engine_start.py",
    "lion_distill/llm/serve_server.py",
    "lion_distill/llm/vllm_backend.py",
    "lion_distill/llm/scorers.py",  # the scoring pass's client of a server: it words the server's refusal
    "lion_distill/distill/teacher.py",  # preflight's scoring probe of the teacher's server, likewise
}
# Names a failure's text travels under: a response's `error`/`finish_reason`, a judgment's
# `failure`/`status`, a reject's `reason`, an exception's message.
FAILURE_TEXT = re.compile(r"error|failure|finish_reason|status|reason|message|^msg$")
PREFIX_TESTS = {"startswith", "endswith", "removeprefix", "partition", "split", "find", "index"}
EXCEPTION_NAMES = {"e", "exc", "err", "error", "exception"}
PATTERN_TESTS = {"search", "match", "fullmatch", "findall", "finditer", "sub"}


def _about_failure_text(node: ast.AST) -> bool:
    """The expression reads a failure's text: a name, attribute or key like `error`, or an
    exception made a string (`str(e)`)."""
    for n in ast.walk(node):
        name = (
            n.id
            if isinstance(n, ast.Name)
            else n.attr
            if isinstance(n, ast.Attribute)
            else n.slice.value
            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
            else None
        )
        if isinstance(name, str) and FAILURE_TEXT.search(name):
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "str" and n.args:
            if isinstance(n.args[0], ast.Name) and n.args[0].id in EXCEPTION_NAMES:
                return True
    return False


def text_tests_of_failures(source: str) -> list[int]:
    """The lines that test a failure's text: by prefix or split (`error.partition(": ")`), by
    pattern (`re.search(..., error)`, `PATTERN.match(message)`), or by substring
    (`"timeout" in str(e)`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        subjects = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in PREFIX_TESTS:
                subjects = [node.func.value]
            elif node.func.attr in PATTERN_TESTS:
                on_re = isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                subjects = node.args[1:] if on_re else node.args
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            subjects = [c for op, c in zip(node.ops, node.comparators) if isinstance(op, (ast.In, ast.NotIn))]
        if any(_about_failure_text(s) for s in subjects):
            lines.append(node.lineno)
    return lines


def test_the_text_test_finder_finds_each_way_of_reading_a_message():
    src = (
        'if row["finish_reason"].startswith("failed"): pass\n'
        'reason, _, detail = error.partition(": ")\n'
        're.search("context", r["error"])\n'
        "OVERFLOW.search(message)\n"
        'ok = "timeout" not in str(e)\n'
        'fine = "choices" in row and text.startswith("{") and NUMBER.match(reply)\n'
        'remote = "://" in str(path)\n'
    )
    assert text_tests_of_failures(src) == [1, 2, 3, 4, 5]


def test_no_code_after_the_backend_edge_reads_a_failure_from_its_text():
    """A failure after the edge is a typed value: an ErrorKind, a ParseFailure, a Reject
    (lion_distill.data.records), never a string split or matched to learn what failed."""
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "lion_distill").rglob("*.py"))
        if str(path.relative_to(REPO)) not in EDGE
        for line in text_tests_of_failures(path.read_text())
    ]
    assert found == []


def test_a_real_vllm_servers_context_length_400_is_a_context_overflow(vllm_server):
    """vLLM's OpenAI server (max_model_len 1024) refuses a longer prompt with a 400 whose kind only
    its text says: read at the edge, once."""
    out = _ask(vllm_server.base_url, ["word " * 1500, "Say hi."], model=vllm_server.model, timeout_s=60.0)
    out_model = dict(zip(out["id"], zip(out["finish_reason"], out["error_kind"], out["error"])))
    finish, kind, error = out_model["word " * 1500]
    assert (finish, kind) == ("error", "context_overflow") and error.startswith("HTTP 400: "), error
    assert out_model["Say hi."][:2] in (("stop", None), ("length", None))


def test_a_transformers_batch_that_raises_fails_its_rows_as_the_engines(tiny_models, monkeypatch):
    """hf's edge: a batch whose generate raises (out of memory; injected: a CPU will not run out
    on cue) keeps its rows, each failed with the kind server_error; a batch that runs has none."""
    import torch

    from lion_distill.llm.hf import HFGenerator

    role = RoleConfig(backend="hf", model=str(tiny_models.llama), sampling=SamplingParams(max_tokens=2))
    generator = HFGenerator(role, role_name="student")
    batch = {PROMPT_COL: [encode_prompt("Hello"), encode_prompt("Hi")], "id": ["a", "b"]}
    fine = generator(batch)
    assert fine["error_kind"] == [None, None] and set(fine["finish_reason"]) <= {"stop", "length"}

    def out_of_memory(encoded):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generator, "generate", out_of_memory)
    failed = generator(batch)
    assert failed["error_kind"] == ["server_error"] * 2 and failed["text"] == [None, None]
    assert failed["error"][0] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
