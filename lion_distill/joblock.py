"""One job per run directory: `job.lock` in the run directory names the job that holds it.

    with job_lock(RunDir(cfg.run_dir)):      # once Ray is joined, before any engine starts
        job.run(cfg)

A second job on the same run directory (a resubmit while the first still runs) would share the
first's driver actor and delete its engines: it refuses instead, with one line naming the job
that holds it. A lock whose job is gone is stale and is taken over, on any host:
- the holder ran on this cluster, and its job table says the job has ended;
- the holder was an earlier attempt of this same KubeRay RayJob (`RAY_CLUSTER_NAME` is
  `<rayjob>-raycluster-<5 chars>` on every pod of a RayJob's cluster): KubeRay deletes an
  attempt's cluster before it starts the next (`backoffLimit`), so an earlier one is gone;
- its cluster was restarted (the same address, a new session), or, asked at its address, has no
  GCS listening any more, runs another session, or its job table says the job has ended;
- its cluster cannot be reached, and it ran on this host, where its driver's process is gone.
A holder on a cluster that cannot be reached from here from another host holds the lock: the line
says how to release it.

Taking the lock is atomic where the run directory's store allows it: a local disk (O_EXCL), S3
(a conditional write, `If-None-Match: *`, through boto3; a stale lock replaced with `If-Match`
on the one read, so two jobs taking it over at once cannot both win). Other object stores have
no exclusive create: the lock is written and read back, and preflight says that two jobs
submitted at the same moment are not kept apart there (`unguarded_note`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from urllib.parse import parse_qs, urlparse

from lion_distill.data import RunDir
from lion_distill.errors import RunDirBusy

LOCK = "job.lock"
PROBE_TIMEOUT_S = 5.0  # asking another cluster whether the holder's job still runs
_KUBERAY_CLUSTER = re.compile(r"^(?P<rayjob>.+)-raycluster-[a-z0-9]{5}$")


def this_job() -> dict:
    """Who is asking: the Ray job, the `ray job submit` id if any, the driver's host and process,
    and, on KubeRay, its RayCluster (KubeRay sets these variables on every pod)."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "job_id": ctx.get_job_id(),
        "submission_id": os.environ.get("RAY_JOB_SUBMISSION_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "address": ctx.gcs_address,
        "session": ray._private.worker.global_worker.node.session_name,
        "kuberay_cluster": os.environ.get("RAY_CLUSTER_NAME"),
        "kuberay_namespace": os.environ.get("RAY_CLUSTER_NAMESPACE"),
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


def _other_cluster(holder: dict, timeout_s: float = PROBE_TIMEOUT_S) -> bool | None:
    """Whether the holder's job runs on its cluster, asked at its GCS address: False when nothing
    listens there (refused), another session runs there, or its job table says the job ended;
    None when that cannot be told (no route, a timeout, a GCS that will not answer us)."""
    host, _, port = (holder.get("address") or "").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return False
    except (OSError, ValueError):
        return None
    try:
        from ray._raylet import GcsClient

        client = GcsClient(address=holder["address"])
        if client.internal_kv_get(b"session_name", b"session", timeout=timeout_s) != holder["session"].encode():
            return False
        jobs = client.get_all_job_info(timeout=timeout_s)
    except Exception:  # another cluster's GCS (its auth token, its version) may refuse us
        return None
    return any(job.job_id.hex() == holder.get("job_id") and not job.is_dead for job in jobs.values())


def same_rayjob(holder: dict, me: dict) -> bool:
    """Both locks' jobs are attempts of one KubeRay RayJob, on different clusters."""
    mine, theirs = (_KUBERAY_CLUSTER.match(j.get("kuberay_cluster") or "") for j in (me, holder))
    return (
        mine is not None
        and theirs is not None
        and mine["rayjob"] == theirs["rayjob"]
        and me.get("kuberay_namespace") == holder.get("kuberay_namespace")
        and me["kuberay_cluster"] != holder["kuberay_cluster"]
    )


def still_running(
    holder: dict,
    me: dict,
    job_alive: Callable[[str], bool] = _job_alive,
    pid_alive: Callable[[int], bool] = _pid_alive,
    other_cluster: Callable[[dict], bool | None] = _other_cluster,
) -> bool:
    """Whether the job a lock names may still be running, as far as this driver can tell."""
    same_host = holder.get("host") == me["host"]
    if holder.get("session") == me["session"]:  # this cluster: its job table knows
        return job_alive(holder.get("job_id", "")) and (not same_host or pid_alive(holder.get("pid", -1)))
    if same_rayjob(holder, me) or holder.get("address") == me["address"]:
        return False  # an earlier attempt's cluster, deleted; or this cluster before a restart
    answer = other_cluster(holder)
    if answer is not None:
        return answer
    return pid_alive(holder.get("pid", -1)) if same_host else True


def describe(holder: dict) -> str:
    submitted = f", submission {holder['submission_id']}" if holder.get("submission_id") else ""
    return (
        f"job {holder.get('job_id')}{submitted} (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"cluster {holder.get('address')}, started {holder.get('started')})"
    )


# ---------------------------------------------------------------- the lock file, per store


