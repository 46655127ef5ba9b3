"""Arrow tables keyed by `id`: the stages' joins on the driver, column by column, so a pool of
millions stays its columns instead of becoming millions of Python rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def in_order(table: pa.Table, ids) -> pa.Table:
    """`table` (one or more rows per id) as one row per id of `ids`, in that order (an id's
    first row where it has several); a KeyError names the ids with none. The table itself,
    uncopied, where its ids already are `ids` (answers to a pool an earlier stage asked in order)."""
    if table.num_rows == len(ids) and pc.all(pc.fill_null(pc.equal(table.column("id"), ids), False)).as_py():
        return table
    at = pc.index_in(ids, value_set=table.column("id").combine_chunks())
    if at.null_count:
        raise no_response(ids, pc.is_null(at))
    return table.take(at)


def no_response(ids, lost) -> KeyError:
    """The error for the rows (`lost`: a mask over `ids`) that have no response: how many, and a few ids."""
    lost = pc.filter(ids, lost)
    return KeyError(f"{len(lost)} rows have no response, e.g. {lost.slice(0, 3).to_pylist()}")


def kept(table: pa.Table, mask) -> pa.Table:
    """`table`'s rows where `mask` holds; the table itself, uncopied, where it holds for every row
    (a filter copies every column)."""
    return table if pc.all(mask).as_py() is not False else table.filter(mask)


def first_per_id(table: pa.Table) -> pa.Table:
    """Each id's first row, in the table's order (the table itself, uncopied, where no id repeats)."""
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return table
    rows = table.append_column("__row", pa.array(np.arange(table.num_rows), pa.int64()))
    first = rows.group_by("id", use_threads=False).aggregate([("__row", "min")])["__row_min"]
    return table.take(np.sort(first.to_numpy()))


def replaced_by_id(table: pa.Table, better: pa.Table) -> pa.Table:
    """`table` with each row that `better` has a row for (by id) replaced by it; order kept."""
    if not better.num_rows:
        return table
    better = better.select(table.column_names).cast(table.schema)
    at = pc.index_in(table.column("id").combine_chunks(), value_set=better.column("id").combine_chunks()).cast(
        pa.int64()
    )
    rows = pc.if_else(pc.is_valid(at), pc.add(at, table.num_rows), pa.array(np.arange(table.num_rows), pa.int64()))
    return pa.concat_tables([table, better]).take(rows)
