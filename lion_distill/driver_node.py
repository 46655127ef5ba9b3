"""The job's driver node and the job's life, for the actors that must last as long as the job.

    actor = ray.remote(Driver).options(**on_driver_node(), lifetime="detached", ...).remote(...)
    job_finished(job_id)   # True once the GCS records the job as ended; None while it cannot say

A long-lived actor (the driver's state actor, the engine reaper, the API rate gates) sits on the
driver's node: workers may be spot nodes, and an actor lost with one takes the run's state, its
cleanup or its rate limits with it. The reaper judges a job dead by the GCS job table, the same
record `ray job status` and `ray list jobs` read, never by a failed call to an actor of the job:
a call fails for a moment when the network or the actor's node is busy (ActorUnavailableError),
and reading that as the job's death deleted a live job's engines.
"""

from __future__ import annotations


def on_driver_node() -> dict:
    """Ray actor options that pin the actor to this process's node (soft=False: never elsewhere)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def this_job() -> str:
    """The current Ray job's id (hex), as the GCS job table names it."""
    import ray

    return ray.get_runtime_context().get_job_id()


def job_finished(job_id: str) -> bool | None:
    """True when the GCS job table marks `job_id` dead (its driver exited, was killed, or its
    node was lost), False while it runs, None when the table cannot be read now or does not
    list the job: the caller asks again later rather than guess."""
    from ray._private.state import state

    try:
        jobs = state.job_table()
    except Exception:  # the GCS is restarting or unreachable for a moment
        return None
    return job_status(jobs, job_id)


def job_status(jobs: list[dict], job_id: str) -> bool | None:
    """`job_finished` over one read of the job table (rows with JobID and IsDead)."""
    for job in jobs:
        if job.get("JobID") == job_id:
            return bool(job.get("IsDead"))
    return None
