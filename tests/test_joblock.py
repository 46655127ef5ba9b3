"""One job per run directory: the lock's logic in milliseconds (its probes scripted), then a
second real job refused on the session's cluster while the first holds the run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lion_distill.data import RunDir
from lion_distill.errors import RunDirBusy
from lion_distill.joblock import LOCK, acquire, release, still_running

REPO = Path(__file__).resolve().parents[1]


def job(n: int, **fields) -> dict:
    return {
        "job_id": f"0{n}000000",
        "submission_id": None,
        "host": "head",
        "pid": 100 + n,
        "address": "10.0.0.1:6379",
        "session": "session_a",
        "started": "2026-12-02 07:00:00 UTC",
        "token": f"t{n}",
        **fields,
    }


def test_a_second_job_is_refused_with_a_line_naming_the_first(tmp_path):
    run = RunDir(tmp_path / "run")
    first, second = job(1), job(2)
    acquire(run, first, pid_alive=lambda pid: True)
    assert json.loads((tmp_path / "run" / LOCK).read_text())["job_id"] == "01000000"
    with pytest.raises(RunDirBusy) as busy:
        acquire(run, second, pid_alive=lambda pid: pid == first["pid"])
    line = str(busy.value)
    assert (
        "\n" not in line and "is in use by job 01000000 (host head, pid 101, started 2026-12-02 07:00:00 UTC)" in line
    )
    release(run, second)  # not its lock: left alone
    assert (tmp_path / "run" / LOCK).exists()
    release(run, first)
    assert not (tmp_path / "run" / LOCK).exists()
    acquire(run, second)  # free again


def test_a_stale_lock_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    acquire(run, job(1))
    # Its driver's process is gone (same host): taken over.
    acquire(run, job(2), pid_alive=lambda pid: False)
    assert run.read_json(LOCK)["token"] == "t2"
    # Another host, same cluster session: the cluster's job table decides.
    other = job(3, host="worker")
    with pytest.raises(RunDirBusy, match="job 02000000"):
        acquire(run, other, job_alive=lambda job_id: True)
    acquire(run, other, job_alive=lambda job_id: job_id != "02000000")
    assert run.read_json(LOCK)["token"] == "t3"
    # Another host after a cluster restart at the same address: its jobs are gone.
    assert not still_running(job(3, host="worker"), job(4, session="session_b"))
    # A different cluster sharing the run directory cannot be asked: it holds the lock.
    assert still_running(job(3, host="worker"), job(4, session="session_b", address="10.0.0.9:6379"))
    # A lock half written by a job killed while writing it is stale.
    (tmp_path / "run" / LOCK).write_text('{"job_id": ')
    acquire(run, job(5))
    assert run.read_json(LOCK)["token"] == "t5"


def test_a_resubmitted_job_refuses_while_the_first_runs(ray_cluster, tmp_path):
    """The first job: this test process, holding the lock as a running driver of the session's
    cluster. The second: `jobs/lion.py` on the same run directory, stopped before any engine."""
    import ray

    from lion_distill.joblock import job_lock

    run = tmp_path / "run"
    with job_lock(RunDir(run)) as me:
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "jobs" / "lion.py"),
                "--config",
                str(REPO / "configs" / "demo.yaml"),
                f"--set=run_dir={run}",
            ],
            env={**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert f"is in use by job {me['job_id']}" in line and f"pid {os.getpid()}" in line
        assert not (run / "state.json").exists()  # nothing of the first job's was touched
    assert ray.is_initialized() and not (run / LOCK).exists()
