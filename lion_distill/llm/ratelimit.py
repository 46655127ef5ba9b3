"""Cluster-wide admission for an API endpoint: token buckets on requests/min and
tokens/min, the server's own rate-limit headers, and a spending budget per job.

Pure and clock-injected so the arithmetic is unit-tested in microseconds; the Ray
named actor in `lion_distill.llm.gate` holds one `Admission` for every API actor of a
cluster. Reservation style (as golang's rate.Limiter.Reserve): a request takes its
permits now and is told how long to wait, so one call admits it.

Leases: an API actor does not ask the shared gate once per request (two actor
round trips a request capped the API path at a fraction of what the server
allows). `LocalPermits` holds a block of permits leased from `Admission.lease`
(requests, tokens and a slice of the job's budget) and spends them locally; a
block is sized to about a second of the holder's own consumption (doubling
while it runs out faster) and capped at the gate to a second of the endpoint's
rate. Unused permits go back and actual spend is reported with the next lease
or at `release` (when the actor has no batch open). A pause (Retry-After, or a server that says
nothing remains) is applied locally at once, sent to the gate at once, and
reaches the other actors with their next lease. `LeasedGate` is the async
wrapper an actor uses (one lease in flight at a time).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class TokenBucket:
    per_minute: float
    level: float = field(default=None)  # type: ignore[assignment]
    stamp: float = 0.0

    def __post_init__(self):
        # A sixth of a minute's quota as burst: a full minute at once invites 429s.
        self.capacity = max(1.0, self.per_minute / 6)
        if self.level is None:
            self.level = self.capacity

    @property
    def rate_per_s(self) -> float:
        return self.per_minute / 60.0

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate_per_s)
        self.stamp = now

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` (the level may go negative: later callers queue behind);
        -> seconds to wait before using it."""
        self._refill(now)
        self.level -= amount
        return max(0.0, -self.level / self.rate_per_s)

    def give_back(self, amount: float, now: float) -> None:
        """Return `amount` permits; a negative amount takes them (a debt later callers wait behind)."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def clamp(self, remaining: float, now: float) -> None:
        """The server knows better: never believe in more than it says remain."""
        self._refill(now)
        self.level = min(self.level, remaining)


def parse_duration_s(value: str | None) -> float | None:
    """OpenAI's reset headers ("1s", "6m0s", "20ms", "0.5s") or plain seconds -> seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    return sum(float(n) * _UNIT_S[u] for n, u in parts) if parts else None


@dataclass
class ServerHints:
    """What a response's headers say about the limits (all optional)."""

    retry_after_s: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(cls, headers, max_wait_s: float = math.inf) -> ServerHints | None:
        """The hints of a response's headers; a wait they ask for (Retry-After, a reset with nothing
        remaining) is capped at `max_wait_s` (an endpoint's `max_retry_after_s`): a server asking for an
        hour does not stop every actor of the cluster for an hour."""

        def num(name):
            try:
                return float(headers.get(name))
            except (TypeError, ValueError):
                return None

        def capped(value):
            return None if value is None else min(value, max_wait_s)

        hints = cls(
            retry_after_s=capped(num("retry-after")),
            remaining_requests=num("x-ratelimit-remaining-requests"),
            reset_requests_s=capped(parse_duration_s(headers.get("x-ratelimit-reset-requests"))),
            remaining_tokens=num("x-ratelimit-remaining-tokens"),
            reset_tokens_s=capped(parse_duration_s(headers.get("x-ratelimit-reset-tokens"))),
        )
        return hints if any(v is not None for v in vars(hints).values()) else None


