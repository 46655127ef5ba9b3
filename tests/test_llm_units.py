"""lion_distill.llm's pure logic, without Ray or models: milliseconds."""

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lion_distill.config.models import OpenAIEndpoint, RoleConfig
from lion_distill.data.rundir import RunDir
from lion_distill.errors import ErrorKind
from lion_distill.llm import check_structured_output
from lion_distill.llm.cache import (
    CACHE_SCHEMA,
    CacheWriter,
    attach_cache_key,
    cache_key,
    cache_parts,
    cached_response,
    first_per_key,
    joinable,
    read_cache,
    stage_slug,
)
from lion_distill.llm.ledger import cost_usd
from lion_distill.llm.openai_client import Secret, request_body, resolve_api_key
from lion_distill.llm.ratelimit import REFUSED, Admission, ServerHints, TokenBucket, parse_duration_s
from lion_distill.llm.responses import (
    CACHE_KEY_COL,
    CACHED_COL,
    PROMPT_COL,
    attach_prompt,
    encode_prompt,
    error_mask,
    error_row,
    fill_record,
    is_error,
    merge_responses,
    response_row,
    split_accounting,
)
from lion_distill.metrics import StageRecord


def test_token_bucket_reserves_and_refills():
    b = TokenBucket(per_minute=60)  # 1/s, burst 10
    waits = [b.reserve(1, now=0.0) for _ in range(12)]
    assert waits[:10] == [0.0] * 10 and waits[10] == pytest.approx(1.0) and waits[11] == pytest.approx(2.0)
    assert b.reserve(1, now=10.0) == pytest.approx(0.0)  # 10 s refilled 10, 2 were owed, 1 taken
    b.give_back(5, now=10.0)
    assert b.level <= b.capacity


def test_admission_headers_and_budget():
    a = Admission(requests_per_minute=6000, tokens_per_minute=1e9)
    assert a.admit("j", 10, 0.0, None, now=0.0) == 0.0
    a.observe(ServerHints(retry_after_s=3.0), now=1.0)
    assert a.admit("j", 10, 0.0, None, now=1.5) == pytest.approx(2.5)
    a.observe(ServerHints(remaining_requests=0, reset_requests_s=5.0), now=10.0)
    assert a.admit("j", 10, 0.0, None, now=10.0) >= 5.0
    assert a.admit("b", 1, 0.6, 1.0, now=20.0) >= 0 and a.admit("b", 1, 0.6, 1.0, now=20.0) == REFUSED
    a.settle("b", 1, 1, 0.6, 0.1, now=20.0)
    assert a.spent("b") == pytest.approx(0.1)
    level = a.tokens.level
    a.settle("b", 10, 510, 0.0, 0.0, now=20.0)  # 500 tokens past the estimate are taken from the bucket
    assert a.tokens.level == pytest.approx(level - 500)
    assert a.admit("b", 1, 0.6, 1.0, now=20.0) >= 0  # the estimate was replaced by the real cost


def test_header_parsing():
    assert parse_duration_s("6m0s") == 360 and parse_duration_s("20ms") == pytest.approx(0.02)
    assert parse_duration_s("1.5") == 1.5 and parse_duration_s("") is None
    hints = ServerHints.from_headers(
        {"retry-after": "2", "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "1s"}
    )
    assert hints.retry_after_s == 2 and hints.remaining_tokens == 100 and hints.reset_tokens_s == 1
    assert ServerHints.from_headers({"content-type": "json"}) is None


def test_cache_key_covers_every_input():
    base = cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.0}, None, None)
    assert base == cache_key("m", [{"content": "hi", "role": "user"}], {"temperature": 0.0}, None, None)
    others = [
        cache_key("m2", [{"role": "user", "content": "hi"}], {"temperature": 0.0}, None, None),
        cache_key("m", "hi", {"temperature": 0.0}, None, None),
        cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.1}, None, None),
        cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.0}, {"regex": "a"}, None),
        cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.0}, None, 2),
    ]
    assert len({base, *others}) == 6


