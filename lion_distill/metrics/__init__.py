"""One metrics vocabulary for every stage: `<metric>/<stage>`, e.g. `timing_s/imitation`.

with stage_timer("teacher_answers") as rec:
    ...                                   # do the work
    rec.rows, rec.completion_tokens = n, tokens
run_dir.write_json("iter_0/metrics.json", Metrics([rec]).as_dict())  # timing_s/teacher_answers, ...
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("lion_distill")
FAILED_PREFIX = "failed_"  # `failed_<error kind>/<stage>`: a stage's failed rows of that kind


@dataclass
class StageRecord:
    stage: str
    seconds: float = 0.0
    rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpus: float = 0.0
    api_requests: int = 0
    api_retries: int = 0
    api_cached: int = 0
    failed_rows: int = 0
    failed_by_kind: dict[str, int] = field(default_factory=dict)  # lion_distill.errors.ErrorKind value -> rows
    cost_usd: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # e.g. samples_per_s, mfu, hard_fraction

    def as_dict(self) -> dict[str, float]:
        s, per = self.stage, max(self.seconds, 1e-9)
        out = {
            f"timing_s/{s}": round(self.seconds, 4),
            f"rows/{s}": self.rows,
            f"rows_per_s/{s}": self.rows / per,
            f"prompt_tokens/{s}": self.prompt_tokens,
            f"completion_tokens/{s}": self.completion_tokens,
            f"prompt_tokens_per_s/{s}": self.prompt_tokens / per,
            f"completion_tokens_per_s/{s}": self.completion_tokens / per,
        }
        if self.gpus:
            out[f"tokens_per_s_per_gpu/{s}"] = (self.prompt_tokens + self.completion_tokens) / per / self.gpus
        if self.api_requests or self.api_cached:
            out.update(
                {
                    f"api_requests/{s}": self.api_requests,
                    f"api_retries/{s}": self.api_retries,
                    f"api_cached/{s}": self.api_cached,
                    f"cost_usd/{s}": round(self.cost_usd, 6),
                }
            )
        if self.failed_rows:
            out[f"failed_rows/{s}"] = self.failed_rows
        out.update({f"{FAILED_PREFIX}{kind}/{s}": n for kind, n in sorted(self.failed_by_kind.items())})
        out.update({f"{k}/{s}": v for k, v in self.extra.items()})
        return out

    def summary(self) -> str:
        parts = [f"{self.seconds:.1f}s", f"{self.rows} rows", f"{self.rows / max(self.seconds, 1e-9):.1f} rows/s"]
        if self.completion_tokens:
            parts.append(f"{self.completion_tokens / max(self.seconds, 1e-9):.0f} completion tok/s")
        if self.api_requests or self.api_cached:
            parts.append(
                f"{self.api_requests} requests ({self.api_cached} cached, {self.api_retries} retries), ${self.cost_usd:.4f}"
            )
        if self.failed_rows:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failed_by_kind.items()))
            parts.append(f"{self.failed_rows} failed" + (f" ({kinds})" if kinds else ""))
        parts += [f"{k}={v:.4g}" for k, v in self.extra.items()]
        return f"[{self.stage}] " + ", ".join(parts)


@contextmanager
def stage_timer(stage: str):
    rec = StageRecord(stage)
    start = time.perf_counter()
    try:
        yield rec
    finally:
        rec.seconds = time.perf_counter() - start
        log.info(rec.summary())


class Metrics:
    """The records of one run (or one iteration), flattened for metrics.json."""

    def __init__(self, records: list[StageRecord] | None = None):
        self.records = list(records or [])

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for rec in self.records:
            out.update(rec.as_dict())
        return out


def usage(records: list[StageRecord]) -> dict:
    """A stage's contribution to the run's counters."""
    return {
        "rows": sum(r.rows for r in records),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "api_requests": sum(r.api_requests for r in records),
        "cost_usd": sum(r.cost_usd for r in records),
    }
