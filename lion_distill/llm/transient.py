"""Which failed requests are worth asking again: a failure that passes (the API was down, rate
limited or slow, an engine was lost, the budget ran out) is not an answer.

    transient_mask(responses)      # over a table with `error_kind`: the rows to ask again
    stop_if_transient(where, t)    # raise TransientFailures naming what failed and how often

The parts of a call (lion_distill.llm.parts) never count such a row as done, so a resumed stage
asks exactly those rows again; a stage that ends with some stops instead of completing with them
(lion_distill.errors.TransientFailures: the run directory stays resumable, and the same command
goes on once the cause has passed: the endpoint answers again, or `budget_usd` is raised). Only
failures that would fail the same way again (a context overflow, a refused or bad request, an
unreadable answer) stay final.

Which kinds pass is `lion_distill.errors.TRANSIENT`; this module reads it over a column of kinds
(a response's `error_kind`, a judgment's `failure_kind`) and nothing else: never a message.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.errors import TRANSIENT, TransientFailures

_TRANSIENT = pa.array(sorted(TRANSIENT), pa.string())


def transient_mask(table: pa.Table, column: str = "error_kind") -> pa.ChunkedArray | pa.Array:
    """Rows whose failure passes (lion_distill.errors.is_transient) over a table's column of kinds:
    a response's `error_kind`, a judgment's `failure_kind`. A table without it: all False."""
    if column not in table.column_names:
        return pa.repeat(pa.scalar(False), table.num_rows)
    return pc.fill_null(pc.is_in(table.column(column).cast(pa.string()), value_set=_TRANSIENT), False)


def transient_counts(table: pa.Table, column: str = "error_kind") -> Counter:
    """How many rows failed transiently, by kind."""
    return Counter(table.column(column).filter(transient_mask(table, column)).cast(pa.string()).to_pylist())


def stop_if_transient(where: str, table: pa.Table, column: str = "error_kind", what: str = "requests") -> None:
    """Raise TransientFailures when any of `table`'s rows (`what` they are: requests, pairs) failed transiently."""
    kinds = transient_counts(table, column) if table.num_rows else Counter()
    if kinds:
        raise TransientFailures(where, table.num_rows, kinds, what)