def test_cache_is_per_stage_parquet_parts_one_row_per_key(tmp_path):
    rd = RunDir(tmp_path)
    a, b = CacheWriter(rd, "iter_0/teacher", flush_every=2), CacheWriter(rd, "iter_0/teacher", flush_every=100)
    for i in range(3):
        a.put(f"k{i}", response_row(str(i), "stop", 3, 4))
    b.put("kb", response_row("b", "length", 1, 2, logprobs='[{"b": -0.1}]'))
    b.put("k1", response_row("1 again", "stop", 3, 4))  # another actor answered the same request
    other = CacheWriter(rd, "other/stage")
    other.put("k0", response_row("elsewhere", "stop"))
    a.flush(), b.flush(), other.flush()
    folder = tmp_path / "llm_cache/responses/iter_0_teacher"
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet"] * 3  # a's two parts, b's one
    (folder / "killed.parquet.tmp-1").write_text("half")  # a writer killed mid-write
    assert [p.base_name for p in cache_parts(rd, "iter_0/teacher")] == sorted(p.name for p in folder.glob("*.parquet"))
    table = read_cache(rd, "iter_0/teacher")
    assert table.schema == CACHE_SCHEMA and sorted(table["key"].to_pylist()) == ["k0", "k1", "k2", "kb"]
    assert {r["key"]: r["text"] for r in table.to_pylist()}["k0"] == "0"  # the other stage's folder is not this one
    assert not cache_parts(rd, "never/run") and read_cache(rd, "never/run").num_rows == 0
    joined = joinable(pa.concat_tables([table, table]))  # duplicate keys: one row each
    assert joined.column_names == [CACHE_KEY_COL, CACHED_COL] and joined.num_rows == 4
    by_key = dict(zip(joined[CACHE_KEY_COL].to_pylist(), map(cached_response, joined[CACHED_COL].to_pylist())))
    assert by_key["kb"] == response_row("b", "length", 1, 2, logprobs='[{"b": -0.1}]') and cached_response(None) is None
    assert stage_slug("generation/generator_round0") == "generation_generator_round0" and stage_slug("..") == "_"


def test_every_answer_is_on_disk_as_it_comes_and_a_killed_writers_journal_becomes_a_part(tmp_path):
    rd = RunDir(tmp_path)
    writer = CacheWriter(rd, "iter_0/teacher", flush_every=100)
    writer.put("k0", response_row("0", "stop", 3, 4))
    writer.put("k1", response_row("1", "stop", 3, 4))
    folder = tmp_path / "llm_cache/responses/iter_0_teacher"
    (journal,) = folder.glob("*.jsonl.open")  # no part yet: the answers are in the writer's journal
    assert sorted(read_cache(rd, "iter_0/teacher")["key"].to_pylist()) == ["k0", "k1"]
    with open(journal, "a") as f:
        f.write('{"key": "k2", "text": "cut sho')  # the writer was killed mid-line
    # The next stage to read the cache (no writer of it runs) makes the journal a part; the torn line is no answer.
    (part,) = cache_parts(rd, "iter_0/teacher")
    assert not list(folder.glob("*.jsonl.open")) and part.base_name.endswith("-recovered.parquet")
    assert pq.read_table(part.path)["key"].to_pylist() == ["k0", "k1"]
    again = CacheWriter(rd, "iter_0/teacher", flush_every=1)  # a part as soon as a journal holds flush_every answers
    again.put("k3", response_row("3", "stop", 1, 1))
    assert not list(folder.glob("*.jsonl.open")) and len(cache_parts(rd, "iter_0/teacher")) == 2


def test_on_an_object_store_the_cache_writes_a_part_every_flush_s(s3_bucket):
    rd = RunDir(f"{s3_bucket}/runs/cache")
    writer = CacheWriter(rd, "s", flush_every=100, flush_s=3600)
    writer.put("k0", response_row("0", "stop"))
    assert read_cache(rd, "s").num_rows == 0  # no appends there: at most flush_s of answers can be lost
    writer.flush_s = 0.0
    writer.put("k1", response_row("1", "stop"))
    assert sorted(read_cache(rd, "s")["key"].to_pylist()) == ["k0", "k1"]


