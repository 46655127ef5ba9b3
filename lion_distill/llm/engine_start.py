"""An engine's start, watched to a deadline, and its failure told by its own root cause.

    failure = wait_running(app, role_name, role, timeout_s=900)   # None once it answers
    # -> EngineFailure(cause="ValueError: Available memory on node 0 ...", permanent=True)
    # raises WaitedTooLong when the deadline passes (lion_distill.llm.fit)

Serve reports a failed deployment as `Failed to update the deployments ['llm']` and retries a
replica that failed to start three times, minutes for an engine, whatever the cause. The cause
is the replica's exception; with vLLM's engine core in a process of its own it is only in that
process's log (`Engine core initialization failed. See root cause above`), so the replica
(lion_distill.llm.serve_server) raises an `EngineRootCause` naming it, and this module reads it from
Serve's status as soon as the first replica fails. A cause that a retry cannot fix (an engine
argument vLLM refuses, a model that is not there, memory the node does not have) ends the wait at
once; other causes (a process killed while it loaded) leave Serve to try again.

One ValueError is passing: vLLM's "Free memory on device cuda:0 (... GiB) on startup is less than
desired GPU memory utilization", seen when the previous engine or a training worker has not yet
given its GPU back (a process's CUDA memory is freed as it exits, seconds to a minute after Ray
removed it). Such a start is tried again after a wait (`retry_after`: 10 s, doubling up to 60 s)
until the start's deadline. The driver cannot see a node's GPU memory, so the wait is a backoff,
not a watch of the memory.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

ROOT_CAUSE = "EngineRootCause"
POLL_S = 1.0
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*(EngineRootCause|[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")
_PROCESS_PREFIX = re.compile(r"^\([^)]*\)\s*")  # vLLM marks its processes' lines: "(EngineCore_DP0 pid=7) "
# Exception types and messages that say the engine cannot start with this config, on this node.
_PERMANENT_TYPES = {
    "TypeError",
    "ValueError",
    "KeyError",
    "AttributeError",
    "NotImplementedError",
    "ImportError",
    "ModuleNotFoundError",
    "FileNotFoundError",
    "OSError",
    "ValidationError",
    "HFValidationError",
    "RepositoryNotFoundError",
    "GatedRepoError",
    "LocalEntryNotFoundError",
    "OutOfMemoryError",
}
# vLLM's GPU worker (vllm/v1/worker/utils.py): the device's free memory at start, below the share it is to take.
_GPU_MEMORY_BUSY = re.compile(r"Free memory on device \S* ?\(.*\) on startup is less than", re.S)
MEMORY_WAIT_S, MEMORY_MAX_WAIT_S = 10.0, 60.0
_PERMANENT_TEXT = re.compile(
    r"out of memory|available memory|not enough memory|no such file|does not exist|"
    r"not a valid model|unexpected keyword argument|unrecognized arguments|"
    r"validation error|engine config",
    re.I,
)


class EngineRootCause(RuntimeError):
    """Raised by a replica whose engine did not start: its message is the root cause's line."""


@dataclass(frozen=True)
class EngineFailure:
    cause: str  # "ValueError: ...": the engine's own exception, one line
    permanent: bool  # a retry cannot fix it
    memory_busy: bool = False  # the GPU's memory is still held by a process that is going away: wait, retry


class EngineStartFailed(RuntimeError):
    """A role's engine did not start; `cause` is the engine's own exception."""

    def __init__(self, role: str, model: str, failure: EngineFailure):
        again = (
            " (its GPUs' memory stayed held by another process until the start's deadline)"
            if failure.memory_busy
            else ("" if failure.permanent else " (after another try)")
        )
        super().__init__(f"{role}: the engine of {model} did not start{again}: {failure.cause}")
        self.role, self.failure = role, failure


def exception_line(text: str) -> str | None:
    """The root cause in a traceback's text: an EngineRootCause's message where the replica
    raised one, else the last `SomeError: message` line."""
    found = None
    for line in text.splitlines():
        match = _EXCEPTION.match(_PROCESS_PREFIX.sub("", line.strip()))
        if match:
            found = match
            if match.group(1) == ROOT_CAUSE:
                break
    if found is None:
        return None
    kind, message = found.groups()
    return message.strip() if kind == ROOT_CAUSE else f"{kind}: {message.strip()}".rstrip(": ")


