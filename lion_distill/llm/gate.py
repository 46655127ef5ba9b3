"""One admission gate per API endpoint for the whole cluster: a named Ray actor.

All API actors of every stage that talk to the same endpoint (base_url + model)
share its buckets, so requests/min and tokens/min hold cluster-wide, a
`Retry-After` seen by one actor pauses all, and a job's budget is one number.

Actors do not call the gate per request: each leases permits in blocks and
spends them locally (lion_distill.llm.ratelimit.LeasedGate), so a request costs no
actor round trip; a lease costs one about every second per actor.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import ray

from lion_distill.config.models import OpenAIEndpoint
from lion_distill.driver_node import on_driver_node
from lion_distill.llm.ratelimit import Admission, LeasedGate

NAMESPACE = "engine-llm"


@ray.remote(num_cpus=0, max_concurrency=1)
class GateActor:
    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.admission = Admission(requests_per_minute, tokens_per_minute)

    def lease(self, job, ask, budget_usd, report):
        return self.admission.lease(job, *ask, budget_usd, time.monotonic(), report)

    def release(self, job, report):
        self.admission.release(job, report, time.monotonic())

    def observe(self, hints):
        self.admission.observe(hints, time.monotonic())

    def begin(self, job, budget_usd, spent_usd, requests_per_minute, tokens_per_minute):
        self.admission.set_limits(requests_per_minute, tokens_per_minute)
        self.admission.begin(job, budget_usd, spent_usd)

    def spent(self, job):
        return self.admission.spent(job)


class RayGate:
    """LeasedGate's remote: the async calls, forwarded to the shared actor, each within `timeout_s`
    (the endpoint's request deadline: a gate slower than that fails the request, asked again later)."""

    def __init__(self, handle, timeout_s: float):
        self.handle, self.timeout_s = handle, timeout_s

    async def lease(self, job, ask, budget_usd, report):
        return await asyncio.wait_for(self.handle.lease.remote(job, ask, budget_usd, report), self.timeout_s)

    async def release(self, job, report):
        await asyncio.wait_for(self.handle.release.remote(job, report), self.timeout_s)

    async def observe(self, hints):
        await asyncio.wait_for(self.handle.observe.remote(hints), self.timeout_s)


GATE_START_S = 120.0  # bounded, so a cluster that cannot start the actor fails the stage, not hangs it


def shared_gate(endpoint: OpenAIEndpoint, model: str, *, job: str | None = None, spent_usd: float = 0.0) -> LeasedGate:
    """The endpoint's gate, created by the first caller; each job's stage sets its limits (the
    endpoint's requests and tokens per minute) as it begins, so a new job's limits replace an older one's.
    Detached: it outlives the stage that made it (a non-detached gate died with its
    creator's handle, between stages or under a stage that had just fetched it); on the
    caller's node, the driver's (lion_distill.driver_node), never on a worker that may go away.
    With `job`, the job's budget (`endpoint.budget_usd`) starts from `spent_usd` or what the
    gate already counted for it, whichever is more."""
    handle = GateActor.options(
        name=gate_name(endpoint, model),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        **on_driver_node(),
    ).remote(endpoint.requests_per_minute, endpoint.tokens_per_minute)
    # Its process may still be starting (seconds on a busy node, more than a request's timeout_s:
    # CI timed out a 1 s one here): waited for once, so every call after it has the request's deadline.
    ray.get(handle.__ray_ready__.remote(), timeout=GATE_START_S)
    if job is not None:
        limits = (endpoint.requests_per_minute, endpoint.tokens_per_minute)
        ray.get(handle.begin.remote(job, endpoint.budget_usd, spent_usd, *limits), timeout=endpoint.timeout_s)
    return LeasedGate(RayGate(handle, endpoint.timeout_s))


def gate_name(endpoint: OpenAIEndpoint, model: str) -> str:
    return "gate-" + hashlib.sha256(f"{endpoint.base_url}|{model}".encode()).hexdigest()[:16]


def run_job(run_dir_uri: str, role_name: str) -> str:
    """The gate job of a role in a run: the same for every stage, iteration and resumed job."""
    return "run-" + hashlib.sha256(f"{run_dir_uri}|{role_name}".encode()).hexdigest()[:16]
