"""A persistent response cache in the run directory: a re-run or a resumed run
never sends the same request twice.

Each writer (one per API actor) appends *whole part files*
`llm_cache/responses/<writer>-<seq>.jsonl`, each written atomically by RunDir
(temp + rename), so concurrent actors never share a file and a killed job leaves
only complete parts; on any pyarrow filesystem, object stores included. On start a
cache reads every part into an in-memory index. Only answered requests are
stored: a failed one is retried by the next run. Secrets never enter a record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid

import pyarrow.fs as pafs

from engine.data.rundir import RunDir

log = logging.getLogger("engine.llm")
CACHE_DIR = "llm_cache/responses"


def cache_key(model: str, prompt, sampling: dict, structured_output: dict | None, logprobs: int | None,
              draw: str | None = None) -> str:
    """A request's key. `draw` (engine.llm.generate's per-row draw identity) makes a
    sample asked for again a new request; without it the same prompt is the same
    request, so an answer already paid for is reused (and keys of older caches hold)."""
    parts = [model, prompt, sampling, structured_output, logprobs] + ([draw] if draw is not None else [])
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def request_seed(seed: int | None, draw: str | None) -> int | None:
    """The seed of one drawn request, derived from the role's seed and the draw's identity
    (stage, iteration, round, row): reproducible on a re-run, different for every draw.
    None without a role seed (unseeded sampling stays unseeded) or without a draw."""
    if seed is None or draw is None:
        return seed
    digest = hashlib.sha256(json.dumps([seed, draw]).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: every backend takes it


class ResponseCache:
    def __init__(self, run_dir: RunDir, flush_every: int = 64):
        self.run_dir, self.flush_every = run_dir, flush_every
        self.writer = uuid.uuid4().hex[:12]
        self._seq = 0
        self._pending: list[str] = []
        self.index, self.unreadable_lines = self._load()

    def _load(self) -> tuple[dict[str, dict], int]:
        index, bad = {}, 0
        selector = pafs.FileSelector(self.run_dir.path(CACHE_DIR), allow_not_found=True)
        for info in self.run_dir.fs.get_file_info(selector):
            if not info.path.endswith(".jsonl"):
                continue  # a temp file of a writer that was killed mid-write
            with self.run_dir.fs.open_input_stream(info.path) as f:
                for line in f.read().decode("utf-8").splitlines():
                    try:
                        rec = json.loads(line)
                        index[rec["key"]] = rec["response"]
                    except (ValueError, KeyError, TypeError):
                        bad += 1
        if bad:
            log.warning("response cache: skipped %d unreadable lines under %s", bad, CACHE_DIR)
        return index, bad

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> dict | None:
        return self.index.get(key)

    def put(self, key: str, response: dict) -> None:
        self.index[key] = response
        self._pending.append(json.dumps({"key": key, "response": response}, ensure_ascii=False))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8")
        self.run_dir.write_bytes(f"{CACHE_DIR}/{self.writer}-{self._seq:06d}.jsonl", data)
        self._seq += 1
        self._pending = []
