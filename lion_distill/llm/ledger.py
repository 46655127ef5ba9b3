"""What an API role spent, in the run directory next to the cache.

Three records: `llm_cache/ledger/<stage>-<time>.json`, a stage's totals written when it ends;
the spend log `llm_cache/spend/<writer>-<seq>.jsonl`, written by every API actor as its
requests complete, so a stage killed midway still counts what it spent; and
`llm_cache/spend_summary.json`, the spend log summed so far. On a local run directory each
completed request is a line appended at once to the writer's open part
(`<writer>-<seq>.open.jsonl`, renamed to its part every `SpendLog.every_s`): a killed driver's
log lags it by the requests in flight only. On an object store (no appends) a part is written
every `every_s`, which is then how far the log may lag a killed actor. The
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
import os
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
    """One API actor's completed requests, appended to the run's spend log in part files (atomic
    writes or renames, one writer per file, as the response cache does): a line per request in
    the open part of a local run directory, else one line per role and stage for the requests
    completed since the last write."""

    def __init__(self, run_dir: RunDir, *, role: str, stage: str, every_s: float = 1.0):
        self.run_dir, self.role, self.stage, self.every_s = run_dir, role, stage, every_s
        self.writer, self._seq, self._last = uuid.uuid4().hex[:12], 0, time.monotonic()
        self._pending = dict.fromkeys(SPEND_FIELDS, 0)
        self._open: int | None = None  # the open part's file descriptor (a local run directory)

    def add(self, *, retries: int, failed: bool, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        line = {
            "requests": 1,
            "retries": retries,
            "failed": int(failed),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost_usd,
        }
        if self.run_dir.is_local:
            if self._open is None:
                path = self._part(OPEN_SUFFIX)
                self.run_dir.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                self._open = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._open, (json.dumps({"role": self.role, "stage": self.stage, **line}) + "\n").encode())
            self._pending["requests"] += 1
        else:
            for name, value in line.items():
                self._pending[name] += value
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def _part(self, suffix: str) -> str:
        return self.run_dir.path(f"{SPEND_DIR}/{self.writer}-{self._seq:06d}{suffix}")

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending["requests"]:
            return
        if self._open is not None:  # its lines become the part, renamed whole
            os.close(self._open)
            self._open = None
            self.run_dir.fs.move(self._part(OPEN_SUFFIX), self._part(".jsonl"))
        else:
            line = json.dumps({"role": self.role, "stage": self.stage, **self._pending})
            self.run_dir.write_bytes(f"{SPEND_DIR}/{self.writer}-{self._seq:06d}.jsonl", (line + "\n").encode())
        self._seq += 1
        self._pending = dict.fromkeys(SPEND_FIELDS, 0)


OPEN_SUFFIX = ".open.jsonl"  # not a part's name: counted every time it is read, never folded
SUMMARY = "llm_cache/spend_summary.json"
_PART = re.compile(r"(?P<writer>[0-9A-Za-z]+)-(?P<seq>[0-9]+)\.jsonl")


def _fold(totals: dict, line: dict) -> None:
    row = totals.setdefault((line["role"], line["stage"]), dict.fromkeys(SPEND_FIELDS, 0))
    for name in SPEND_FIELDS:
        row[name] += line.get(name, 0)


def _read_part(run_dir: RunDir, path: str) -> list[dict]:
    """A part's lines; an unreadable line (the last of an open part its writer was killed while
    appending to) is skipped; an open part renamed since it was listed is read next time, as its part."""
    lines = []
    try:
        with run_dir.fs.open_input_stream(path) as f:
            texts = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    for text in texts:
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
