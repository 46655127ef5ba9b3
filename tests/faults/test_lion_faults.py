"""One Lion run through every fault the field has, each at a named point, then resumed by the same
command; at the end: the run finished, every request answered was paid for once (a counting proxy
of the session's vLLM server), counts reconcile with the pool, no stale state, no secret written.

On a private cluster A (a KubeRay RayJob's first attempt, by its `RAY_CLUSTER_NAME`):
  1. the API goes down after 3 of the teacher's 8 answers: the job stops, asking nothing else;
     the API comes back at the same address, and the resubmit asks exactly the 5 failed again;
  2. a Ray Train worker is killed mid-export: the job ends; the next one resumes the training;
  3. the driver is killed between the imitation's end and its record;
  4. the driver is killed mid-cleanup (the recorded imitation's checkpoints half deleted);
  5. a part writer is killed mid-write, then the whole cluster, driver included, mid-call of the referee;
then on the session's cluster (a new head, the RayJob's retry: another RAY_CLUSTER_NAME):
  6. the same command takes the lock over and finishes.
"""

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lion_distill.data import RunDir
from lion_distill.llm.ledger import read_spend
from tests.faults import jobs
from tests.faults.checks import files_with, leftovers, paid_twice
from tests.fixtures.counting_proxy import answered, counting_proxy

pytestmark = pytest.mark.faults
KUBERAY = {"RAY_CLUSTER_NAMESPACE": "ml"}


def _teacher(stats: dict) -> int:
    return stats["by_kind"].get("teacher", 0)


def test_a_lion_run_survives_every_named_fault_and_pays_each_answer_once(ray_cluster, vllm_server, tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    lost = 0  # requests a kill may have cut off in flight: each may be asked (and paid) once more

    def start(cluster, step, proxy, **kw):
        return jobs.start(cluster.address, run, proxy.base_url, vllm_server.model, logs / f"{step}.log", **kw)

    first_attempt = {"RAY_CLUSTER_NAME": "lion-faults-raycluster-aaaaa", **KUBERAY}
    with jobs.private_cluster(tmp_path) as cluster_a:
        # 1. An outage mid-call: the API answers 3 requests, then its port is closed.
        with counting_proxy(vllm_server.base_url, tmp_path, exit_after=3) as down:
            port = down.port
            job = start(cluster_a, "1-outage", down, **first_attempt)
            assert job.wait() == 1, job.tail()
        assert (
            "stopped: iteration 0 imitation: the teacher: 5 of 8 requests failed for a reason that passes" in job.tail()
        )
        assert "Traceback" not in job.tail() and jobs.completed(run) == []

        with counting_proxy(vllm_server.base_url, tmp_path, port=port) as proxy:  # back, at the same address
            # 2. A training worker killed mid-export (max_failures 0: the training, then the job, ends).
            job = start(cluster_a, "2-export", proxy, crash="export", **first_attempt)
            assert job.wait() == 1, job.tail()
            assert _teacher(proxy.stats()) == 5  # exactly the failed requests, asked again
            assert jobs.completed(run) == [] and not (run / "iter_0/imitation/student/config.json").exists()

            # 3. The driver killed between the imitation's end and its record.
            job = start(cluster_a, "3-stage-done", proxy, crash="stage-done", **first_attempt)
            job.wait()
            assert jobs.completed(run) == [] and (run / "iter_0/imitation/train.json").exists()

            # 4. The driver killed mid-cleanup: the imitation is recorded, not trained again.
            job = start(cluster_a, "4-cleanup", proxy, crash="cleanup", **first_attempt)
            job.wait()
            assert jobs.completed(run) == ["iter_0/imitation"]
            assert "not trained again" in (logs / "4-cleanup.log").read_text()

            # 5. A part writer killed mid-write (its task runs again), then the whole cluster mid-call.
            job = start(cluster_a, "5-cluster", proxy, crash="part-write", **first_attempt)
            before = {}

            def referee_midway() -> bool:
                before.update(proxy.stats())
                return before["by_kind"].get("referee", 0) >= 6

            deadline = time.monotonic() + 600
            while not referee_midway():
                assert job.proc.poll() is None and time.monotonic() < deadline, job.tail()
                time.sleep(0.1)
            cluster_a.kill()
            job.proc.kill()
            job.wait()
            lost += before["in_flight"] + proxy.stats()["received"] - before["received"]
            assert (tmp_path / "logs" / "once-5-cluster.part-write").exists()  # the part writer was killed

            # 6. The RayJob's retry, on a new head: the lock is taken over, and the run finishes.
            retry = {"RAY_CLUSTER_NAME": "lion-faults-raycluster-bbbbb", **KUBERAY}
            job = start(ray_cluster, "6-retry", proxy, **retry)
            assert job.wait() == 0, job.tail()
            stats = {**proxy.stats(), **answered(proxy.ledger)}  # both proxies' answers

    check_finished(run, stats, lost)
    for log in [*logs.glob("*.log"), *tmp_path.glob("*.log")]:
        assert jobs.KEY not in log.read_text(errors="replace"), log
    assert files_with(run, jobs.KEY) == [] and f"Bearer {jobs.KEY}" in stats["authorizations"]


def check_finished(run: Path, stats: dict, lost: int) -> None:
    state = json.loads((run / "state.json").read_text())
    assert state["done"] and state["completed"] == [
        f"iter_0/{s}" for s in ("imitation", "discrimination", "generation")
    ]
    # Paid once: only what the kills cut off in flight was asked again.
    twice = paid_twice(stats)
    assert twice <= lost <= 6, (twice, lost)
    # The spend log is the endpoint's count: each answer that reached the run once, so the endpoint's
    # count is the log's plus the answers a kill cut off (asked once more: paid twice).
    spent = sum(line["requests"] - line["failed"] for line in read_spend(RunDir(run)))
    assert spent == sum(stats["answered"].values()) - twice
    # Counts reconcile with the pool: one answer per instruction, one judgment per pair.
    pool = [r["id"] for r in pq.read_table(run / "iter_0/cache_pool.parquet").to_pylist()]
    assert len(pool) == jobs.POOL
    for role in ("teacher", "student"):
        answers = pq.read_table(run / f"iter_0/discrimination/{role}_responses.parquet").column("id").to_pylist()
        assert answers == pool
    judgments = pq.read_table(run / "iter_0/discrimination/judgments.parquet").column("id").to_pylist()
    assert sorted(judgments) == sorted(pool)
    metrics = json.loads((run / "iter_0/metrics.json").read_text())
    assert metrics["lion/judged"] + metrics["lion/judge_failed"] == jobs.POOL
    assert metrics["asked_again_after_failure/imitation/teacher"] == 5
    # No stale state: no open journal, rows for workers, checkpoint or lock left; the export is whole.
    assert leftovers(run) == [] and not (run / "job.lock").exists()
    assert (run / "iter_0/imitation/student/export_complete.json").exists()
