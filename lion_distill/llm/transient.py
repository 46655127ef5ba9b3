"""Which failed requests are worth asking again: a failure that passes (the API was down, rate
limited or slow, an engine was lost, the budget ran out) is not an answer.

    transient_mask(responses)      # over a table with `finish_reason`: the rows to ask again
    is_transient(response)         # the same for one row (a dict)
    stop_if_transient(where, t)    # raise TransientFailures naming what failed and how often

The parts of a call (lion_distill.llm.parts) never count such a row as done, so a resumed stage
asks exactly those rows again; a stage that ends with some stops instead of completing with them
(TransientFailures: the run directory stays resumable, and the same command goes on once the
cause has passed: the endpoint answers again, or `budget_usd` is raised). Only failures that
would fail the same way again (a context overflow, a refused or malformed request) stay final.

This module is the one place that tells them apart. Today a failure is its `finish_reason`
"failed: <reason>"; once rows carry a typed `error_kind` (docs/design.md, "Data contracts"),
`_transient` reads that column instead and nothing else changes.
"""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

# The reasons lion_distill.llm's backends write for a failure that passes (openai_client.failure_reason,
# the budget stop, the Serve and vLLM backends' engine errors), as their ErrorKind would name them.
TRANSIENT_REASONS = {
    "timeout": r"timeout|TimeoutError",
    "connection": r"connection error",
    "rate_limit": r"HTTP 429",
    "server_error": r"HTTP (?:408|409|5\d\d)|malformed response|engine error (?:None|5\d\d)",
    "engine_lost": r"EngineDeadError|engine lost",
    "budget": r"budget",
}
_PATTERN = re.compile(r"^failed: (?:" + "|".join(f"(?P<{kind}>{p})" for kind, p in TRANSIENT_REASONS.items()) + ")")


def transient_kind(finish_reason: str | None) -> str | None:
    """The kind of a transient failure (`timeout`, `connection`, `rate_limit`, `server_error`,
    `budget`), or None for an answer or a failure that would happen again."""
    match = _PATTERN.match(finish_reason or "")
    return None if match is None else match.lastgroup


def is_transient(response: dict) -> bool:
    return transient_kind(response.get("finish_reason")) is not None


def transient_mask(responses: pa.Table, column: str = "finish_reason") -> pa.ChunkedArray | pa.Array:
    """is_transient over a table's rows (a table without responses: all False). `column`: where
    a table other than responses holds its rows' failures (a judgment's `status`)."""
    if column not in responses.column_names:
        return pa.repeat(pa.scalar(False), responses.num_rows)
    return pc.fill_null(pc.match_substring_regex(responses.column(column), _PATTERN.pattern), False)


def transient_counts(responses: pa.Table, column: str = "finish_reason") -> Counter:
    """How many rows failed transiently, by kind."""
    reasons = responses.column(column).filter(transient_mask(responses, column)).to_pylist()
    return Counter(transient_kind(r) for r in reasons)


class TransientFailures(RuntimeError):
    """A stage's requests failed for a reason that passes: the stage stops, keeping every answer it
    got; the same command asks exactly these again. `kinds`: how many failed, by kind."""

    def __init__(self, where: str, asked: int, kinds: Counter, what: str = "requests"):
        self.where, self.asked, self.kinds = where, asked, dict(kinds)
        n = sum(kinds.values())
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        then = (
            "raise its budget_usd, then run the same command again"
            if set(kinds) == {"budget"}
            else "run the same command again once the endpoint answers"
        )
        super().__init__(
            f"{where}: {n} of {asked} {what} failed for a reason that passes ({by_kind}); every answer "
            f"is kept and nothing else is asked again: {then}"
        )


def stop_if_transient(where: str, responses: pa.Table, column: str = "finish_reason", what: str = "requests") -> None:
    """Raise TransientFailures when any of `responses` (`what` they are: requests, pairs) failed transiently."""
    kinds = transient_counts(responses, column) if responses.num_rows else Counter()
    if kinds:
        raise TransientFailures(where, responses.num_rows, kinds, what)
