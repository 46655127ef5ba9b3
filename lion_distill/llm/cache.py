"""A persistent response cache in the run directory, one per stage: a re-run or a resumed
stage never sends the same request twice.

Layout: `llm_cache/responses/<stage slug>/<writer>-<seq>.parquet`, whole parquet parts with
the columns `key` (the sha256 of `cache_key`) and the response columns of
`RESPONSE_SCHEMA` (`text`, `finish_reason`, `prompt_tokens`, `completion_tokens`,
`logprobs`). Each writer (one per API actor) writes its own parts, each atomically
through RunDir (temp + rename), so concurrent actors never share a file and a killed job
leaves only whole parts; on any pyarrow filesystem, object stores included. Only answered
requests are stored: a failed one is retried by the next run. Secrets never enter a part.

An answer is recorded as it comes, before the batch it belongs to is done: on a local run
directory each one is appended at once to its writer's journal (`<writer>-<seq>.jsonl.open`,
a line per answer), which a killed process cannot lose; the journal becomes a part every
`flush_every` answers and at each batch's end. An object store cannot append: there the part
is also written whenever `flush_s` has passed since the last one, so a killed actor loses at
most that long of answers. A journal its writer left behind (killed) is made a part by the
next stage that reads the cache (`cache_parts`), a torn last line skipped.

Nothing loads a cache whole: lion_distill.llm.generate computes each row's key in Ray Data and
left-joins the stage's parts on it before the API actors (`cached_responses` is the
cache side of that join), so an actor only sees the cached answers of the rows it is
handed, and only writes. An actor Ray restarts (it was killed with batches in hand, which Ray
Data sends it again) reads the whole stage's cache once (`read_cache`): the answers its last
life got after the join are not paid for again. Two writers may have stored the same key (two
rows asked the same request at once, or a job killed between two answers): `first_per_key`
keeps one row per key, so a join never multiplies a row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lion_distill.data.rundir import RunDir
from lion_distill.llm.responses import CACHE_KEY_COL, CACHED_COL, DRAW_COL, PROMPT_COL, decode_prompt, response_row

log = logging.getLogger("lion_distill.llm")
CACHE_DIR = "llm_cache/responses"
PART_SUFFIX = ".parquet"
JOURNAL_SUFFIX = ".jsonl.open"
RESPONSE_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("logprobs", pa.string()),
        ("reasoning", pa.string()),  # parts written before it existed lack it: read as none
    ]
)
CACHE_SCHEMA = pa.schema([("key", pa.string()), *RESPONSE_SCHEMA])


def cache_key(
    model: str, prompt, sampling: dict, structured_output: dict | None, logprobs: int | None, draw: str | None = None
) -> str:
    """A request's key. `draw` (lion_distill.llm.generate's per-row draw identity) makes a
    sample asked for again a new request; without it the same prompt is the same
    request, so an answer already paid for is reused (and keys of older caches hold)."""
    parts = [model, prompt, sampling, structured_output, logprobs] + ([draw] if draw is not None else [])
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def sampling_key(role) -> dict:
    """What of a role, beside its model, its answers depend on: its sampling and, when it sets
    them, its chat template's variables (an `enable_thinking` changes the answer). Without
    them the key is the sampling alone, so keys of older caches hold."""
    sampling = role.sampling.model_dump()
    return {**sampling, "chat_template_kwargs": role.chat_template_kwargs} if role.chat_template_kwargs else sampling


def request_seed(seed: int | None, draw: str | None) -> int | None:
    """The seed of one drawn request, derived from the role's seed and the draw's identity
    (stage, iteration, round, row): reproducible on a re-run, different for every draw.
    None without a role seed (unseeded sampling stays unseeded) or without a draw."""
    if seed is None or draw is None:
        return seed
    digest = hashlib.sha256(json.dumps([seed, draw]).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: every backend takes it


def stage_slug(stage: str) -> str:
    """A stage name as one folder name ("discrimination/teacher" -> "discrimination_teacher").
    Two stages that map to one slug share a cache, which is harmless: a key is the request."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", stage).strip(".")
    return slug or "_"


def stage_dir(stage: str) -> str:
    return f"{CACHE_DIR}/{stage_slug(stage)}"


def cache_parts(run_dir: RunDir, stage: str, recover: bool = True) -> list[pafs.FileInfo]:
    """The stage's whole parts (a temp file of a writer killed mid-write is not one), sorted
    by path: one listing, no file opened. `recover`: journals their writers left (killed) are
    made parts first; only where none of the stage's writers runs (as a stage starts)."""
    if recover:
        for info in _listing(run_dir, stage, JOURNAL_SUFFIX):
            _journal_to_part(run_dir, stage, info)
    return _listing(run_dir, stage, PART_SUFFIX)


def _listing(run_dir: RunDir, stage: str, suffix: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(run_dir.path(stage_dir(stage)), allow_not_found=True)
    return sorted(
        (i for i in run_dir.fs.get_file_info(selector) if i.type == pafs.FileType.File and i.path.endswith(suffix)),
        key=lambda i: i.path,
    )


def read_journal(run_dir: RunDir, path: str) -> pa.Table:
    """A journal's answers; a line cut short by a kill (the last) is skipped, and a journal its
    writer has just made a part of (gone by now) is empty."""
    try:
        with run_dir.fs.open_input_stream(path) as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        lines = []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)


