"""Instruction pools as parquet with an explicit schema; rows between the driver and Ray Data:
as files the workers read (RowFiles), a Ray Dataset's rows as one table (dataset_to_table)."""

from __future__ import annotations

import pyarrow as pa

from lion_distill.data.rundir import RunDir
from lion_distill.data.schema import OPTIONAL_POOL_COLUMNS, POOL_SCHEMA


class PoolSchemaError(ValueError):
    pass


def conform(table: pa.Table, source: str = "pool") -> pa.Table:
    """Columns in contract order and types; a missing or mistyped column is an error naming it
    (the conversation columns are optional: null when absent)."""
    for name in OPTIONAL_POOL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(POOL_SCHEMA.field(name), pa.nulls(table.num_rows, POOL_SCHEMA.field(name).type))
    missing = [f.name for f in POOL_SCHEMA if f.name not in table.column_names]
    if missing:
        raise PoolSchemaError(f"{source}: missing pool column(s) {missing}; have {table.column_names}")
    try:
        return table.select(POOL_SCHEMA.names).cast(POOL_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
        raise PoolSchemaError(f"{source}: pool columns do not match the schema: {e}") from None


def write_pool(run_dir: RunDir, rel: str, table: pa.Table) -> None:
    run_dir.write_table(rel, conform(table, f"{run_dir.path(rel)}"))


def read_pool(run_dir: RunDir, rel: str) -> pa.Table:
    return conform(run_dir.read_table(rel), run_dir.path(rel))


def dataset_to_table(ds) -> pa.Table | None:
    """A Ray Dataset's rows as one table on the driver (dataset order); None when empty."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


class RowFiles:
    """Rows for the workers to read (a call's requests, a training run's rows), written as parquet
    files to a folder of the run directory (which every node reads), one per table added: not
    put in the object store by the driver, whose resident memory keeps every object-store page
    it wrote for as long as it lives. `remove` when done; a new one at the same folder starts
    empty (a killed attempt's files are replaced)."""

    def __init__(self, run: RunDir, rel: str):
        self.run, self.rel, self.files = run, rel, []
        self.remove()

    def add(self, table: pa.Table) -> None:
        name = f"{self.rel}/rows-{len(self.files):05d}.parquet"
        self.run.write_table(name, table)
        self.files.append(self.run.path(name))

    def dataset(self):
        """The rows as a Ray Dataset, a block per file in the order added."""
        import ray.data

        return ray.data.read_parquet(self.files, filesystem=self.run.fs)

    def remove(self) -> None:
        if self.run.exists(self.rel):
            self.run.fs.delete_dir(self.run.path(self.rel))