@dataclass
class Budget:
    limit_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    def reserve(self, estimate_usd: float) -> bool:
        """Admit a request only if its worst case still fits (spent + in flight + it)."""
        if self.limit_usd is not None and self.spent_usd + self.reserved_usd + estimate_usd > self.limit_usd:
            return False
        self.reserved_usd += estimate_usd
        return True

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd

    def take_slice(self, need_usd: float, want_usd: float) -> float | None:
        """Reserve a slice of at least `need_usd` (up to `want_usd`) -> its size, inf without a
        limit, None when not even `need_usd` fits."""
        if self.limit_usd is None:
            return math.inf
        left = self.limit_usd - self.spent_usd - self.reserved_usd
        if need_usd > left + 1e-12:
            return None
        got = max(need_usd, min(want_usd, left))
        self.reserved_usd += got
        return got


REFUSED = -1.0  # admit() -> this when the job's budget cannot take the request
LEASE_S = 1.0  # a lease is about this many seconds of its holder's use, and at most of the endpoint's rate
MIN_BLOCK = 4  # requests in a first lease


@dataclass
class Report:
    """What a lease holder sends back: permits unused, and spend since its last report."""

    requests: float = 0.0
    tokens: float = 0.0
    usd_returned: float = 0.0  # of the budget slice, not spent (may be negative: spent above estimates)
    usd_spent: float = 0.0
    hints: list = field(default_factory=list)  # ServerHints seen since, not yet sent


@dataclass
class Grant:
    requests: float = 0.0
    tokens: float = 0.0
    usd: float = 0.0  # budget slice; inf when the job has no budget
    wait_s: float = 0.0  # before the granted permits may be used (bucket debt, pause)
    pause_s: float = 0.0  # server-imposed pause left: applies to whatever the holder already has
    refused: bool = False  # the budget cannot take even the request that asked


class Admission:
    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.requests = TokenBucket(requests_per_minute)
        self.tokens = TokenBucket(tokens_per_minute)
        self.blocked_until = 0.0
        self.budgets: dict[str, Budget] = {}

    def set_limits(self, requests_per_minute: float, tokens_per_minute: float) -> None:
        """The endpoint's limits as the latest job gives them (its permits held so far kept)."""
        for bucket, per_minute in ((self.requests, requests_per_minute), (self.tokens, tokens_per_minute)):
            if bucket.per_minute != per_minute:
                bucket.per_minute, bucket.capacity = per_minute, max(1.0, per_minute / 6)
                bucket.level = min(bucket.level, bucket.capacity)

    def begin(self, job: str, budget_usd: float | None, spent_usd: float) -> None:
        """A stage of a run starts using the job's budget: spent is the larger of what this gate
        counted and `spent_usd` (the run's spend log: earlier jobs, stages killed midway); no
        request of an earlier stage is in flight any more."""
        old = self.budgets.get(job)
        self.budgets[job] = Budget(budget_usd, spent_usd=max(spent_usd, old.spent_usd if old else 0.0))

    def admit(self, job: str, tokens: int, cost_estimate_usd: float, budget_usd: float | None, now: float) -> float:
        """-> seconds the caller waits before sending, or REFUSED (budget spent)."""
        budget = self.budgets.setdefault(job, Budget(budget_usd))
        if not budget.reserve(cost_estimate_usd):
            return REFUSED
        return max(self.blocked_until - now, self.requests.reserve(1, now), self.tokens.reserve(tokens, now), 0.0)

    def settle(
        self, job: str, tokens_estimate: int, tokens_used: int, cost_estimate_usd: float, cost_usd: float, now: float
    ) -> None:
        """After a response: unused tokens back to the bucket, tokens used beyond the estimate
        (a prompt denser than ~3 characters a token, as in CJK text) taken from it, the
        estimate replaced by the cost."""
        self.tokens.give_back(tokens_estimate - tokens_used, now)
        self.budgets.setdefault(job, Budget(None)).settle(cost_estimate_usd, cost_usd)

    def observe(self, hints: ServerHints, now: float) -> None:
        if hints.retry_after_s is not None:
            self.blocked_until = max(self.blocked_until, now + hints.retry_after_s)
        for bucket, remaining, reset in (
            (self.requests, hints.remaining_requests, hints.reset_requests_s),
            (self.tokens, hints.remaining_tokens, hints.reset_tokens_s),
        ):
            if remaining is None:
                continue
            if remaining <= 0 and reset:
                self.blocked_until = max(self.blocked_until, now + reset)
            bucket.clamp(remaining, now)

    def lease(
        self,
        job: str,
        need_requests: float,
        need_tokens: float,
        need_usd: float,
        want_requests: float,
        want_tokens: float,
        want_usd: float,
        budget_usd: float | None,
        now: float,
        report: Report | None = None,
    ) -> Grant:
        """A block of permits: at least the `need_*` (what the asking request lacks), up to
        `want_*`, requests and tokens capped at LEASE_S of the endpoint's rate."""
        budget = self.budgets.setdefault(job, Budget(budget_usd))
        if report is not None:
            self.release(job, report, now)
        pause = max(0.0, self.blocked_until - now)
        slice_usd = budget.take_slice(need_usd, max(need_usd, want_usd))
        if slice_usd is None:
            return Grant(pause_s=pause, refused=True)
        r = max(need_requests, min(want_requests, max(1.0, self.requests.rate_per_s * LEASE_S)))
        t = max(need_tokens, min(want_tokens, max(1.0, self.tokens.rate_per_s * LEASE_S)))
        wait = max(
            pause, self.requests.reserve(r, now) if r > 0 else 0.0, self.tokens.reserve(t, now) if t > 0 else 0.0
        )
        return Grant(r, t, slice_usd, wait, pause)

    def release(self, job: str, report: Report, now: float) -> None:
        for hints in report.hints:
            self.observe(hints, now)
        if report.requests > 0:
            self.requests.give_back(report.requests, now)
        # Negative: a holder's debt, tokens its replies used beyond their estimates.
        self.tokens.give_back(report.tokens, now)
        budget = self.budgets.setdefault(job, Budget(None))
        if budget.limit_usd is not None or report.usd_spent:
            returned = report.usd_returned if math.isfinite(report.usd_returned) else 0.0
            budget.reserved_usd = max(0.0, budget.reserved_usd - returned - report.usd_spent)
            budget.spent_usd += report.usd_spent

    def spent(self, job: str) -> float:
        budget = self.budgets.get(job)
        return budget.spent_usd if budget else 0.0