def _journal_to_part(run_dir: RunDir, stage: str, journal: pafs.FileInfo) -> None:
    """A dead writer's journal as a part of its own, then gone (a kill between the two leaves
    both: the same answers twice, which first_per_key reads once)."""
    table = read_journal(run_dir, journal.path)
    if table.num_rows:
        name = journal.base_name[: -len(JOURNAL_SUFFIX)]
        run_dir.write_table(f"{stage_dir(stage)}/{name}-recovered{PART_SUFFIX}", table)
    run_dir.fs.delete_file(journal.path)


def first_per_key(table: pa.Table, key: str = "key") -> pa.Table:
    """One row per key, the first seen (vectorized: group the row numbers by key, take the least)."""
    if table.num_rows < 2:
        return table
    numbered = pa.table({key: table[key], "_row": pa.array(range(table.num_rows), pa.int64())})
    firsts = numbered.group_by(key, use_threads=False).aggregate([("_row", "min")])["_row_min"]
    if len(firsts) == table.num_rows:
        return table
    return table.take(firsts.take(pc.sort_indices(firsts)))  # in the table's order


def attach_cache_key(model: str, sampling: dict, structured_output: dict | None, logprobs: int | None):
    """Batch mapper for Ray Data (pyarrow batches): adds CACHE_KEY_COL, each row's request key
    (its decoded prompt, the role's model and sampling, structured output, logprobs, its draw)."""

    def _attach(batch: pa.Table) -> pa.Table:
        prompts = batch[PROMPT_COL].to_pylist()
        draws = batch[DRAW_COL].to_pylist() if DRAW_COL in batch.column_names else [None] * len(prompts)
        keys = [
            cache_key(model, decode_prompt(p), sampling, structured_output, logprobs, d) for p, d in zip(prompts, draws)
        ]
        return batch.append_column(CACHE_KEY_COL, pa.array(keys, pa.string()))

    return _attach


def joinable(parts: pa.Table) -> pa.Table:
    """Cache parts -> the cache side of generate's join: one row per key, (CACHE_KEY_COL,
    CACHED_COL: the response as JSON), names no caller's row can hold."""
    parts = first_per_key(parts)
    responses = parts.select([n for n in RESPONSE_SCHEMA.names if n in parts.column_names]).to_pylist()
    return pa.table(
        {
            CACHE_KEY_COL: parts["key"].cast(pa.string()),
            CACHED_COL: pa.array([json.dumps(r, ensure_ascii=False) for r in responses], pa.string()),
        }
    )


def cached_response(encoded: str | None) -> dict | None:
    """CACHED_COL's value -> the response row it holds (None: not cached). Only answers are cached:
    the row's error columns are empty."""
    return None if encoded is None else {**response_row(None, "stop"), **json.loads(encoded)}


class CacheWriter:
    """One API actor's new answers for one stage: each appended to its journal as it comes (a
    local run directory), written as a whole parquet part every `flush_every` answers, every
    `flush_s` seconds where there is no journal, and whenever the actor calls `flush` (at each
    batch's end)."""

    def __init__(self, run_dir: RunDir, stage: str, flush_every: int = 64, flush_s: float = 1.0):
        self.run_dir, self.folder, self.flush_every, self.flush_s = run_dir, stage_dir(stage), flush_every, flush_s
        self.writer = uuid.uuid4().hex[:12]
        self._seq, self._last = 0, time.monotonic()
        self._pending: list[dict] = []
        self._journal: int | None = None  # a file descriptor: each answer is one write(2), unbuffered

    def put(self, key: str, response: dict) -> None:
        row = {"key": key, **{name: response.get(name) for name in RESPONSE_SCHEMA.names}}
        self._pending.append(row)
        if self.run_dir.is_local:
            if self._journal is None:
                path = self._journal_path()
                self.run_dir.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                self._journal = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._journal, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
        elif time.monotonic() - self._last >= self.flush_s:
            self.flush()
            return
        if len(self._pending) >= self.flush_every:
            self.flush()

    def _journal_path(self) -> str:
        return self.run_dir.path(f"{self.folder}/{self.writer}-{self._seq:06d}{JOURNAL_SUFFIX}")

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending, schema=CACHE_SCHEMA)
        self.run_dir.write_table(f"{self.folder}/{self.writer}-{self._seq:06d}{PART_SUFFIX}", table)
        if self._journal is not None:  # its answers are in the part now
            os.close(self._journal)
            self.run_dir.fs.delete_file(self._journal_path())
            self._journal = None
        self._seq += 1
        self._pending = []


def read_cache(run_dir: RunDir, stage: str) -> pa.Table:
    """A stage's whole cache as one table, one row per key, the journals of running writers
    included: for tests, tools and an actor Ray restarted, never for a stage (lion_distill.llm.generate
    joins the parts in Ray Data instead). Journals are listed first: one made a part meanwhile
    is read as that part."""
    journals = [read_journal(run_dir, info.path) for info in _listing(run_dir, stage, JOURNAL_SUFFIX)]
    tables = [
        pq.read_table(info.path, filesystem=run_dir.fs, schema=CACHE_SCHEMA)
        for info in cache_parts(run_dir, stage, recover=False)
    ] + journals
    return first_per_key(pa.concat_tables(tables)) if tables else CACHE_SCHEMA.empty_table()