def test_first_per_key_and_the_key_column():
    t = pa.table({"key": ["a", "b", "a", "c", "b"], "v": [1, 2, 3, 4, 5]})
    assert first_per_key(t).to_pylist() == [{"key": "a", "v": 1}, {"key": "b", "v": 2}, {"key": "c", "v": 4}]
    assert first_per_key(t.slice(0, 2)).equals(t.slice(0, 2))
    batch = attach_prompt(lambda r: r["q"], draw="iter_0")(
        pa.Table.from_pylist([{"id": 1, "q": "hi"}, {"id": 2, "q": "hi"}])
    )
    keyed = attach_cache_key("m", {"temperature": 0.0}, None, None)(batch)
    assert keyed[CACHE_KEY_COL].to_pylist() == [
        cache_key("m", "hi", {"temperature": 0.0}, None, None, f"iter_0/{i}") for i in (1, 2)
    ]
    undrawn = attach_cache_key("m", {"temperature": 0.0}, None, 2)(
        attach_prompt(lambda r: r["q"])(batch.select(["id", "q"]))
    )
    assert set(undrawn[CACHE_KEY_COL].to_pylist()) == {cache_key("m", "hi", {"temperature": 0.0}, None, 2)}


def test_prompts_and_responses_reconcile():
    assert json.loads(encode_prompt("raw")) == "raw"
    with pytest.raises(ValueError, match="id='x'"):
        encode_prompt([{"role": "user"}], "x")
    with pytest.raises(ValueError, match="`id`"):
        attach_prompt(lambda r: "p")(pa.Table.from_pylist([{"instruction": "no id"}]))
    with pytest.raises(ValueError, match="to_prompt failed on row id=1"):
        attach_prompt(lambda r: r["missing"])(pa.Table.from_pylist([{"id": 1}]))
    nested = pa.Table.from_pylist(
        [{"id": 7, "meta": {"tags": ["a"]}, "score": None}],
        schema=pa.schema(
            [("id", pa.int64()), ("meta", pa.struct([("tags", pa.list_(pa.string()))])), ("score", pa.float32())]
        ),
    )
    attached = attach_prompt(lambda r: f"tags {r['meta']['tags']}")(nested)
    assert (
        attached.drop_columns([PROMPT_COL]).equals(nested)
        and json.loads(attached[PROMPT_COL][0].as_py()) == "tags ['a']"
    )
    batch = {"id": ["a", "b"], PROMPT_COL: ['"x"', '"y"']}
    responses = [
        {
            "text": "t",
            "reasoning": None,
            "finish_reason": "stop",
            "error_kind": None,
            "error": None,
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "logprobs": None,
            "_api_requests": 1,
            "_api_retries": 2,
            "_api_cached": 0,
            "_api_cost_usd": 0.5,
        },
        {
            **error_row(ErrorKind.BUDGET, "not sent"),
            "_api_requests": 0,
            "_api_retries": 0,
            "_api_cached": 0,
            "_api_cost_usd": 0.0,
        },
    ]
    out = merge_responses(batch, responses, "teacher", with_logprobs=False)
    assert PROMPT_COL not in out and out["role"] == ["teacher"] * 2 and "logprobs" not in out
    assert (out["finish_reason"], out["error_kind"], out["error"]) == (
        ["stop", "error"],
        [None, "budget"],
        [None, "not sent"],
    )
    stats, rows = split_accounting(pa.table({"id": out["id"], **{k: v for k, v in out.items() if k != "id"}}))
    assert not any(c.startswith("_api") for c in rows.column_names) and "text" in rows.column_names
    assert "text" not in stats.column_names and rows.num_rows == stats.num_rows == 2
    rec = StageRecord("s")
    fill_record(rec, stats)
    assert (rec.rows, rec.failed_rows, rec.prompt_tokens, rec.api_requests, rec.api_retries, rec.cost_usd) == (
        2,
        1,
        3,
        1,
        2,
        0.5,
    )
    assert rec.failed_by_kind == {"budget": 1} and rec.as_dict()["failed_budget/s"] == 1