def _s3(run: RunDir):
    """(boto3 client, bucket, key of the lock) for an S3 run directory where boto3 is installed; else None."""
    if run.fs.type_name != "s3":
        return None
    try:
        import boto3
    except ImportError:
        return None
    parsed = urlparse(run.uri)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=query.get("region"))
    bucket, _, key = run.path(LOCK).partition("/")
    return client, bucket, key


def _s3_code(error) -> str:
    """botocore's error code of a ClientError ("" for anything else)."""
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _precondition_failed(error) -> bool:
    return _s3_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _create(run: RunDir, me: dict) -> bool:
    """Write the lock unless one exists: atomically on a local disk (O_EXCL) and on S3 (If-None-Match),
    by write-then-read-back elsewhere (no exclusive create)."""
    data = json.dumps(me, indent=2).encode()
    if run.fs.type_name == "local":
        try:
            fd = os.open(run.path(LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    s3 = _s3(run)
    if s3 is not None:
        client, bucket, key = s3
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except client.exceptions.ClientError as e:
            if _precondition_failed(e):
                return False
            if _s3_code(e) != "NotImplemented":  # an endpoint without conditional writes: as any store below
                raise
    if run.exists(LOCK):
        return False
    run.write_bytes(LOCK, data)
    return run.read_json(LOCK, {}).get("token") == me["token"]


def _read(run: RunDir) -> tuple[dict, str | None]:
    """(the lock as written, {} when half written or gone; its S3 ETag, the version a takeover replaces)."""
    s3 = _s3(run)
    try:
        if s3 is not None:
            client, bucket, key = s3
            got = client.get_object(Bucket=bucket, Key=key)
            return json.loads(got["Body"].read()), got["ETag"]
        return run.read_json(LOCK, {}), None
    except ValueError:  # half written by a job killed while writing it
        return {}, None
    except Exception as e:  # gone meanwhile (S3's NoSuchKey): nothing held
        if s3 is not None and _s3_code(e) in ("NoSuchKey", "404"):
            return {}, None
        raise


def _take_over(run: RunDir, me: dict, etag: str | None) -> bool:
    """Replace the stale lock that was read: on S3 only if it is still that one (If-Match), so one of
    two jobs taking it over wins; elsewhere by removing it (the next _create decides)."""
    s3 = _s3(run)
    if s3 is None or etag is None:
        try:
            run.fs.delete_file(run.path(LOCK))
        except FileNotFoundError:
            pass
        return False
    client, bucket, key = s3
    try:
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(me, indent=2).encode(), IfMatch=etag)
    except client.exceptions.ClientError as e:
        if _precondition_failed(e) or _s3_code(e) in ("NoSuchKey", "404"):
            return False
        raise
    return True


def acquire(run: RunDir, me: dict, **probes) -> None:
    """Take the run directory's lock, taking over a stale one; RunDirBusy names a running holder."""
    for _ in range(3):  # a stale lock removed or replaced under a racing job: try again
        if _create(run, me):
            return
        holder, etag = _read(run)
        if holder and still_running(holder, me, **probes):
            raise RunDirBusy(
                f"{run.uri} is in use by {describe(holder)}: wait for it to end, or stop it; "
                f"if it is gone, delete {run.path(LOCK)}"
            )
        if _take_over(run, me, etag):
            return
    raise RunDirBusy(f"{run.uri}: could not take {LOCK} (other jobs keep taking it)")


def release(run: RunDir, me: dict) -> None:
    """Remove the lock if it is still this job's."""
    try:
        if _read(run)[0].get("token") == me["token"]:
            run.fs.delete_file(run.path(LOCK))
    except Exception:  # an OSError, an S3 error: the next job finds it stale
        pass


def unguarded_note(run_dir: str) -> str | None:
    """The preflight note for a run directory where two jobs submitted at once are not kept apart:
    an object store without conditional writes, or an S3 endpoint that ignores them (asked with a
    probe object written twice with If-None-Match)."""
    if "://" not in run_dir:
        return None
    scheme = run_dir.split("://", 1)[0]
    if scheme not in ("s3", "s3a"):
        reason = f"{scheme}:// has no conditional writes"
    else:
        try:
            run = RunDir(run_dir)
        except OSError:
            return None  # preflight's writable check says why
        s3 = _s3(run)
        if s3 is None:
            reason = "boto3 is not installed (pip install boto3); it takes the lock with S3's conditional writes"
        elif _ignores_conditions(*s3):
            reason = "its S3 endpoint ignores If-None-Match"
        else:
            return None
    return (
        f"run_dir: {run_dir.split('?', 1)[0]}: two jobs submitted on it at the same moment are not kept "
        f"apart ({reason}); a job submitted while another runs still is"
    )


def _ignores_conditions(client, bucket: str, key: str) -> bool:
    probe = f"{key.rsplit('/', 1)[0]}/.preflight-lock-{uuid.uuid4().hex[:8]}"
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"1", IfNoneMatch="*")
        client.put_object(Bucket=bucket, Key=probe, Body=b"2", IfNoneMatch="*")
    except client.exceptions.ClientError as e:
        return not _precondition_failed(e)
    except Exception:  # unreachable: preflight's writable check says why
        return False
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=probe)
        except Exception:
            pass
    return True


@contextmanager
def job_lock(run: RunDir):
    me = this_job()
    acquire(run, me)
    try:
        yield me
    finally:
        release(run, me)
