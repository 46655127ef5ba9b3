"""Before a run starts: can it write its run directory, and is that directory the same one on
every node?

    writable_problems("s3://bucket/runs/x")    # [] or one line: a probe written and removed
    unshared_problems("/mnt/shared/runs/x")    # with Ray initialised: [] or one line per node

A local run directory that is not mounted on every node is the quiet failure: each node writes
its own response cache, spend log and state, the budget is under-counted, and the next stage
does not find the last one's files. So the driver writes a marker into it and a task on every
alive node must read it back. (An object store URI is the same bucket wherever it is opened.)
"""

from __future__ import annotations

import uuid

from lion_distill.data.remote import is_uri
from lion_distill.data.rundir import RunDir

SHARED_TIMEOUT_S = 60.0


def writable_problems(run_dir: str) -> list[str]:
    """A probe file written (as every run-directory write is: temporary file, then rename) and
    removed: a missing bucket, wrong credentials or endpoint, or a read-only mount fail here."""
    try:
        run = RunDir(run_dir)
        probe = f".preflight-{uuid.uuid4().hex[:8]}"
        run.write_bytes(probe, b"ok")
        run.fs.delete_file(run.path(probe))
    except OSError as e:
        reason = (e.strerror or str(e)).strip().splitlines()[0]
        return [f"run_dir: {run_dir} is not writable ({reason})"]
    return []


def _sees(path: str, token: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


def _answer(ref) -> bool:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError:  # the node's worker died on the way: it saw nothing
        return False


def unshared_problems(run_dir: str, timeout_s: float = SHARED_TIMEOUT_S) -> list[str]:
    """One line per alive node of the joined cluster that cannot read a marker the driver
    wrote into the (local) run directory; [] for a URI, or without Ray."""
    import ray

    if is_uri(run_dir) or not ray.is_initialized():
        return []
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run, token = RunDir(run_dir), uuid.uuid4().hex
    marker = f".shared-{token[:8]}"
    run.write_bytes(marker, token.encode())
    try:
        sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        pending = {
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                run.path(marker), token
            ): n
            for n in nodes
        }
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        problems = []
        for ref, node in pending.items():
            where = f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
            if ref not in done:
                problems.append(f"run_dir: {where} did not answer within {timeout_s:g} s whether it sees {run_dir}")
            elif not _answer(ref):
                problems.append(
                    f"run_dir: {run_dir} is not shared: {where} cannot see the marker the driver wrote "
                    "there; mount it on every node (a shared filesystem) or use an object store URI "
                    "(s3://...)"
                )
        return problems
    finally:
        run.fs.delete_file(run.path(marker))
