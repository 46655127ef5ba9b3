"""One admission gate per API endpoint for the whole cluster: a named Ray actor.

All API actors of every stage that talk to the same endpoint (base_url + model)
share its buckets, so requests/min and tokens/min hold cluster-wide, a
`Retry-After` seen by one actor pauses all, and a job's budget is one number.
"""
from __future__ import annotations

import hashlib
import time

import ray

from engine.config.models import OpenAIEndpoint
from engine.llm.ratelimit import Admission

NAMESPACE = "engine-llm"


@ray.remote(num_cpus=0, max_concurrency=1)
class GateActor:
    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.admission = Admission(requests_per_minute, tokens_per_minute)

    def admit(self, job, tokens, cost_estimate, budget):
        return self.admission.admit(job, tokens, cost_estimate, budget, time.monotonic())

    def settle(self, job, tokens_estimate, tokens_used, cost_estimate, cost):
        self.admission.settle(job, tokens_estimate, tokens_used, cost_estimate, cost, time.monotonic())

    def observe(self, hints):
        self.admission.observe(hints, time.monotonic())

    def spent(self, job):
        return self.admission.spent(job)


class RayGate:
    """The async calls OpenAIGenerator makes, forwarded to the shared actor."""

    def __init__(self, handle):
        self.handle = handle

    async def admit(self, job, tokens, cost_estimate, budget):
        return await self.handle.admit.remote(job, tokens, cost_estimate, budget)

    async def settle(self, job, tokens_estimate, tokens_used, cost_estimate, cost):
        await self.handle.settle.remote(job, tokens_estimate, tokens_used, cost_estimate, cost)

    async def observe(self, hints):
        await self.handle.observe.remote(hints)


def shared_gate(endpoint: OpenAIEndpoint, model: str) -> RayGate:
    """The endpoint's gate, created by the first caller; its limits are the first caller's."""
    name = "gate-" + hashlib.sha256(f"{endpoint.base_url}|{model}".encode()).hexdigest()[:16]
    handle = GateActor.options(name=name, namespace=NAMESPACE, get_if_exists=True).remote(
        endpoint.requests_per_minute, endpoint.tokens_per_minute)
    return RayGate(handle)
