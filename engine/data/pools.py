"""Instruction pools as parquet with an explicit schema; a Ray Dataset's rows as one table."""
from __future__ import annotations

import pyarrow as pa

from engine.data.rundir import RunDir
from engine.data.schema import OPTIONAL_POOL_COLUMNS, POOL_SCHEMA


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
