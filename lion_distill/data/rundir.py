"""A run directory on any pyarrow filesystem (local path, s3://, gs://, hdfs://...).

Writes are atomic where the filesystem allows it: write a temporary file, then
rename it over the target, so a killed job leaves either the old file or the new
one, never half of one. (Object stores implement the rename as copy + delete: the
target still only ever appears whole. S3's copy is one CopyObject up to 5 GiB; a
larger file is streamed into place, a multipart upload, which also appears whole.)

`RunLog` is a logging handler that keeps a job's log lines in `logs/` of the run directory.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lion_distill.crashpoints import crash_point

COPY_OBJECT_LIMIT = 5 << 30  # S3's largest object one CopyObject (pyarrow's move) copies
# The run directory's format, recorded as `version` in its state.json (lion_distill.runner) when
# the directory is created. What each format changed, for the line that refuses an older one:
FORMAT = 3
FORMATS = {
    1: "the state of the loop before the shared stage runner",
    2: "failures as `failed: <reason>` strings",
    3: "typed failures: `finish_reason` error with `error_kind`, judgments' `failure_kind`",
}


def format_problem(state: dict | None, where: str) -> str | None:
    """One line when `state` (a run directory's state.json) is not of this FORMAT: which format it
    is and what to do. None when it is, or when there is no state yet (a new run directory)."""
    if state is None:
        return None
    version = state.get("version", 1)  # format 1 did not record one
    if version == FORMAT:
        return None
    if isinstance(version, int) and version > FORMAT:
        return f"{where}: run directory format {version}, newer than this lion-distill's {FORMAT}: upgrade lion-distill"
    return (
        f"{where}: run directory format {version} ({FORMATS.get(version, 'unknown')}); this lion-distill reads "
        f"format {FORMAT} ({FORMATS[FORMAT]}): start a new run directory, or finish this one with the "
        "lion-distill release that began it"
    )


class RunDir:
    def __init__(self, uri: str | Path):
        uri = str(uri)
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.fs.create_dir(self.root, recursive=True)

    def path(self, *parts: str) -> str:
        """A path inside the run directory, as the run's filesystem names it (no scheme: for
        `self.fs` only)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        """A path inside the run directory as another process opens it: an absolute local path,
        or the full URI, scheme and query (an endpoint, a region) kept. What goes into a
        config, a state file or an actor, so a loader on any node finds the same thing."""
        if self.is_local:
            return self.path(*parts)
        base, sep, query = self.uri.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + sep + query

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self, *parts: str) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on the local filesystem")
        return Path(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._atomic(rel) as out:
            out.write(data)

    @contextmanager
    def _atomic(self, rel: str, point: str | None = None):
        """An output stream to a temporary file, renamed over `rel` once the block ends without an error.
        `point`: the crash point (lion_distill.crashpoints) between the two, written but not in place."""
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        out = self.fs.open_output_stream(tmp)  # a stream that cannot open raises as it is: there is no file to remove
        try:
            with out:
                yield out
        except BaseException:
            self.fs.delete_file(tmp)
            raise
        if point is not None:
            crash_point(point)
        self._move(tmp, target)

    def _move(self, source: str, target: str) -> None:
        """`fs.move`, except for an object-store file above COPY_OBJECT_LIMIT: streamed, then removed."""
        if not self.is_local and (self.fs.get_file_info(source).size or 0) > COPY_OBJECT_LIMIT:
            pafs.copy_files(source, target, source_filesystem=self.fs, destination_filesystem=self.fs)
            self.fs.delete_file(source)
            return
        self.fs.move(source, target)

    @contextmanager
    def table_writer(self, rel: str, schema: pa.Schema):
        """A parquet writer of `schema` (`.write_table(chunk)`): a table written a chunk at a
        time, which appears at `rel` whole, and only when the block ends without an error."""
        with self._atomic(rel) as out, pq.ParquetWriter(out, schema) as writer:
            yield writer

    def move(self, rel: str, to: str) -> None:
        self._move(self.path(rel), self.path(to))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str, default=None):
        if not self.exists(rel):
            return default
        return json.loads(self.read_bytes(rel))

    def write_table(self, rel: str, table: pa.Table, point: str | None = None) -> None:
        # Straight to the (temporary) file: a pool's parquet is not first built in memory and copied.
        with self._atomic(rel, point) as out:
            pq.write_table(table, out)

    def read_table(self, rel: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs, schema=schema, columns=columns)

    def size_bytes(self) -> int:
        """The bytes of every file under the run directory (checkpoints and exports included)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


class RunLog(logging.Handler):
    """A job's log lines, also in `run_dir/logs/<name>`: appended as they come in a local run
    directory; an object store cannot append, so there the whole log is written again at most
    every `upload_every_s` seconds, and once more when the handler closes (the job's end)."""

    def __init__(self, run: RunDir, name: str, upload_every_s: float = 30.0):
        super().__init__()
        self.run, self.rel, self.every = run, f"logs/{name}", upload_every_s
        self.uploaded = time.monotonic()
        if run.is_local:
            run.local_path("logs").mkdir(parents=True, exist_ok=True)
            self.stream = open(run.local_path(self.rel), "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        else:
            self.stream = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
            if not self.run.is_local and time.monotonic() - self.uploaded >= self.every:
                self._upload()
        except Exception:
            self.handleError(record)

    def _upload(self) -> None:
        self.run.write_bytes(self.rel, self.stream.getvalue().encode())
        self.uploaded = time.monotonic()

    def close(self) -> None:
        with self.lock:
            if not self.stream.closed:
                if not self.run.is_local:
                    self._upload()
                self.stream.close()
        super().close()
