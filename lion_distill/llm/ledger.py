"""What an API role spent, in the run directory next to the cache.

Three records: `llm_cache/ledger/<stage>-<time>.json`, a stage's totals written when it ends;
the spend log `llm_cache/spend/<writer>-<seq>.jsonl`, written by every API actor as its
requests complete (at most `SpendLog.every_s` behind), so a stage killed midway still
counts what it spent; and `llm_cache/spend_summary.json`, the spend log summed so far. The
spend log is what a role's run-wide `budget_usd` is held to, across stages, iterations and
resumed jobs, and what a report's total cost adds up.

Summed incrementally: the summary holds the totals per role and stage and, per writer, how
many of its parts (seq 0..n-1) are folded in; a reader lists the spend folder (no file
opened), reads the summary and only the parts not yet in it, and writes the summary back
(atomically: totals and the parts they count always go together, so a reader killed midway,
or two at once, never count a part twice or lose one).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import defaultdict

import pyarrow.fs as pafs

from lion_distill.config.models import OpenAIEndpoint
from lion_distill.data.rundir import RunDir
from lion_distill.metrics import StageRecord

LEDGER_DIR = "llm_cache/ledger"
SPEND_DIR = "llm_cache/spend"
SPEND_FIELDS = ("requests", "retries", "failed", "prompt_tokens", "completion_tokens", "cost_usd")
log = logging.getLogger("lion_distill.llm")


def cost_usd(endpoint: OpenAIEndpoint, prompt_tokens: int, completion_tokens: int) -> float:
    return (
        prompt_tokens * endpoint.price_per_1k_prompt_tokens
        + completion_tokens * endpoint.price_per_1k_completion_tokens
    ) / 1000.0


def write_ledger(run_dir: RunDir, rec: StageRecord, *, role_name: str, model: str, endpoint: OpenAIEndpoint) -> str:
    """One JSON file per stage run (a resumed stage adds another): the key is never in it."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", rec.stage)
    rel = f"{LEDGER_DIR}/{slug}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
    run_dir.write_json(
        rel,
        {
            "stage": rec.stage,
            "role": role_name,
            "model": model,
            "base_url": endpoint.base_url,
            "rows": rec.rows,
            "failed_rows": rec.failed_rows,
            "api_requests": rec.api_requests,
            "api_retries": rec.api_retries,
            "api_cached": rec.api_cached,
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "cost_usd": round(rec.cost_usd, 8),
            "budget_usd": endpoint.budget_usd,
            "seconds": round(rec.seconds, 3),
        },
    )
    return rel


class SpendLog:
    """One API actor's completed requests, appended to the run's spend log in whole part files
    (atomic writes, one writer per file, as the response cache does): one line per role and
    stage for the requests completed since the last write."""

    def __init__(self, run_dir: RunDir, *, role: str, stage: str, every_s: float = 1.0):
        self.run_dir, self.role, self.stage, self.every_s = run_dir, role, stage, every_s
        self.writer, self._seq, self._last = uuid.uuid4().hex[:12], 0, time.monotonic()
        self._pending = dict.fromkeys(SPEND_FIELDS, 0)

    def add(self, *, retries: int, failed: bool, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        p = self._pending
        p["requests"] += 1
        p["retries"] += retries
        p["failed"] += int(failed)
        p["prompt_tokens"] += prompt_tokens
        p["completion_tokens"] += completion_tokens
        p["cost_usd"] += cost_usd
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending["requests"]:
            return
        line = json.dumps({"role": self.role, "stage": self.stage, **self._pending})
        self.run_dir.write_bytes(f"{SPEND_DIR}/{self.writer}-{self._seq:06d}.jsonl", (line + "\n").encode())
        self._seq += 1
        self._pending = dict.fromkeys(SPEND_FIELDS, 0)


SUMMARY = "llm_cache/spend_summary.json"
_PART = re.compile(r"(?P<writer>[0-9A-Za-z]+)-(?P<seq>[0-9]+)\.jsonl")


def _fold(totals: dict, line: dict) -> None:
    row = totals.setdefault((line["role"], line["stage"]), dict.fromkeys(SPEND_FIELDS, 0))
    for name in SPEND_FIELDS:
        row[name] += line.get(name, 0)


def _read_part(run_dir: RunDir, path: str) -> list[dict]:
    lines = []
    with run_dir.fs.open_input_stream(path) as f:
        for text in f.read().decode("utf-8").splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                log.warning("spend log: skipped an unreadable line in %s", path)
    return lines


def read_spend(run_dir: RunDir) -> list[dict]:
    """The run's spend so far, one line per role and stage ({"role", "stage", *SPEND_FIELDS}),
    every part of the spend log counted once (a temp file of a writer killed mid-write is
    skipped). Reads only the parts written since the last call, and folds them into the
    summary (best effort: a run directory it cannot write to is still read right)."""
    summary = run_dir.read_json(SUMMARY, default=None) or {"folded": {}, "totals": []}
    folded: dict[str, int] = dict(summary["folded"])
    totals: dict = {}
    for line in summary["totals"]:
        _fold(totals, line)
    new: dict[str, dict[int, str]] = {}
    pending: dict = {}  # counted by this call, not folded into the summary
    selector = pafs.FileSelector(run_dir.path(SPEND_DIR), allow_not_found=True)
    for info in run_dir.fs.get_file_info(selector):
        m = _PART.fullmatch(info.base_name)
        if m is None:
            if info.path.endswith(".jsonl"):  # not a SpendLog part: counted every time, never folded
                for line in _read_part(run_dir, info.path):
                    _fold(pending, line)
            continue
        if int(m["seq"]) >= folded.get(m["writer"], 0):
            new.setdefault(m["writer"], {})[int(m["seq"])] = info.path
    for writer, parts in new.items():
        for seq in sorted(parts):
            contiguous = seq == folded.get(writer, 0)  # after a gap: counted now, folded once it is filled
            for line in _read_part(run_dir, parts[seq]):
                _fold(totals if contiguous else pending, line)
            if contiguous:
                folded[writer] = seq + 1
    if new and folded != summary["folded"]:
        lines = [{"role": role, "stage": stage, **row} for (role, stage), row in sorted(totals.items())]
        try:
            run_dir.write_json(SUMMARY, {"folded": folded, "totals": lines})
        except OSError as exc:
            log.warning("spend log: could not write %s (%s); it is read again next time", SUMMARY, exc)
    for key, row in pending.items():
        _fold(totals, {"role": key[0], "stage": key[1], **row})
    return [{"role": role, "stage": stage, **row} for (role, stage), row in sorted(totals.items())]


def spent_by_role(run_dir: RunDir) -> dict[str, float]:
    """Dollars each role has spent in the run so far, every stage and job included."""
    spent: dict[str, float] = defaultdict(float)
    for line in read_spend(run_dir):
        spent[line["role"]] += line["cost_usd"]
    return dict(spent)
