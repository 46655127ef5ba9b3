"""A call's answers written block by block as they finish, so a call killed midway resumes
with the blocks already written instead of asking every row again.

    generate(role, rows, to_prompt, ..., parts=Parts(run.uri_of("iter_0/discrimination/parts/x")))

Each block a backend finishes is written, inside the Ray Data pipeline and before the next
one is waited for, as one parquet file `<folder>/part-<uuid>.parquet` through RunDir (a
temp file renamed into place: a killed writer leaves no half part, on object stores too).
A row whose request the backend will send again (a Serve engine lost it) is not final and
is not written. `written_ids` reads the `id` column of the parts alone; a resumed call asks
only the rows whose id is not among them. Every backend writes parts: for vLLM and
transformers they are the only record of a finished block; an API role's response cache
also keeps single answers of unfinished blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lion_distill.data.rundir import RunDir

PART_SUFFIX = ".parquet"
NOT_FINAL = "_serve_retry"  # lion_distill.llm.serve_backend.RETRY: a row the backend asks again


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
            RunDir(self.uri).write_table(f"part-{uuid.uuid4().hex}{PART_SUFFIX}", final.select(keep))
        return block


def write_parts(ds, parts: Parts | None):
    """A Ray Dataset with each block written to `parts` as it finishes; as it was without."""
    if parts is None:
        return ds
    return ds.map_batches(parts, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)


def part_files(run: RunDir, rel: str) -> list[str]:
    """The whole parts of a folder (temp files of a killed writer left out), sorted; [] when absent."""
    infos = run.fs.get_file_info(pafs.FileSelector(run.path(rel), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(PART_SUFFIX))


def written_ids(run: RunDir, rel: str) -> pa.Array:
    """The ids already answered in a folder of parts: only the `id` column is read."""
    files = part_files(run, rel)
    if not files:
        return pa.array([], pa.string())
    ids = [pq.read_table(f, columns=["id"], filesystem=run.fs).column("id") for f in files]
    return pa.chunked_array([c for column in ids for c in column.chunks], pa.string()).combine_chunks()


def read_answers(run: RunDir, rel: str, columns) -> pa.Table | None:
    """A folder's parts read on the driver straight from storage, only `columns` (those a part
    has); None when nothing is written yet. Not through Ray Data and the object store: the
    object-store pages a driver reads stay in its resident memory for as long as it lives."""
    tables = list(iter_answers(run, rel, columns, rows=0))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def iter_answers(run: RunDir, rel: str, columns, rows: int = 65536) -> Iterator[pa.Table]:
    """A folder's parts as read_answers reads them, a table of at least `rows` rows at a time (the
    last one fewer), for a caller that goes through the answers once: never all on the driver."""
    tables, held = [], 0
    for path in part_files(run, rel):
        with run.fs.open_input_file(path) as source:
            part = pq.ParquetFile(source)
            tables.append(part.read(columns=[c for c in columns if c in part.schema_arrow.names]))
        held += tables[-1].num_rows
        if held >= rows:
            yield pa.concat_tables(tables, promote_options="permissive")
            tables, held = [], 0
    if tables:
        yield pa.concat_tables(tables, promote_options="permissive")
