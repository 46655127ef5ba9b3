"""A call's answers written block by block as they finish, so a call killed midway resumes
with the blocks already written instead of asking every row again.

    generate(role, rows, to_prompt, ..., parts=Parts(run.uri_of("iter_0/discrimination/parts/x")))

Each block a backend finishes is written, inside the Ray Data pipeline and before the next
one is waited for, as one parquet file `<folder>/part-<digest of its ids>.parquet` through
RunDir (a temp file renamed into place: a killed writer leaves no half part, on object stores
too). A task Ray Data runs again (its worker died) writes the same block under the same name,
replacing it, never beside it. A row whose request the backend will send again (a Serve engine
lost it) is not final and is not written.

A row that failed for a reason that passes (lion_distill.llm.transient) is written, so the call
hands it back as failed, but is never done: `part_ids` counts only the other rows as done, and
a resumed call asks the rest again. Where an id has several rows (a failure asked again, a block
retried with other rows around it), the first complete one is its answer, in every read
(`read_answers`, `iter_answers`): an answer is counted once. Every backend writes parts: for
vLLM and transformers they are the only record of a finished block; an API role's response
cache also keeps single answers of unfinished blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lion_distill.data.rundir import RunDir
from lion_distill.llm.transient import transient_mask

PART_SUFFIX = ".parquet"
NOT_FINAL = "_serve_retry"  # lion_distill.llm.serve_backend.RETRY: a row the backend asks again
DONE_COLUMNS = ("id", "error_kind")  # what tells a done row from one to ask again


@dataclass(frozen=True)
class Parts:
    """A folder of parts, as any node opens it (RunDir.uri_of: a local path or a URI)."""

    uri: str

    def __call__(self, block: pa.Table) -> pa.Table:
        """A Ray Data batch mapper (pyarrow, whole blocks): write the block's final rows, pass the
        block on unchanged. Internal columns (`_`-prefixed: API accounting, retry flags) stay out."""
        final = (
            block.filter(pc.invert(pc.fill_null(block[NOT_FINAL], True))) if NOT_FINAL in block.column_names else block
        )
        if final.num_rows:
            keep = [name for name in final.column_names if not name.startswith("_")]
            RunDir(self.uri).write_table(part_name(final.column("id")), final.select(keep), point="part-write")
        return block


def part_name(ids: pa.ChunkedArray | pa.Array) -> str:
    """A block's part file, named by its ids: the same block written again replaces its part."""
    digest = hashlib.sha256("\n".join(ids.to_pylist()).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"part-{digest}{PART_SUFFIX}"


def write_parts(ds, parts: Parts | None):
    """A Ray Dataset with each block written to `parts` as it finishes; as it was without."""
    if parts is None:
        return ds
    return ds.map_batches(parts, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)


def part_files(run: RunDir, rel: str) -> list[str]:
    """The whole parts of a folder (temp files of a killed writer left out), sorted; [] when absent."""
    infos = run.fs.get_file_info(pafs.FileSelector(run.path(rel), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(PART_SUFFIX))


def _done_columns(run: RunDir, files: list[str]) -> list[pa.Table]:
    """Each part's `id` and `error_kind` (null where a part has none), read alone."""
    tables = []
    for path in files:
        with run.fs.open_input_file(path) as source:
            part = pq.ParquetFile(source)
            table = part.read(columns=[c for c in DONE_COLUMNS if c in part.schema_arrow.names])
        if "error_kind" not in table.column_names:
            table = table.append_column("error_kind", pa.nulls(table.num_rows, pa.string()))
        tables.append(table.select(list(DONE_COLUMNS)).cast(pa.schema([(c, pa.string()) for c in DONE_COLUMNS])))
    return tables


def part_ids(run: RunDir, rel: str) -> tuple[pa.Array, pa.Array]:
    """-> (the ids a folder of parts has answered, the ids it holds only a transient failure for):
    a resumed call asks the second again, never the first. Only `id` and `error_kind` are read."""
    tables = _done_columns(run, part_files(run, rel))
    if not tables:
        empty = pa.array([], pa.string())
        return empty, empty
    rows = pa.concat_tables(tables).combine_chunks()
    failed = transient_mask(rows)
    done = pc.unique(rows.column("id").filter(pc.invert(failed)))
    again = pc.unique(rows.column("id").filter(failed))
    return done, again.filter(pc.invert(pc.is_in(again, value_set=done)))


def written_ids(run: RunDir, rel: str) -> pa.Array:
    """The ids already answered in a folder of parts (a transient failure is not an answer)."""
    return part_ids(run, rel)[0]


def winners(run: RunDir, files: list[str]) -> list[pa.Array | None]:
    """Per part file, a mask of its rows that are their id's answer (the first complete row, else
    the first row), or None where every row is: no id has two rows (the usual case)."""
    tables = _done_columns(run, files)
    sizes = [t.num_rows for t in tables]
    if not tables or sum(sizes) == pc.count_distinct(pa.chunked_array([t.column("id") for t in tables])).as_py():
        return [None] * len(files)
    rows = pa.concat_tables(tables)
    n = rows.num_rows
    # Complete rows first, then in file order: the least rank of an id is its answer's row.
    rank = transient_mask(rows).to_numpy(zero_copy_only=False).astype(np.int64) * n + np.arange(n)
    ranked = pa.table({"id": rows.column("id"), "rank": rank})
    first = ranked.group_by("id", use_threads=False).aggregate([("rank", "min")])["rank_min"].to_numpy()
    keep = np.zeros(n, dtype=bool)
    keep[first % n] = True
    starts = np.cumsum([0, *sizes])
    return [pa.array(keep[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def read_answers(run: RunDir, rel: str, columns) -> pa.Table | None:
    """A folder's parts read on the driver straight from storage, only `columns` (those a part
    has), one row per id; None when nothing is written yet. Not through Ray Data and the object
    store: the object-store pages a driver reads stay in its resident memory for as long as it lives."""
    tables = list(iter_answers(run, rel, columns, rows=0))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def iter_answers(run: RunDir, rel: str, columns, rows: int = 65536) -> Iterator[pa.Table]:
    """A folder's parts as read_answers reads them, a table of at least `rows` rows at a time (the
    last one fewer), for a caller that goes through the answers once: never all on the driver.
    Each id comes once (`winners`), in whichever table holds its answer."""
    files = part_files(run, rel)
    tables, held = [], 0
    for path, keep in zip(files, winners(run, files)):
        with run.fs.open_input_file(path) as source:
            part = pq.ParquetFile(source)
            table = part.read(columns=[c for c in columns if c in part.schema_arrow.names])
        tables.append(table if keep is None else table.filter(keep))
        held += tables[-1].num_rows
        if held >= rows:
            yield pa.concat_tables(tables, promote_options="permissive")
            tables, held = [], 0
    if tables:
        yield pa.concat_tables(tables, promote_options="permissive")
