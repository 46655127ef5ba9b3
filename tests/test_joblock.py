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
from lion_distill.joblock import LOCK, acquire, release, still_running, unguarded_note

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
    alive = {"job_alive": lambda job_id: job_id == first["job_id"]}
    acquire(run, first, **alive)
    assert json.loads((tmp_path / "run" / LOCK).read_text())["job_id"] == "01000000"
    with pytest.raises(RunDirBusy) as busy:
        acquire(run, second, pid_alive=lambda pid: pid == first["pid"], **alive)
    line = str(busy.value)
    assert (
        "\n" not in line
        and "is in use by job 01000000 (host head, pid 101, cluster 10.0.0.1:6379, started 2026-12-02 07:00:00 UTC)"
        in line
    )
    release(run, second)  # not its lock: left alone
    assert (tmp_path / "run" / LOCK).exists()
    release(run, first)
    assert not (tmp_path / "run" / LOCK).exists()
    acquire(run, second, **alive)  # free again


def test_a_stale_lock_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    acquire(run, job(1), job_alive=lambda job_id: True, pid_alive=lambda pid: True)
    # Same cluster, same host: its job ended, or its driver's process is gone: taken over.
    acquire(run, job(2), job_alive=lambda job_id: False, pid_alive=lambda pid: True)
    assert run.read_json(LOCK)["token"] == "t2"
    # Another host, same cluster session: the cluster's job table decides.
    other = job(3, host="worker")
    with pytest.raises(RunDirBusy, match="job 02000000"):
        acquire(run, other, job_alive=lambda job_id: True)
    acquire(run, other, job_alive=lambda job_id: job_id != "02000000")
    assert run.read_json(LOCK)["token"] == "t3"
    # Another host after a cluster restart at the same address: its jobs are gone.
    assert not still_running(job(3, host="worker"), job(4, session="session_b"))
    # A lock half written by a job killed while writing it is stale.
    (tmp_path / "run" / LOCK).write_text('{"job_id": ')
    acquire(run, job(5), job_alive=lambda job_id: True)
    assert run.read_json(LOCK)["token"] == "t5"


def test_a_holder_on_another_cluster_is_asked_there_on_any_host():
    me = job(4, host="pod-b", session="session_b", address="10.0.0.9:6379")
    holder = job(3, host="pod-a")
    cannot_tell = lambda holder: None  # noqa: E731 (no route to its cluster)
    # Its cluster answers: the job runs (held), or it ended, another session runs there, nothing listens (taken).
    assert still_running(holder, me, other_cluster=lambda h: True)
    assert not still_running(holder, me, other_cluster=lambda h: False)
    # It cannot be asked: from another host the lock is held; on this host, the driver's process decides.
    assert still_running(holder, me, other_cluster=cannot_tell, pid_alive=lambda pid: False)
    here = job(4, host="pod-a", session="session_b", address="10.0.0.9:6379")
    assert not still_running(holder, here, other_cluster=cannot_tell, pid_alive=lambda pid: False)


def test_an_earlier_attempt_of_the_same_kuberay_rayjob_is_gone_whoever_holds_the_lock():
    """KubeRay's retry (backoffLimit) deletes the attempt's RayCluster, then makes a new one: a
    new head, a new host and address; the RayJob's name stays in the cluster's name."""
    kube = {"kuberay_namespace": "ml"}
    first = job(1, host="lion-raycluster-ab12c-head", kuberay_cluster="lion-raycluster-ab12c", **kube)
    retry = job(2, host="lion-raycluster-x9z8y-head", session="session_b", address="10.0.3.7:6379", **kube)
    never = lambda *a: pytest.fail("asked what the retry identity already says")  # noqa: E731
    kw = dict(job_alive=never, pid_alive=never, other_cluster=never)
    assert not still_running(first, {**retry, "kuberay_cluster": "lion-raycluster-x9z8y"}, **kw)
    # Another RayJob sharing the run directory, or the same name in another namespace: its cluster is asked.
    other = {**retry, "kuberay_cluster": "eval-raycluster-x9z8y"}
    assert still_running(first, other, job_alive=never, pid_alive=never, other_cluster=lambda h: True)
    elsewhere = {**retry, "kuberay_cluster": "lion-raycluster-x9z8y", "kuberay_namespace": "prod"}
    assert still_running(first, elsewhere, job_alive=never, pid_alive=never, other_cluster=lambda h: True)


def test_an_s3_lock_is_taken_with_conditional_writes(s3_bucket):
    """Two jobs creating the lock at once: one wins. Two taking over one stale lock: one wins."""
    from lion_distill.joblock import _create, _read, _take_over

    run = RunDir(f"{s3_bucket}/runs/locked")
    assert _create(run, job(1)) and not _create(run, job(2))
    assert run.read_json(LOCK)["token"] == "t1"
    stale, etag = _read(run)
    assert stale["token"] == "t1" and etag
    assert _take_over(run, job(2), etag) and not _take_over(run, job(3), etag)  # the second read an old lock
    assert run.read_json(LOCK)["token"] == "t2"
    release(run, job(3))  # not its lock
    assert run.exists(LOCK)
    release(run, job(2))
    assert not run.exists(LOCK)
    assert unguarded_note(f"{s3_bucket}/runs/locked") is None  # the test S3 server (moto) honours If-None-Match
    note = unguarded_note("gs://bucket/runs/x")
    assert note.startswith("run_dir: gs://bucket/runs/x: two jobs submitted on it at the same moment are not kept")


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
