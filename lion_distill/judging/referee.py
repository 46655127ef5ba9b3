"""The referee: asks, parses and aggregates pairwise reviews of teacher vs student answers.

Each cache-pool instruction is reviewed twice, teacher's answer first and then
student's first, and the two orders are averaged to cancel the referee's position
bias. `gap = teacher_score - student_score`; the instruction is hard when gap >= tau.

A review that cannot be read is never turned into a number (the original code scored
it -1, which leaked into averages): it gets the status `failed`, the `failure_kind`
`unparseable` and null scores, the caller retries those ids (`unparseable_ids`,
`merge_retried`), and `summarize` counts failures by kind and averages only the rows
that were judged. A pair fails with the kind of whatever failed: an answer's request
(its `error_kind`), the review's request, or an unreadable review or empty answer
(`unparseable`); `failure` says which, with its message.

A student that answers nothing (an empty or failed answer, against a teacher answer)
has lost the comparison: the referee is shown the empty answer as it is and scores
the teacher, and the student gets the lowest score, 1, in both orders. The pair is
judged (hard when the teacher's score is at least 1 + tau), not excluded. The
evaluation judges reference vs candidate with the same rules (`roles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data.tables import replaced_by_id
from lion_distill.errors import ErrorKind
from lion_distill.judging.reviews import logprob_scores
from lion_distill.judging.rubrics import RUBRICS, Rubric
from lion_distill.llm.prompts import instruction_text
from lion_distill.llm.responses import LENGTH, is_error

OK, FAILED = "ok", "failed"  # a judgment's status
LOWEST_SCORE = 1.0


@dataclass(frozen=True)
class Failure:
    """Why a pair has no judgment: a kind (the judgment's `failure_kind`) and what failed (`failure`)."""

    kind: ErrorKind
    message: str

    def columns(self) -> dict:
        return {"status": FAILED, "failure_kind": self.kind.value, "failure": self.message}


UNPARSEABLE = Failure(ErrorKind.UNPARSEABLE, "review: no scores in the rubric's layout")
# Cut at max_tokens where its scores are (the last lines, or a first line not ended): "10" cut to "1"
# would read as a score, so it is not read, and is asked again as an unparseable review is.
REVIEW_CUT = Failure(ErrorKind.UNPARSEABLE, "review: cut at max_tokens before its scores")
UNREADABLE = (UNPARSEABLE, REVIEW_CUT)


def judgment_schema(first: str = "teacher", second: str = "student") -> pa.Schema:
    """Judgment rows of `first` (the reference side: gap = first - second) vs `second`.
    Lion judges teacher vs student; evaluation judges reference vs candidate."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field(f"review_{first}_first", pa.string()),
            pa.field(f"review_{second}_first", pa.string()),
            pa.field(f"{first}_score_1", pa.float64()),  # {first}-first order
            pa.field(f"{second}_score_1", pa.float64()),
            pa.field(f"{first}_score_2", pa.float64()),  # {second}-first order
            pa.field(f"{second}_score_2", pa.float64()),
            pa.field(f"{first}_score", pa.float64()),  # mean of the two orders
            pa.field(f"{second}_score", pa.float64()),
            pa.field("gap", pa.float64()),
            pa.field("hard", pa.bool_()),  # gap >= tau; null when failed
            pa.field("status", pa.string(), nullable=False),  # ok | failed
            pa.field("failure_kind", pa.string()),  # a lion_distill.errors.ErrorKind value; null when ok
            pa.field("failure", pa.string()),  # what failed and its message; null when ok
            pa.field("truncated", pa.bool_()),  # {second}'s answer was cut to fit the referee's context
        ]
    )


ROLES = ("teacher", "student")
JUDGMENT_SCHEMA = judgment_schema(*ROLES)
# What a pair holds of each side's answer, as `<role>_<column>`: judgment_rows reads them.
ANSWER_COLUMNS = ("text", "finish_reason", "error_kind", "error")


def referee_messages(row: dict, first: str, second: str, rubric: Rubric = RUBRICS["lion"]) -> list[dict]:
    """Chat messages asking to review `first` (Assistant 1) and `second` (Assistant 2) under `rubric`."""
    return rubric.messages(instruction_text(row["instruction"], row.get("input") or ""), first, second)


# ---------------------------------------------------------------- judgments


def _review_scores(review: dict, rubric: Rubric, use_logprobs: bool) -> tuple[float, float] | Failure:
    """(Assistant 1, Assistant 2) scores of one review, or why there are none."""
    if is_error(review.get("finish_reason")):
        return Failure(ErrorKind(review["error_kind"]), f"review: {review.get('error')}")
    if review.get("finish_reason") == LENGTH and not (
        rubric.scores_first and "\n" in (review.get("text") or "").strip()
    ):
        return REVIEW_CUT
    scores = rubric.parse(review.get("text"))
    if scores is None:
        return UNPARSEABLE
    # The text decides whether there is a judgment at all; logprobs only refine it.
    if use_logprobs and review.get("logprobs"):
        scores = logprob_scores(review["logprobs"], review["text"], rubric.scores_at) or scores
    return scores


def _request_failure(pair: dict, role: str) -> Failure | None:
    """The role's request failed: its kind, as its backend set it."""
    if not is_error(pair.get(f"{role}_finish_reason")):
        return None
    return Failure(ErrorKind(pair[f"{role}_error_kind"]), f"{role} answer: {pair.get(f'{role}_error')}")


def _answer_failure(pair: dict, reference: str) -> Failure | None:
    """Why a pair cannot be judged: only the reference side's (the teacher's) answer can make it so."""
    failure = _request_failure(pair, reference)
    if failure is None and not (pair.get(f"{reference}_text") or "").strip():
        return Failure(ErrorKind.UNPARSEABLE, f"{reference} answer: empty")
    return failure


def unjudgeable(pair: dict, roles: tuple[str, str], failed_answer_loses: bool) -> Failure | None:
    """Why no review can judge a pair, before the referee is asked."""
    a, b = roles
    failure = _answer_failure(pair, a)
    if failure is None and not failed_answer_loses:
        failure = _request_failure(pair, b)
    return failure


def answered(pair: dict, role: str = "student") -> bool:
    return not is_error(pair.get(f"{role}_finish_reason")) and bool((pair.get(f"{role}_text") or "").strip())


def judgment_rows(
    pairs: list[dict],
    reviews_first: list[dict],
    reviews_second: list[dict],
    tau: float,
    use_logprobs: bool = True,
    roles: tuple[str, str] = ROLES,
    rubrics: Rubric | Sequence[Rubric] = RUBRICS["general"],
    failed_answer_loses: bool = False,
) -> list[dict]:
    """One judgment row per pair; the three lists are aligned by position.

    With roles (a, b) = ("teacher", "student"): a pair has `id`, `instruction`, `input`,
    `teacher_text`, `student_text` and optionally `teacher_finish_reason` /
    `student_finish_reason` (with `<role>_error_kind` and `<role>_error` where it is "error").
    A review has `text`, `finish_reason` (`error_kind` and `error` where it is "error") and
    optionally `logprobs` (and `id`, checked against the pair's). In `reviews_first` Assistant 1 is
    a (the teacher), in `reviews_second` Assistant 1 is b (the student). Failed rows
    (a's answer failed or is empty, a review failed or is unparseable) keep their raw
    reviews and get null scores and hard=None. An empty answer of b has lost: it scores
    LOWEST_SCORE in both orders (a's scores still come from the reviews), and where a
    review of it cannot be read the pair is still hard (a's scores and the gap null).
    A failed request of b (an engine error, a context overflow: the infrastructure's,
    not b's answer) is excluded and counted, unless `failed_answer_loses` (the
    evaluation: a candidate that cannot answer has lost). Columns:
    `judgment_schema(*roles)`; evaluation passes ("reference", "candidate").
    `rubrics`: the rubric each pair was asked under (one for all, or one per pair),
    whose parser reads its reviews.
    """
    if not len(pairs) == len(reviews_first) == len(reviews_second):
        raise ValueError(
            f"judgment_rows needs one review per pair and order: {len(pairs)} pairs, "
            f"{len(reviews_first)} {roles[0]}-first and {len(reviews_second)} {roles[1]}-first reviews"
        )
    if isinstance(rubrics, Rubric):
        rubrics = [rubrics] * len(pairs)
    judge = partial(
        _judgment,
        names=judgment_schema(*roles).names,  # once: a schema costs more than a pair's judgment
        tau=tau,
        use_logprobs=use_logprobs,
        roles=roles,
        failed_answer_loses=failed_answer_loses,
    )
    return [judge(*four) for four in zip(pairs, reviews_first, reviews_second, rubrics, strict=True)]


def _judgment(
    pair: dict, af: dict, bf: dict, rubric: Rubric, *, names, tau, use_logprobs, roles, failed_answer_loses
) -> dict:
    """judgment_rows' row of one pair, from its a-first and b-first reviews."""
    a, b = roles
    for review in (af, bf):
        if review.get("id") not in (None, pair["id"]):
            raise ValueError(f"review for id {review['id']!r} is aligned with pair {pair['id']!r}")
    row = dict.fromkeys(names)
    row.update({"id": pair["id"], f"review_{a}_first": af.get("text"), f"review_{b}_first": bf.get("text")})
    row["truncated"] = False
    failure = unjudgeable(pair, roles, failed_answer_loses)
    lost = not answered(pair, b)
    first = second = None
    if failure is None:
        first, second = _review_scores(af, rubric, use_logprobs), _review_scores(bf, rubric, use_logprobs)
        failure = next((s for s in (first, second) if isinstance(s, Failure)), None)
    if failure in UNREADABLE and lost and not failed_answer_loses:
        lowest = {f"{b}_score_1": LOWEST_SCORE, f"{b}_score_2": LOWEST_SCORE, f"{b}_score": LOWEST_SCORE}
        return {**row, **lowest, "hard": True, "status": OK}
    if failure is not None:
        return {**row, **failure.columns()}
    (a1, b1), (b2, a2) = first, second  # positions swap in the b-first order
    if lost:
        b1 = b2 = LOWEST_SCORE
    mean_a, mean_b = (a1 + a2) / 2, (b1 + b2) / 2
    scores = {f"{a}_score_1": a1, f"{b}_score_1": b1, f"{a}_score_2": a2, f"{b}_score_2": b2}
    return {
        **row,
        **scores,
        f"{a}_score": mean_a,
        f"{b}_score": mean_b,
        "gap": mean_a - mean_b,
        "hard": mean_a - mean_b >= tau,
        "status": OK,
    }


def judgment_table(rows: list[dict], roles: tuple[str, str] = ROLES) -> pa.Table:
    """judgment_rows' rows as a table in `judgment_schema(*roles)`."""
    return pa.Table.from_pylist(rows, schema=judgment_schema(*roles))


def unparseable_ids(judgments: pa.Table) -> pa.Array:
    """Ids of the pairs that failed unparseable: among them those whose review could not be read,
    worth asking the referee again (with another seed); an empty answer is one too, but never sent."""
    kinds = judgments.column("failure_kind")
    return (
        judgments.column("id")
        .filter(pc.fill_null(pc.equal(kinds, ErrorKind.UNPARSEABLE.value), False))
        .combine_chunks()
    )


def merge_retried(judgments: pa.Table, retried: pa.Table) -> pa.Table:
    """`judgments` with each row replaced by its retry when the retry succeeded; order kept."""
    return replaced_by_id(judgments, retried.filter(pc.equal(retried.column("status"), OK)))


def summarize(judgments: pa.Table) -> dict:
    """The discrimination stage's numbers; averages over judged rows only."""
    status = judgments.column("status")
    ok = judgments.filter(pc.equal(status, OK))
    hard = pc.sum(pc.fill_null(ok.column("hard"), False).cast(pa.int64())).as_py() or 0
    failures = judgments.column("failure_kind").filter(pc.not_equal(status, OK))

    def mean(key: str) -> float | None:
        return pc.mean(ok.column(key)).as_py()  # nulls skipped: an unread review of an empty answer has no gap

    return {
        "rows": judgments.num_rows,
        "judged": ok.num_rows,
        "failed": judgments.num_rows - ok.num_rows,
        "failed_by_kind": {e["values"]: e["counts"] for e in pc.value_counts(failures).to_pylist()},
        "truncated": pc.sum(pc.fill_null(ok.column("truncated"), False).cast(pa.int64())).as_py() or 0,
        "hard": hard,
        "easy": ok.num_rows - hard,
        "hard_fraction": hard / ok.num_rows if ok.num_rows else None,
        "mean_gap": mean("gap"),
        "mean_teacher_score": mean("teacher_score"),
        "mean_student_score": mean("student_score"),
    }
