"""Instruction pools: schema and stable ids, readers with counted rejects, parquet."""
from engine.data.pools import PoolSchemaError, conform, read_pool, write_pool
from engine.data.readers import REJECT_REASONS, LoadReport, load_pool
from engine.data.records import PoolFileError
from engine.data.rundir import RunDir
from engine.data.schema import POOL_SCHEMA, RESPONSE_SCHEMA, instruction_id, pool_table

__all__ = [
    "POOL_SCHEMA", "RESPONSE_SCHEMA", "REJECT_REASONS", "LoadReport", "PoolFileError", "PoolSchemaError",
    "RunDir", "conform", "instruction_id", "load_pool", "pool_table",
    "read_pool", "write_pool",
]
