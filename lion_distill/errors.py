"""What goes wrong, as values: the kind of a request that failed, and the exceptions that travel
from the layer that raises them to another that catches or reports them.

`ErrorKind` is set once, where a backend meets its engine or API (lion_distill/llm: the openai
client, the Serve and vLLM backends, hf, the rate-limit gate's budget stop), into a response row's
`error_kind`; a judgment's `failure_kind` is one too. Everything after that edge (retries, counts,
reports) compares kinds, never a message's text (docs/design.md, "Data contracts"). This module
imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    CONTEXT_OVERFLOW = "context_overflow"  # the prompt (and its answer) does not fit the model's context
    RATE_LIMIT = "rate_limit"  # HTTP 429, after the client's own retries
    TIMEOUT = "timeout"  # no answer within the deadline
    CONNECTION = "connection"  # the connection was refused, reset or closed midway
    SERVER_ERROR = "server_error"  # HTTP 5xx, or an engine's error that is not the request's fault
    ENGINE_LOST = "engine_lost"  # the engine died with the request in it (Serve restarts it)
    BUDGET = "budget"  # not sent: the role's budget_usd would be exceeded
    REFUSED = "refused"  # the endpoint will not serve it: HTTP 401/403/404, a content filter
    BAD_REQUEST = "bad_request"  # the request is wrong (HTTP 400/422 other than a context overflow)
    UNPARSEABLE = "unparseable"  # an answer came that cannot be read: a malformed response, a review without scores


# Asked again when a run resumes: another attempt can answer them (a larger budget, for BUDGET).
# The others would fail the same way again.
TRANSIENT = frozenset(
    {
        ErrorKind.RATE_LIMIT,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.ENGINE_LOST,
        ErrorKind.BUDGET,
    }
)


def is_transient(kind: str | None) -> bool:
    """A failure worth asking again on resume; None (no failure) is not one."""
    return kind is not None and ErrorKind(kind) in TRANSIENT


def count_by_kind(failures) -> tuple[dict[str, int], dict[str, str]]:
    """(kind, message) pairs -> (rows of each kind, the first message of each kind): what a
    summary keeps of its failures, and a report shows."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for kind, message in failures:
        counts[kind] = counts.get(kind, 0) + 1
        examples.setdefault(kind, message)
    return counts, examples


# --- bad input: one line naming the file, field or resource (preflight reports them before a run)


class ConfigError(ValueError):
    """A config that cannot be used; the message says where and why."""


class PoolFileError(ValueError):
    """A file that cannot be read at all (missing, unknown format, broken JSON list)."""


class EvalDataError(ValueError):
    """Questions or reference answers that cannot be used; the message names the file and row."""


class CandidateError(ValueError):
    """An evaluation candidate that cannot be served (a Lion run directory without a student)."""


class TaskDataError(ValueError):
    """A task file that is missing or cannot be read; the message names the file and what to do."""


class PromptError(ValueError):
    """A prompt file that is missing or has no single `{input}` slot; the message names the file."""


# --- a run that cannot go on: the stage stops with the cause, and the run stays resumable


class RunDirBusy(RuntimeError):
    """Another job is running on this run directory."""


class RunDirFormatError(RuntimeError):
    """A run directory of another format than this version reads (lion_distill.data.rundir.FORMAT)."""


class StateFileError(RuntimeError):
    """A run directory's state.json that cannot be used (not JSON, not a state, another run's); the
    message names the file and what to do."""


class TransientFailures(RuntimeError):
    """A stage's requests failed for a reason that passes (TRANSIENT): the stage stops, keeping every
    answer it got; the same command asks exactly these again. `kinds`: how many failed, by kind."""

    def __init__(self, where: str, asked: int, kinds: dict[str, int], what: str = "requests"):
        self.where, self.asked, self.kinds = where, asked, dict(kinds)
        n = sum(kinds.values())
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        then = (
            "raise its budget_usd, then run the same command again"
            if set(kinds) == {ErrorKind.BUDGET.value}
            else "run the same command again once the endpoint answers"
        )
        super().__init__(
            f"{where}: {n} of {asked} {what} failed for a reason that passes ({by_kind}); every answer "
            f"is kept and nothing else is asked again: {then}"
        )


class TooFewRows(ValueError):
    """Fewer training rows than workers (after tokenisation left out those that teach nothing):
    nothing can be trained, which a caller may accept (Lion keeps the previous student)."""


class NothingToImitate(ValueError):
    """Too few of an imitation's answers are trainable: the run would train on (nearly) nothing."""


class TooFewJudged(RuntimeError):
    """An evaluation judged too few of its questions to report a score."""


class TeacherFailed(RuntimeError):
    """No request to the step-by-step teacher got a reply: there is nothing to distil (one line)."""


class GenerationFailed(RuntimeError):
    """Student generations that failed: a failure is not a wrong answer, so nothing is scored."""


class ScoringFailed(RuntimeError):
    """Some answers of a teacher scoring pass got no top-k signal (lion_distill.llm.scoring): the first
    reason and how many; the rows scored are kept, so the run resumes after the cause is fixed."""


class StageError(RuntimeError):
    """A stage failed; the run directory stays resumable at that stage."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"stage {stage} failed: {type(cause).__name__}: {cause}")
        self.stage, self.cause = stage, cause