def permanent(cause: str) -> bool:
    match = _EXCEPTION.match(cause)
    return bool((match and match.group(1) in _PERMANENT_TYPES) or _PERMANENT_TEXT.search(cause))


def failure_from(message: str) -> EngineFailure:
    cause = exception_line(message) or message.strip().splitlines()[-1][:300]
    busy = bool(_GPU_MEMORY_BUSY.search(cause))
    return EngineFailure(cause[:500], not busy and permanent(cause), busy)


def retry_after(failure: EngineFailure, attempt: int, remaining_s: float) -> float | None:
    """Seconds to wait before the start's next try after its `attempt`-th failed, or None to give
    up: a GPU still held by another process is waited for (10 s, doubling to 60 s) while the start's
    deadline leaves time; another cause a retry may fix gets one more try at once."""
    if failure.memory_busy:
        wait = min(MEMORY_WAIT_S * 2 ** (attempt - 1), MEMORY_MAX_WAIT_S)
        return wait if wait < remaining_s else None
    return None if failure.permanent or attempt >= 2 else 0.0


def deployment_state(app: str) -> tuple[str | None, str]:
    """(the application's status, its deployments' messages) from Serve now."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return None, ""
    messages = [status.message, *(d.message for d in status.deployments.values())]
    return status.status.value, "\n".join(m for m in messages if m)


def wait_running(app: str, timeout_s: float, on_timeout) -> EngineFailure | None:
    """Wait until Serve runs `app`: None once RUNNING; an EngineFailure once it failed for good
    or a replica failed for a reason a retry cannot fix; `on_timeout(waiting_for_resources)`
    (which raises) when `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, message = deployment_state(app)
        if status == "RUNNING":
            return None
        if status == "DEPLOY_FAILED":
            return failure_from(message)
        if "failed to start" in message:  # a replica failed; Serve is about to retry it
            failure = failure_from(message)
            if failure.permanent:
                return failure
        if time.monotonic() > deadline:
            on_timeout(waiting_for_resources(app) or "to be scheduled" in message)
        time.sleep(POLL_S)


def waiting_for_resources(app: str | None = None) -> bool:
    """Is a placement group still waiting for its resources: one of Serve `app`'s replicas (Serve
    names each replica's group after the replica: SERVE_REPLICA::<app>#<deployment>#<id>), or,
    with `app` None, any (the groups Ray Data's vLLM stage makes for its engines have no name)?"""
    from ray.util import placement_group_table

    return any(
        (app is None or f"::{app}#" in (group.get("name") or "")) and group.get("state") == "PENDING"
        for group in placement_group_table().values()
    )


def gpus_pending() -> bool:
    """Does anything wait for GPUs now: a placement group, or an actor or task Ray has not
    placed (Ray Data's vLLM stage asks for its engines' GPUs as an actor's num_gpus where
    tensor parallelism is 1, as a placement group where it is more)? Read from Ray's own
    view of the demand (the GCS autoscaler state every cluster keeps); the placement-group
    table where that is unavailable."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except Exception:
        return waiting_for_resources()
    asks = [*demand.placement_group_demand, *demand.ray_task_actor_demand]
    return any(ask.bundle.get("GPU", 0) > 0 for pending in asks for ask in pending.bundles_by_count)


class ResourceWatch:
    """Polls `pending` (gpus_pending) while a stage starts its engines, so that a deadline's
    message can say whether they were still waiting for resources: Ray Data removes its engines'
    placement group and actors as the stage fails, and its deadline starts when each actor pool
    starts, not when the stage is called, so one look at a fixed time can miss the demand. It
    polls for `for_s` seconds (the start's deadline and a margin), not the stage's hours."""

    def __init__(self, for_s: float, every_s: float = POLL_S, pending=None):
        self.every_s, self.seen = every_s, []  # (monotonic time, something waited for GPUs)
        self.pending = pending or gpus_pending
        self.until = time.monotonic() + for_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.until:
            self.seen.append((time.monotonic(), self.pending()))
            del self.seen[:-64]
            self._stop.wait(self.every_s)

    def __enter__(self) -> ResourceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def waited(self, window_s: float = 3.0) -> bool:
        """Did something wait for GPUs now or in the last `window_s` seconds?"""
        recent = time.monotonic() - window_s
        return any(pending for at, pending in list(self.seen) if at >= recent) or self.pending()