def test_api_key_and_request_shape(monkeypatch):
    remote = RoleConfig(backend="openai", model="gpt", openai=OpenAIEndpoint(api_key_env="LION_TEST_KEY"))
    monkeypatch.delenv("LION_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="LION_TEST_KEY"):
        resolve_api_key(remote)
    local = RoleConfig(
        backend="openai",
        model="m",
        openai=OpenAIEndpoint(base_url="http://127.0.0.1:1/v1", api_key_env="LION_TEST_KEY"),
    )
    assert resolve_api_key(local).reveal() == "EMPTY"
    monkeypatch.setenv("LION_TEST_KEY", "sk-secret")
    key = resolve_api_key(remote)
    assert "sk-secret" not in repr(key) + str(key) + repr([key])
    kw = request_body(remote, [{"role": "user", "content": "q"}], {"json": {"type": "object"}}, 3)
    assert kw["top_logprobs"] == 3 and kw["response_format"]["json_schema"]["schema"] == {"type": "object"}
    kw = request_body(remote, "raw", {"regex": "[0-9]"}, 2)
    assert kw["prompt"] == "raw" and kw["logprobs"] == 2 and kw["structured_outputs"] == {"regex": "[0-9]"}
    assert cost_usd(OpenAIEndpoint(price_per_1k_prompt_tokens=1, price_per_1k_completion_tokens=2), 500, 1000) == 2.5


def test_structured_output_is_checked():
    check_structured_output({"regex": "a"}, "vllm")
    with pytest.raises(ValueError, match="exactly one"):
        check_structured_output({"grammar": "x"}, "openai")
    with pytest.raises(ValueError, match="hf backend"):
        check_structured_output({"regex": "a"}, "hf")


def test_lease_blocks_are_spent_locally_and_returned():
    from lion_distill.llm.ratelimit import LEASE_S, MIN_BLOCK, LocalPermits

    a = Admission(requests_per_minute=600, tokens_per_minute=60_000)  # 10 req/s, burst 100; 1000 tok/s
    p = LocalPermits()
    assert p.take(10, 0.0, now=0.0) is None  # nothing held yet
    ask = p.ask(10, 0.0, now=0.0)
    assert ask[:2] == (1, 10) and ask[3:5] == (MIN_BLOCK, MIN_BLOCK * 10)
    p.apply(a.lease("j", *ask, None, 0.0), now=0.0)
    assert [p.take(10, 0.0, now=0.0) for _ in range(MIN_BLOCK + 1)] == [0.0] * MIN_BLOCK + [None]
    # Used up within LEASE_S: the next block doubles; a grant never exceeds LEASE_S of the rate.
    assert p.ask(10, 0.0, now=0.1)[3] == 2 * MIN_BLOCK
    p.taken = 1000
    g = a.lease("j", *p.ask(10, 0.0, now=0.1), None, 0.1)
    assert g.requests == 10 * LEASE_S and g.tokens == 1000 * LEASE_S and g.wait_s == 0.0
    p.apply(g, now=0.1)
    p.settle(10, 4, 0.0, 0.0)  # unused tokens stay local, to spend again
    assert p.tokens == pytest.approx(MIN_BLOCK * 10 - MIN_BLOCK * 10 + g.tokens + 6)
    p.settle(10, 10 + g.tokens + 50, 0.0, 0.0)  # a reply far past its estimate: a debt the next lease pays
    assert p.tokens == pytest.approx(-44) and p.ask(10, 0.0, now=0.1)[1] == pytest.approx(54)
    level, token_level = a.requests.level, a.tokens.level
    a.release("j", p.report(everything=True), now=0.1)  # the debt goes back with the unused requests
    assert a.requests.level == pytest.approx(level + 10) and a.tokens.level == pytest.approx(token_level - 44)
    assert p.requests == p.tokens == 0
    # Blocks past the burst wait (reservation style): the wait is for the whole block.
    a2 = Admission(requests_per_minute=600, tokens_per_minute=10**9)
    waits = [a2.lease("j", 1, 10, 0, 10, 100, 0, None, 0.0).wait_s for _ in range(12)]  # 10 at a time
    assert waits[:10] == [0.0] * 10 and waits[10:] == [pytest.approx(1.0), pytest.approx(2.0)]


def test_lease_budget_slices_never_exceed_the_budget():
    from lion_distill.llm.ratelimit import LocalPermits

    a = Admission(requests_per_minute=10**6, tokens_per_minute=10**9)
    holders = [LocalPermits(), LocalPermits()]
    spent = sent = 0
    for i in range(100):
        p = holders[i % 2]
        if p.refused:
            continue
        if p.take(10, 0.03, now=0.0) is None:
            p.apply(a.lease("b", *p.ask(10, 0.03, now=0.0), 1.0, 0.0, p.report(everything=False)), now=0.0)
            if p.take(10, 0.03, now=0.0) is None:
                assert p.refused
                continue
        sent += 1
        p.settle(10, 10, 0.03, 0.02)  # cost below the estimate: the slice keeps the rest
        spent += 0.02
    for p in holders:
        a.release("b", p.report(everything=True), now=1.0)
    assert all(p.refused for p in holders) and a.spent("b") == pytest.approx(spent) and spent <= 1.0
    assert sent >= 40  # a $1 budget at <= $0.03 worst case: at least 33, more as real costs come in lower
    assert a.budgets["b"].reserved_usd == pytest.approx(0.0, abs=1e-9)


def test_lease_pause_reaches_every_holder():
    from lion_distill.llm.ratelimit import LocalPermits

    a = Admission(requests_per_minute=6000, tokens_per_minute=10**9)
    p, q = LocalPermits(), LocalPermits()
    p.apply(a.lease("j", *p.ask(1, 0, now=0.0), None, 0.0), now=0.0)
    q.apply(a.lease("j", *q.ask(1, 0, now=0.0), None, 0.0), now=0.0)
    assert p.observe(ServerHints(remaining_requests=50), now=0.0) is False  # no hurry: sent with the next lease
    assert p.requests <= 50 and len(p.hints) == 1
    assert p.observe(ServerHints(retry_after_s=2.0), now=0.0) is True  # the actor tells the gate at once
    assert p.take(1, 0, now=0.5) == pytest.approx(1.5)  # its own held permits wait
    a.observe(ServerHints(retry_after_s=2.0), now=0.0)
    q.requests = 0  # q pulls the pause with its next lease
    q.apply(a.lease("j", *q.ask(1, 0, now=1.0), None, 1.0, q.report(everything=False)), now=1.0)
    assert q.take(1, 0, now=1.0) == pytest.approx(1.0)


def test_leased_gate_one_lease_serves_many_requests():
    import asyncio

    from lion_distill.llm.ratelimit import LeasedGate

    a = Admission(requests_per_minute=10**6, tokens_per_minute=10**9)
    calls = []

    class Remote:
        async def lease(self, job, ask, budget, report):
            calls.append("lease")
            await asyncio.sleep(0.01)
            return a.lease(job, *ask, budget, 0.0, report)

        async def release(self, job, report):
            calls.append("release")
            a.release(job, report, 0.0)

        async def observe(self, hints):
            calls.append("observe")
            a.observe(hints, 0.0)

    gate = LeasedGate(Remote())

    async def run():
        waits = await asyncio.gather(*(gate.admit("j", 5, 0.01, 1.0) for _ in range(200)))
        for _ in range(200):
            await gate.settle("j", 5, 5, 0.01, 0.005)
        await gate.observe(ServerHints(retry_after_s=0.0))
        await gate.release()
        return waits

    waits = asyncio.run(run())
    assert waits.count(REFUSED) == 100 and calls.count("lease") < 20 and calls[-2:] == ["observe", "release"]
    assert a.spent("j") == pytest.approx(200 * 0.005) and a.budgets["j"].reserved_usd == pytest.approx(0.0, abs=1e-9)


def recorded_progress_bars(monkeypatch) -> list:
    """Replaces the openai backend's progress bar with one that records (total, n, closed)."""
    from lion_distill.llm import openai_client

    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(openai_client, "_progress_bar", Bar)
    return bars


def test_aiohttp_transport_keeps_failure_reasons_retries_and_progress(monkeypatch):
    """The bare generator (no Ray) on the aiohttp transport: failure reasons and retry
    counts read as they did with httpx (the vendored transport calls a refused connection
    a timeout), and the progress bar counts every request."""
    from lion_distill.config.models import Parallelism, SamplingParams
    from lion_distill.llm import openai_client
    from tests.fixtures.fault_server import FaultServer

    assert "aiohttp" in type(openai_client._http_client({}, 8)._transport).__mro__[1].__module__
    bars = recorded_progress_bars(monkeypatch)
    monkeypatch.setattr(openai_client, "PROGRESS_EVERY", 2)
    faults = ["fault:429", "fault:500", "fault:stall", "fault:cutoff", "ok"]
    with FaultServer(stall_s=2.0) as server:

        def gen(base_url):
            role = RoleConfig(
                backend="openai",
                model="fake",
                sampling=SamplingParams(temperature=0.0, max_tokens=8),
                parallelism=Parallelism(batch_size=8),
                openai=OpenAIEndpoint(base_url=base_url, timeout_s=0.5, max_retries=1),
            )
            return openai_client.OpenAIGenerator(role, role_name="t", api_key=Secret("EMPTY"))

        async def ask(base_url, batch):
            generator = gen(base_url)
            try:
                return await generator(batch)
            finally:  # an open aiohttp session logs "Unclosed connector" into a later test when collected
                await generator.client.close()

        out = asyncio.run(
            ask(
                server.base_url,
                {PROMPT_COL: [encode_prompt([{"role": "user", "content": f}]) for f in faults], "id": faults},
            )
        )
    assert list(out["finish_reason"]) == ["stop", "stop", "error", "error", "stop"]
    assert list(out["error_kind"]) == [None, None, "timeout", "connection", None]
    assert list(out["error"]) == [None, None, "timeout", "connection error (RemoteProtocolError)", None]
    assert list(out["_api_retries"]) == [1, 1, 1, 1, 0]
    refused = asyncio.run(ask("http://127.0.0.1:9/v1", {PROMPT_COL: [encode_prompt("x")], "id": ["x"]}))
    assert (list(refused["error_kind"]), list(refused["error"])) == (
        ["connection"],
        ["connection error (ConnectError)"],
    )
    assert list(refused["_api_retries"]) == [1]
    assert [(b.total, b.n, b.closed) for b in bars] == [(5, 5, True), (1, 1, True)]


def test_overlapping_batches_share_the_in_flight_cap_and_one_bar(monkeypatch):
    """Ray Data runs several batches at once on an API actor's event loop: together they
    stay under max_concurrent_requests, and the actor shows one bar until it goes idle."""
    import urllib.request

    from lion_distill.llm import openai_client
    from tests.fixtures.fault_server import FaultServer

    bars = recorded_progress_bars(monkeypatch)
    latency = 0.2
    with FaultServer(latency_s=latency) as server:
        role = RoleConfig(
            backend="openai", model="fake", openai=OpenAIEndpoint(base_url=server.base_url, max_concurrent_requests=2)
        )
        generator = openai_client.OpenAIGenerator(role, role_name="t", api_key=Secret("EMPTY"))

        def batch(names):
            return {PROMPT_COL: [encode_prompt([{"role": "user", "content": n}]) for n in names], "id": names}

        async def overlapping():
            answers = await asyncio.gather(generator(batch(["a", "b", "c"])), generator(batch(["d", "e"])))
            await generator.client.close()
            return answers

        first, second = asyncio.run(overlapping())
        with urllib.request.urlopen(f"{server.base_url}/_window") as r:
            window = json.load(r)
    assert list(first["text"]) == ["echo: a", "echo: b", "echo: c"] and list(second["text"]) == ["echo: d", "echo: e"]
    # 5 requests, 2 at a time across both batches: 3 rounds at least, as the server saw them
    assert window["answered"] == 5 and window["span_s"] >= 3 * latency
    assert [(b.total, b.n, b.closed) for b in bars] == [(5, 5, True)]


def test_a_failed_request_is_told_apart_from_a_missing_response_alike_on_rows_and_columns():
    reasons = [error_row(ErrorKind.ENGINE_LOST, "engine error 500: boom")["finish_reason"], "stop", "length", None, ""]
    assert [is_error(r) for r in reasons] == [True, False, False, False, False]
    assert error_mask(pa.array(reasons, pa.string())).to_pylist() == [is_error(r) for r in reasons]
    rec = StageRecord("s")
    fill_record(
        rec,
        pa.table(
            {
                "prompt_tokens": [1] * 5,
                "completion_tokens": [1] * 5,
                "finish_reason": pa.array(reasons, pa.string()),
                "error_kind": pa.array(["engine_lost", None, None, None, None], pa.string()),
            }
        ),
    )
    assert rec.failed_rows == 2  # a stage's row without a reason was lost: counted with the failed
    assert rec.failed_by_kind == {"engine_lost": 1}


def test_a_servers_retry_after_is_capped_and_a_new_jobs_limits_replace_the_gates():
    from lion_distill.llm.ratelimit import Admission, ServerHints

    hints = ServerHints.from_headers({"retry-after": "3600", "x-ratelimit-reset-tokens": "2h"}, max_wait_s=60.0)
    assert (hints.retry_after_s, hints.reset_tokens_s) == (60.0, 60.0)
    gate = Admission(requests_per_minute=60, tokens_per_minute=6000)
    gate.observe(hints, now=0.0)
    assert gate.blocked_until == 60.0  # every actor pauses a minute, not an hour
    # The gate outlives jobs (a detached actor per endpoint): the next job's limits replace the first's.
    gate.set_limits(requests_per_minute=600, tokens_per_minute=6000)
    assert gate.requests.per_minute == 600 and gate.requests.capacity == 100 and gate.tokens.per_minute == 6000
