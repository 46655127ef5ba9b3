"""One job per run directory: `job.lock` in the run directory names the job that holds it.

    with job_lock(RunDir(cfg.run_dir)):      # once Ray is joined, before any engine starts
        job.run(cfg)

A second job on the same run directory (a resubmit while the first still runs) would share the
first's driver actor and delete its engines: it refuses instead, with one line naming the job
that holds the lock. A lock whose job is no longer running is stale and is taken over: its
driver's process is gone (same host), its cluster was restarted (same address, new session), or
the cluster's job table says the job has ended.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager

from lion_distill.data import RunDir
from lion_distill.errors import RunDirBusy

LOCK = "job.lock"


def this_job() -> dict:
    """Who is asking: the Ray job, the `ray job submit` id if any, the driver's host and process."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "job_id": ctx.get_job_id(),
        "submission_id": os.environ.get("RAY_JOB_SUBMISSION_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "address": ctx.gcs_address,
        "session": ray._private.worker.global_worker.node.session_name,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": uuid.uuid4().hex,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _job_alive(job_id: str) -> bool:
    """Whether this cluster's job table has the job running (GCS; no dashboard needed)."""
    import ray._private.state

    return any(j["JobID"] == job_id and not j["IsDead"] for j in ray._private.state.jobs())


def still_running(
    holder: dict, me: dict, job_alive: Callable[[str], bool] = _job_alive, pid_alive: Callable[[int], bool] = _pid_alive
) -> bool:
    """Whether the job a lock names may still be running, as far as this driver can tell."""
    if holder.get("host") == me["host"]:
        return pid_alive(holder.get("pid", -1))
    if holder.get("session") == me["session"]:
        return job_alive(holder.get("job_id", ""))
    # Another host on another cluster: gone if that cluster was restarted at this same address;
    # a different cluster sharing the run directory cannot be asked, so it holds the lock.
    return holder.get("address") != me["address"]


def describe(holder: dict) -> str:
    submitted = f", submission {holder['submission_id']}" if holder.get("submission_id") else ""
    return (
        f"job {holder.get('job_id')}{submitted} (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started')})"
    )


def _create(run: RunDir, me: dict) -> bool:
    """Write the lock unless one exists: atomically on a local disk (O_EXCL), by write-then-read-back
    on an object store (which has no exclusive create)."""
    data = json.dumps(me, indent=2).encode()
    if run.fs.type_name == "local":
        try:
            fd = os.open(run.path(LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if run.exists(LOCK):
        return False
    run.write_bytes(LOCK, data)
    return run.read_json(LOCK, {}).get("token") == me["token"]


def acquire(run: RunDir, me: dict, **probes) -> None:
    """Take the run directory's lock, taking over a stale one; RunDirBusy names a running holder."""
    for _ in range(3):  # a stale lock removed under a racing job: try again
        if _create(run, me):
            return
        try:
            holder = run.read_json(LOCK, {})
        except ValueError:  # half written by a job killed while writing it
            holder = {}
        if holder and still_running(holder, me, **probes):
            raise RunDirBusy(
                f"{run.uri} is in use by {describe(holder)}: wait for it to end, or stop it; "
                f"if it is gone, delete {run.path(LOCK)}"
            )
        run.fs.delete_file(run.path(LOCK))
    raise RunDirBusy(f"{run.uri}: could not take {LOCK} (other jobs keep taking it)")


def release(run: RunDir, me: dict) -> None:
    """Remove the lock if it is still this job's."""
    try:
        if run.read_json(LOCK, {}).get("token") == me["token"]:
            run.fs.delete_file(run.path(LOCK))
    except (OSError, ValueError):
        pass  # the next job finds it stale


@contextmanager
def job_lock(run: RunDir):
    me = this_job()
    acquire(run, me)
    try:
        yield me
    finally:
        release(run, me)
