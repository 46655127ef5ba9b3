"""Cluster-wide admission for an API endpoint: token buckets on requests/min and
tokens/min, the server's own rate-limit headers, and a spending budget per job.

Pure and clock-injected so the arithmetic is unit-tested in microseconds; the Ray
named actor in `engine.llm.gate` holds one `Admission` for every API actor of a
cluster. Reservation style (as golang's rate.Limiter.Reserve): a request takes its
permits now and is told how long to wait, so one call admits it.
"""
from __future__ import annotations

import re
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
    def from_headers(cls, headers) -> ServerHints | None:
        def num(name):
            try:
                return float(headers.get(name))
            except (TypeError, ValueError):
                return None
        hints = cls(
            retry_after_s=num("retry-after"),
            remaining_requests=num("x-ratelimit-remaining-requests"),
            reset_requests_s=parse_duration_s(headers.get("x-ratelimit-reset-requests")),
            remaining_tokens=num("x-ratelimit-remaining-tokens"),
            reset_tokens_s=parse_duration_s(headers.get("x-ratelimit-reset-tokens")),
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


REFUSED = -1.0  # admit() -> this when the job's budget cannot take the request


class Admission:
    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.requests = TokenBucket(requests_per_minute)
        self.tokens = TokenBucket(tokens_per_minute)
        self.blocked_until = 0.0
        self.budgets: dict[str, Budget] = {}

    def admit(self, job: str, tokens: int, cost_estimate_usd: float, budget_usd: float | None, now: float) -> float:
        """-> seconds the caller waits before sending, or REFUSED (budget spent)."""
        budget = self.budgets.setdefault(job, Budget(budget_usd))
        if not budget.reserve(cost_estimate_usd):
            return REFUSED
        return max(self.blocked_until - now, self.requests.reserve(1, now), self.tokens.reserve(tokens, now), 0.0)

    def settle(self, job: str, tokens_estimate: int, tokens_used: int, cost_estimate_usd: float,
               cost_usd: float, now: float) -> None:
        """After a response: unused tokens back to the bucket, the estimate replaced by the cost."""
        if tokens_used < tokens_estimate:
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

    def spent(self, job: str) -> float:
        budget = self.budgets.get(job)
        return budget.spent_usd if budget else 0.0
