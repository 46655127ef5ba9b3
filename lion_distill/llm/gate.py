"""One admission gate per API endpoint for the whole cluster: a named Ray actor.

All API actors of every stage that talk to the same endpoint (base_url + model)
share its buckets, so requests/min and tokens/min hold cluster-wide, a
`Retry-After` seen by one actor pauses all, and a job's budget is one number.

Actors do not call the gate per request: each leases permits in blocks and
spends them locally (lion_distill.llm.ratelimit.LeasedGate), so a request costs no
actor round trip; a lease costs one about every second per actor.
"""

from __future__ import annotations

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

    def begin(self, job, budget_usd, spent_usd):
        self.admission.begin(job, budget_usd, spent_usd)

    def spent(self, job):
        return self.admission.spent(job)


class RayGate:
    """LeasedGate's remote: the async calls, forwarded to the shared actor."""

    def __init__(self, handle):
        self.handle = handle

    async def lease(self, job, ask, budget_usd, report):
        return await self.handle.lease.remote(job, ask, budget_usd, report)

    async def release(self, job, report):
        await self.handle.release.remote(job, report)

    async def observe(self, hints):
        await self.handle.observe.remote(hints)


def shared_gate(endpoint: OpenAIEndpoint, model: str, *, job: str | None = None, spent_usd: float = 0.0) -> LeasedGate:
    """The endpoint's gate, created by the first caller; its limits are the first caller's.
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
    if job is not None:
        ray.get(handle.begin.remote(job, endpoint.budget_usd, spent_usd))
    return LeasedGate(RayGate(handle))


def gate_name(endpoint: OpenAIEndpoint, model: str) -> str:
    return "gate-" + hashlib.sha256(f"{endpoint.base_url}|{model}".encode()).hexdigest()[:16]


def run_job(run_dir_uri: str, role_name: str) -> str:
    """The gate job of a role in a run: the same for every stage, iteration and resumed job."""
    return "run-" + hashlib.sha256(f"{run_dir_uri}|{role_name}".encode()).hexdigest()[:16]
