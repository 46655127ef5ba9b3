"""One API actor killed -9 mid-call: Ray restarts it and Ray Data hands it its batches again; no
request answered before the kill is paid for again, every pair is judged once, and the spend log
is the endpoint's count (less the requests the kill cut off in flight, each asked once more)."""

import os
import signal
import threading
import time

import pyarrow as pa
import pytest

from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
from lion_distill.data import RunDir
from lion_distill.judging.judge import Judging, judge_pairs
from lion_distill.judging.referee import summarize
from lion_distill.llm.ledger import read_spend
from tests.faults.checks import files_with, paid_twice
from tests.fixtures.counting_proxy import counting_proxy

pytestmark = pytest.mark.faults
KEY_ENV, KEY = "LION_FAULTS_KEY", "sk-lion-faults-2c7e1a-never-written"
PAIRS = 12


def _pairs() -> pa.Table:
    rows = [
        {
            "id": f"p{i:02d}",
            "instruction": f"Name {i} things that are blue.",
            "input": "",
            "teacher_text": f"The sky, the sea and {i} more.",
            "teacher_finish_reason": "stop",
            "student_text": "Blue things.",
            "student_finish_reason": "stop",
        }
        for i in range(PAIRS)
    ]
    return pa.Table.from_pylist(rows)


def _api_actor_pid() -> int:
    """The pid of this job's Ray Data actor: the referee's API actor, the one the call runs now."""
    import ray
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    mine = [a for a in actors().values() if a["JobID"] == job and a["State"] == "ALIVE"]
    pids = [a["Pid"] for a in mine if "MapWorker" in a["ActorClassName"]]
    assert len(pids) == 1, [(a["ActorClassName"], a["Name"]) for a in mine]
    return pids[0]


def test_an_api_actor_killed_mid_call_pays_nothing_twice(ray_cluster, vllm_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    run = RunDir(tmp_path / "run")
    with counting_proxy(vllm_server.base_url, tmp_path, latency_s=0.3) as proxy:
        referee = RoleConfig(
            backend="openai",
            model=vllm_server.model,
            sampling=SamplingParams(temperature=0.0, max_tokens=128),
            parallelism=Parallelism(replicas=1, batch_size=4),
            openai=OpenAIEndpoint(
                base_url=proxy.base_url,
                api_key_env=KEY_ENV,
                max_concurrent_requests=2,
                price_per_1k_prompt_tokens=0.5,
                price_per_1k_completion_tokens=1.5,
            ),
        )
        result = {}

        def judge():
            result["judgments"], result["records"] = judge_pairs(
                referee,
                _pairs(),
                Judging(prompt="lion", constraint="regex", retries=0, use_logprobs=False, tau=1.0),
                run=run,
                stage="discrimination/referee",
                draws="iter_0",
                parts="iter_0/discrimination/parts",
            )

        worker = threading.Thread(target=judge)
        worker.start()
        deadline = time.monotonic() + 300
        while proxy.stats()["by_kind"].get("referee", 0) < PAIRS:  # half of the 2 x 12 reviews
            assert worker.is_alive() and time.monotonic() < deadline, "the kill point was not reached"
            time.sleep(0.05)
        pid = _api_actor_pid()
        before = proxy.stats()
        os.kill(pid, signal.SIGKILL)
        # At most what was in flight then (or sent in the instant before the kill) came back to no one.
        cut_off = before["in_flight"] + proxy.stats()["received"] - before["received"]
        worker.join(600)
        assert not worker.is_alive() and "judgments" in result
        stats = proxy.stats()

    judgments = result["judgments"]
    summary = summarize(judgments)
    # Every pair judged once: judged <= the pool, and the two add up to it.
    assert summary["rows"] == PAIRS and len(set(judgments.column("id").to_pylist())) == PAIRS
    assert summary["judged"] + summary["failed"] == PAIRS and summary["judged"] > 0
    twice = paid_twice(stats)
    assert twice <= cut_off <= 2, (twice, cut_off)  # only what the kill cut off in flight is asked again
    spent = sum(line["requests"] - line["failed"] for line in read_spend(run))
    assert spent == sum(stats["answered"].values()) - twice  # the spend log is the endpoint's count
    assert f"Bearer {KEY}" in stats["authorizations"] and files_with(tmp_path / "run", KEY) == []
