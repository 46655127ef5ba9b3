"""Instruction pools: schema and stable ids, readers with counted rejects, parquet."""

from lion_distill.data.pools import PoolSchemaError, conform, read_pool, write_pool
from lion_distill.data.readers import REJECT_REASONS, LoadReport, load_pool
from lion_distill.data.rundir import RunDir
from lion_distill.data.schema import POOL_SCHEMA, RESPONSE_SCHEMA, instruction_id, pool_table
from lion_distill.errors import PoolFileError

__all__ = [
    "POOL_SCHEMA",
    "RESPONSE_SCHEMA",
    "REJECT_REASONS",
    "LoadReport",
    "PoolFileError",
    "PoolSchemaError",
    "RunDir",
    "conform",
    "instruction_id",
    "load_pool",
    "pool_table",
    "read_pool",
    "write_pool",
]