class LocalPermits:
    """One actor's leased permits, spent locally (pure, clock-injected; one job)."""

    def __init__(self):
        self.requests = self.tokens = self.usd = 0.0
        self.usable_at = 0.0  # the held permits' earliest use (bucket debt at lease time)
        self.paused_until = 0.0
        self.refused = False
        self.spent_unreported = 0.0
        self.hints: list[ServerHints] = []
        self.taken = 0  # requests admitted since the last lease
        self.last_lease = None

    def covers(self, tokens: float, usd: float) -> bool:
        return self.requests >= 1 and self.tokens >= tokens and self.usd >= usd

    def take(self, tokens: float, usd: float, now: float) -> float | None:
        """-> seconds to wait when the held permits cover one request (they are spent), else None."""
        if not self.covers(tokens, usd):
            return None
        self.requests -= 1
        self.tokens -= tokens
        self.usd -= usd
        self.taken += 1
        return max(0.0, self.usable_at - now, self.paused_until - now)

    def ask(self, tokens: float, usd: float, now: float) -> tuple[float, float, float, float, float, float]:
        """-> (need_requests, need_tokens, need_usd, want_requests, want_tokens, want_usd) for a lease:
        what one request lacks, and a block of about LEASE_S of this holder's use (doubling while
        blocks run out faster than that)."""
        if self.last_lease is None:
            block = MIN_BLOCK
        else:
            elapsed = max(now - self.last_lease, 1e-3)
            block = max(MIN_BLOCK, math.ceil(2 * self.taken * min(1.0, LEASE_S / elapsed)))
        need = (max(0.0, 1 - self.requests), max(0.0, tokens - self.tokens), max(0.0, usd - self.usd))
        return (*need, float(block), block * tokens, block * usd)

    def apply(self, grant: Grant, now: float) -> None:
        self.last_lease, self.taken = now, 0
        self.paused_until = max(self.paused_until, now + grant.pause_s)
        if grant.refused:
            self.refused = True
            return
        if grant.requests or grant.tokens:
            self.usable_at = max(self.usable_at, now + grant.wait_s)
        self.requests += grant.requests
        self.tokens += grant.tokens
        self.usd += grant.usd

    def settle(self, tokens_estimate: float, tokens_used: float, usd_estimate: float, usd: float) -> None:
        """After a response: unused tokens stay here to spend again, tokens used beyond the
        estimate are a debt the next lease pays (or the release returns), the cost is counted."""
        self.tokens += tokens_estimate - tokens_used
        self.usd += usd_estimate - usd
        self.spent_unreported += usd

    def observe(self, hints: ServerHints, now: float) -> bool:
        """Apply the server's word here -> True when the gate must hear it now (a pause)."""
        urgent = False
        if hints.retry_after_s is not None:
            self.paused_until = max(self.paused_until, now + hints.retry_after_s)
            urgent = True
        for remaining, reset, attr in (
            (hints.remaining_requests, hints.reset_requests_s, "requests"),
            (hints.remaining_tokens, hints.reset_tokens_s, "tokens"),
        ):
            if remaining is None:
                continue
            if remaining <= 0 and reset:
                self.paused_until = max(self.paused_until, now + reset)
                urgent = True
            setattr(self, attr, min(getattr(self, attr), max(0.0, remaining)))
        if not urgent:
            self.hints = [hints]  # only the latest matters
        return urgent

    def report(self, everything: bool) -> Report:
        """Spend (and, with `everything`, the unused permits) to send; zeroes what it hands over."""
        rep = Report(usd_spent=self.spent_unreported, hints=self.hints)
        self.spent_unreported, self.hints = 0.0, []
        if everything:
            rep.requests, rep.tokens, rep.usd_returned = self.requests, self.tokens, self.usd
            self.requests = self.tokens = self.usd = 0.0
        return rep


