"""The openai backend on the shared Ray cluster: a real vLLM server, then faults,
cache, budget and the API key against the fault-injecting server."""

import json
import re

import pyarrow.parquet as pq
import pytest
import ray

from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
from lion_distill.data.rundir import RunDir
from lion_distill.llm import generate
from lion_distill.llm.prompts import instruction_messages
from tests.fixtures.fault_server import FaultServer

KEY_ENV, KEY = "LION_TEST_OPENAI_KEY", "sk-lion-test-7f3a9c-do-not-leak"
ROWS = [{"id": f"r{i}", "instruction": f"Question {i}?", "input": ""} for i in range(8)]


def _role(base_url, model, **endpoint):
    return RoleConfig(
        backend="openai",
        model=model,
        sampling=SamplingParams(temperature=0.0, max_tokens=8),
        parallelism=Parallelism(replicas=2, batch_size=4),
        openai=OpenAIEndpoint(base_url=base_url, api_key_env=KEY_ENV, **endpoint),
    )


def test_real_server_structured_output_logprobs_and_cache(ray_cluster, vllm_server, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    role = _role(vllm_server.base_url, vllm_server.model)
    ds = ray.data.from_items(ROWS)
    out, rec = generate(
        role,
        ds,
        instruction_messages,
        stage="t/api",
        role_name="referee",
        run_dir=run_dir,
        structured_output={"regex": "[1-9]/10"},
        logprobs=2,
    )
    rows = out.take_all()
    assert len(rows) == rec.rows == len(ROWS) and rec.failed_rows == 0 and rec.api_requests == len(ROWS)
    for r in rows:
        assert re.fullmatch("[1-9]/10", r["text"]) and r["completion_tokens"] > 0 and r["prompt_tokens"] > 0
        assert all(len(step) >= 2 for step in json.loads(r["logprobs"]))
    again, rec2 = generate(
        role,
        ds,
        instruction_messages,
        stage="t/api",
        role_name="referee",
        run_dir=run_dir,
        structured_output={"regex": "[1-9]/10"},
        logprobs=2,
    )
    assert (rec2.api_requests, rec2.api_cached) == (0, len(ROWS))
    assert sorted((r["id"], r["text"]) for r in again.take_all()) == sorted((r["id"], r["text"]) for r in rows)


def test_raw_prompts_use_completions(ray_cluster, vllm_server):
    role = _role(vllm_server.base_url, vllm_server.model)
    out, rec = generate(
        role, ray.data.from_items(ROWS[:3]), lambda r: r["instruction"], stage="t/raw", role_name="teacher"
    )
    assert rec.failed_rows == 0 and all(isinstance(r["text"], str) for r in out.take_all())


def test_faults_end_answered_or_marked(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    faults = ["fault:429", "fault:500", "fault:stall", "fault:malformed", "fault:cutoff"]
    rows = [{"id": f, "instruction": f, "input": ""} for f in faults] + ROWS
    run_dir = RunDir(tmp_path / "run")
    with FaultServer(stall_s=5.0) as server:
        role = _role(server.base_url, "fake", timeout_s=1.0, max_retries=1)
        out, rec = generate(
            role,
            ray.data.from_items(rows),
            instruction_messages,
            stage="t/faults",
            role_name="teacher",
            run_dir=run_dir,
        )
        by_id = {r["id"]: r for r in out.take_all()}
        assert len(by_id) == rec.rows == len(rows)
        assert by_id["fault:429"]["text"] == "echo: fault:429" and by_id["fault:500"]["text"] == "echo: fault:500"
        assert (by_id["fault:stall"]["finish_reason"], by_id["fault:stall"]["error_kind"]) == ("error", "timeout")
        assert by_id["fault:malformed"]["text"] is None and by_id["fault:malformed"]["error_kind"] == "unparseable"
        assert by_id["fault:cutoff"]["error_kind"] == "connection"
        assert rec.failed_by_kind == {"timeout": 1, "unparseable": 1, "connection": 1}
        assert rec.failed_rows == 3 and rec.api_requests == len(rows)
        assert rec.api_retries == 2 + 1 + 1  # 429 and 500 once each, stall and cutoff retried once
        assert f"Bearer {KEY}" in server.authorizations
        hits = server.total_hits
        # A re-run sends only the failed rows again: answered ones come from the cache.
        _, rec2 = generate(
            role,
            ray.data.from_items(rows),
            instruction_messages,
            stage="t/faults",
            role_name="teacher",
            run_dir=run_dir,
        )
        assert (rec2.api_cached, rec2.api_requests) == (len(rows) - 3, 3)
        assert server.hits["Question 0?"] == 1 and server.total_hits > hits
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any("ledger" in str(p) for p in files) and any("responses" in str(p) for p in files)
    assert not [p for p in files if KEY.encode() in p.read_bytes()]


def test_budget_stops_cleanly_and_keeps_what_was_done(ray_cluster, tmp_path):
    rows = [{"id": f"b{i}", "instruction": f"Budget {i}", "input": ""} for i in range(40)]
    run_dir = RunDir(tmp_path / "run")
    with FaultServer(latency_s=0.02) as server:
        # A request costs at most ~$0.01 (prompt estimate + 8 tokens at $1/1k): a $0.1 budget buys ~10.
        role = _role(
            server.base_url,
            "fake",
            price_per_1k_prompt_tokens=1.0,
            price_per_1k_completion_tokens=1.0,
            budget_usd=0.1,
            max_concurrent_requests=4,
        )
        out, rec = generate(
            role,
            ray.data.from_items(rows),
            instruction_messages,
            stage="t/budget",
            role_name="generator",
            run_dir=run_dir,
        )
        got = out.take_all()
        answered = [r for r in got if r["text"] is not None]
        assert len(got) == 40 and 0 < len(answered) < 40 and rec.cost_usd <= 0.1
        assert all((r["finish_reason"], r["error_kind"]) == ("error", "budget") for r in got if r["text"] is None)
        assert server.total_hits == rec.api_requests == len(answered)
        ledger = json.loads(next((tmp_path / "run/llm_cache/ledger").glob("*.json")).read_text())
        assert ledger["cost_usd"] == pytest.approx(rec.cost_usd) and ledger["failed_rows"] == 40 - len(answered)
        # What was done is cached: a re-run with a larger budget only sends the rest.
        role2 = role.model_copy(update={"openai": role.openai.model_copy(update={"budget_usd": 10.0})})
        _, rec2 = generate(
            role2,
            ray.data.from_items(rows),
            instruction_messages,
            stage="t/budget",
            role_name="generator",
            run_dir=run_dir,
        )
        assert (rec2.api_cached, rec2.api_requests, rec2.failed_rows) == (len(answered), 40 - len(answered), 0)


def test_the_cache_is_the_stages_own_and_joined_before_the_actors(ray_cluster, tmp_path, monkeypatch):
    import shutil

    import lion_distill.llm

    # r0's question three times: one request key, answered by (and cached from) up to three requests.
    rows = ROWS + [{"id": f"dup{i}", "instruction": ROWS[0]["instruction"], "input": ""} for i in range(2)]
    run_dir = RunDir(tmp_path / "run")
    folder = tmp_path / "run/llm_cache/responses/t_cache"
    with FaultServer() as server:
        role = _role(server.base_url, "fake")
        out, rec = generate(
            role, ray.data.from_items(rows), instruction_messages, stage="t/cache", role_name="teacher", run_dir=run_dir
        )
        first = sorted((r["id"], r["text"]) for r in out.take_all())
        assert rec.rows == len(first) == len(rows) and rec.api_requests == len(rows) and rec.api_cached == 0
        parts = sorted(folder.glob("*.parquet"))
        assert parts and sum(pq.read_metadata(p).num_rows for p in parts) == len(rows)  # r0's answer is there 3 times
        shutil.copy(parts[0], folder / "another-actor-000000.parquet")  # and more copies, in another writer's part
        (folder / "killed-000000.parquet.tmp-1").write_bytes(b"half a part")  # a writer killed mid-write
        # Another stage's cache is never read: its folder could hold anything.
        (tmp_path / "run/llm_cache/responses/t_elsewhere").mkdir()
        (tmp_path / "run/llm_cache/responses/t_elsewhere/x-000000.parquet").write_bytes(b"not parquet")
        hits = server.total_hits
        for one_task_bytes in (
            lion_distill.llm.CACHE_DEDUPE_ONE_TASK_BYTES,
            0,
        ):  # the cache deduplicated in one task, by a shuffle
            monkeypatch.setattr(lion_distill.llm, "CACHE_DEDUPE_ONE_TASK_BYTES", one_task_bytes)
            again, rec2 = generate(
                role,
                ray.data.from_items(rows),
                instruction_messages,
                stage="t/cache",
                role_name="teacher",
                run_dir=run_dir,
            )
            assert (rec2.rows, rec2.api_requests, rec2.api_cached, rec2.failed_rows) == (len(rows), 0, len(rows), 0)
            assert sorted((r["id"], r["text"]) for r in again.take_all()) == first
            assert set(again.columns()) == set(out.columns())  # no cache column left behind
        assert server.total_hits == hits  # nothing sent
        # The cache is per stage: the same requests in another stage are sent (the old run-wide cache answered them).
        _, rec3 = generate(
            role,
            ray.data.from_items(rows[:4]),
            instruction_messages,
            stage="t/cache2",
            role_name="teacher",
            run_dir=run_dir,
        )
        assert (rec3.api_requests, rec3.api_cached) == (4, 0) and server.total_hits == hits + 4
    assert len(list(folder.glob("*.parquet"))) == len(parts) + 1  # an all-cached stage writes nothing