class LeasedGate:
    """An API actor's gate: spends `LocalPermits`, leasing from `remote` only when they run out.
    `remote` has async `lease(job, ask, budget_usd, report) -> Grant` (ask: LocalPermits.ask's
    tuple), `release(job, report)` and `observe(hints)`: Admission's, on the gate's clock."""

    def __init__(self, remote):
        self.remote = remote
        self.local = LocalPermits()
        self._lock: asyncio.Lock | None = None
        self._job: str | None = None
        self._background: set = set()

    def __getstate__(self):  # shipped to actors fresh: no lock or tasks bound to a loop
        return {"remote": self.remote}

    def __setstate__(self, state):
        self.__init__(state["remote"])

    async def admit(self, job, tokens, cost_estimate, budget):
        self._job = job
        if self._lock is None:
            self._lock = asyncio.Lock()
        while True:
            wait = self.local.take(tokens, cost_estimate, time.monotonic())
            if wait is not None:
                return wait
            if self.local.refused:
                return REFUSED
            async with self._lock:
                if self.local.covers(tokens, cost_estimate) or self.local.refused:
                    continue  # another request's lease covered this one too
                grant = await self.remote.lease(
                    job,
                    self.local.ask(tokens, cost_estimate, time.monotonic()),
                    budget,
                    self.local.report(everything=False),
                )
                self.local.apply(grant, time.monotonic())

    async def settle(self, job, tokens_estimate, tokens_used, cost_estimate, cost):
        self.local.settle(tokens_estimate, tokens_used, cost_estimate, cost)

    async def observe(self, hints):
        if self.local.observe(hints, time.monotonic()):
            task = asyncio.ensure_future(self.remote.observe(hints))  # fire and forget
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def release(self):
        """Unused permits back, spend reported: when the actor has no batch open."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._job is not None:
            await self.remote.release(self._job, self.local.report(everything=True))
