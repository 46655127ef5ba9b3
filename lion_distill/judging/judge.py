"""A referee over pairs of answers, as Lion's discrimination and the evaluation job ask it.

Each pair is asked under its rubric (lion_distill.judging.rubrics: Lion's referee prompt, or
FastChat's by the pair's `category`). Both orders of every pair go in one dataset, so
one pass of the referee serves them (one pass per rubric where a vLLM-served referee is
constrained to each rubric's layout, their figures summed into one record);
a review that cannot be read is asked again as a new draw (sampling on, so the retry
can differ, and not the cached unreadable review again; or as Lion's recheck, at its own
temperature until a pass reads no more), then left failed:
`lion_distill.judging.referee` never scores it.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lion_distill.config import RoleConfig
from lion_distill.data import RunDir
from lion_distill.data.tables import in_order, kept, no_response, replaced_by_id
from lion_distill.errors import ErrorKind
from lion_distill.judging.referee import (
    OK,
    ROLES,
    judgment_rows,
    judgment_schema,
    judgment_table,
    merge_retried,
    referee_messages,
    unparseable_ids,
)
from lion_distill.judging.rubrics import RUBRICS, rubric_for
from lion_distill.llm.answers import answer_stream, constraint
from lion_distill.llm.responses import error_mask
from lion_distill.metrics import StageRecord

LOGPROBS_TOP_K = 10  # enough to cover the ten score tokens the referee chooses between


@dataclass(frozen=True)
class Judging:
    """How a referee judges pairs: Lion's referee (the `lion.referee_*` settings) or the
    evaluation's judge (`eval.judge_*`)."""

    prompt: str  # the rubric setting: lion | vicuna | fastchat (lion_distill.judging.rubrics.rubric_for)
    constraint: str  # the review's structured output: auto | regex | json | none (llm.answers.constraint)
    # Times an unreadable review is asked again, each a new draw; None: while a pass reads some of
    # them, as Lion's recheck (asking_again).
    retries: int | None
    use_logprobs: bool  # scores refined by the score tokens' probabilities
    tau: float  # a pair is hard when gap >= tau
    roles: tuple[str, str] = ROLES  # (the reference side: gap = first - second, the side judged)
    role_name: str = "referee"  # what the spend log and a run-wide budget know the judging role by
    failed_answer_loses: bool = False  # a failed request of the side judged has lost, not excluded
    retry_temperature: float | None = None  # the referee's temperature when asked again (resampled)


@dataclass
class _Where:
    """Where a judging's passes go: the run directory, each pass's parts, their records."""

    run: RunDir
    parts: str | None
    records: list[StageRecord] = field(default_factory=list)


def judge_pairs(
    referee: RoleConfig,
    pairs: pa.Table,
    judging: Judging,
    *,
    run: RunDir,
    stage: str,
    draws: str,
    parts: str | None = None,
    write_to: str | None = None,
) -> tuple[pa.Table, list[StageRecord]]:
    """-> (one judgment row per pair, in `judgment_schema(*judging.roles)`, in the pairs' order;
    the StageRecords of the referee's passes).

    `pairs` has the columns `judgment_rows` reads (and `category` where the rubric setting routes
    by it); `draws` names this judging in the run ("iter_0"), so that retry N, recorded as
    `<stage>_retry<N>`, is the draw `<draws>/<stage>_retry<N>`; `parts` where each pass keeps
    its finished blocks (lion_distill.llm.answers.answer_stream).

    `write_to`: a path in `run` where the judgments are written, a chunk of pairs at a time as
    their reviews come back (not in the pairs' order: ordering them would mean holding them);
    the table returned is then in that order too and leaves out the two reviews' texts (`slim`),
    a pool's worth of text the caller need not hold.
    """
    where = _Where(run, parts)
    first_pass = write_to and f"{write_to}.first_pass"
    with run.table_writer(first_pass, judgment_schema(*judging.roles)) if first_pass else nullcontext() as writer:
        judgments = _judge(referee, pairs, judging, where, stage, None, written=writer)
    better = judgment_schema(*judging.roles).empty_table()  # the rows later passes judged: few, whole
    unread = [pairs.num_rows]
    for attempt in itertools.count(1):
        # Only reviews are asked again: a pair with an empty answer is unparseable too, and never sent.
        again = pc.and_(
            pc.is_in(pairs.column("id"), value_set=unparseable_ids(judgments)),
            pc.invert(_unjudgeable(pairs, judging.roles, judging.failed_answer_loses)),
        )
        unread.append(int(pc.sum(again.cast(pa.int64())).as_py() or 0))
        if not asking_again(unread, judging.retries):
            break
        retry = f"{stage}_retry{attempt}"
        referee_again = resampled(referee, judging.retry_temperature)
        retried = _judge(referee_again, pairs.filter(again), judging, where, retry, f"{draws}/{retry}")
        judgments, better = merge_retried(judgments, retried), _judged_again(better, retried)
    cut = _judge_cut(referee, pairs, judgments, judging, where, f"{stage}_truncated", draws)
    if cut is not None:
        judgments, better = merge_retried(judgments, cut), _judged_again(better, cut)
    if first_pass:
        _write_merged(run, first_pass, better, write_to)
        return judgments, where.records
    return in_order(judgments, pairs.column("id")), where.records


def _judge_cut(
    referee, pairs: pa.Table, judgments: pa.Table, judging: Judging, where: _Where, stage: str, draws: str
) -> pa.Table | None:
    """The pairs whose review overflowed the referee's context judged again with the side judged
    cut to the reference's length, marked `truncated`; None when no review overflowed."""
    a, b = (f"{role}_text" for role in judging.roles)
    overflowed = pairs.filter(_overflowed(judgments, pairs, a, b))
    if not overflowed.num_rows:
        return None
    cut = pa.Table.from_pylist([{**p, b: p[b][: len(p[a] or "")]} for p in overflowed.to_pylist()], schema=pairs.schema)
    cut = _judge(referee, cut, judging, where, stage, f"{draws}/{stage}")
    return cut.set_column(
        cut.schema.get_field_index("truncated"), "truncated", pa.repeat(pa.scalar(True), cut.num_rows)
    )


def _judged_again(better: pa.Table, again: pa.Table) -> pa.Table:
    """`better` with the rows judged `again` (those judged, status ok) in place of its own."""
    ok = again.filter(pc.equal(again.column("status"), OK))
    return pa.concat_tables(
        [better.filter(pc.invert(pc.is_in(better.column("id"), value_set=ok.column("id").combine_chunks()))), ok]
    )


def slim(judgments: pa.Table) -> pa.Table:
    """The judgments without the two reviews' texts."""
    return judgments.drop_columns([n for n in judgments.column_names if n.startswith("review_")])


def _write_merged(run: RunDir, first_pass: str, better: pa.Table, to: str) -> None:
    """The first pass's judgments, each row a later pass judged replaced, from the file a batch
    at a time to `to`; the first pass's file moved there where no row was replaced."""
    if not better.num_rows:
        run.move(first_pass, to)
        return
    source = pq.ParquetFile(run.path(first_pass), filesystem=run.fs)
    with run.table_writer(to, source.schema_arrow) as writer:
        for batch in source.iter_batches(batch_size=CHUNK_ROWS):
            writer.write_table(replaced_by_id(pa.Table.from_batches([batch]), better))
    run.fs.delete_file(run.path(first_pass))


def _overflowed(judgments: pa.Table, pairs: pa.Table, a: str, b: str) -> pa.ChunkedArray:
    """A mask of the pairs whose review overflowed the referee's context while b's answer is the
    longer: cut to a's length, they fit. (A failed answer of b's own has no text: never longer.)"""
    overflow = pc.fill_null(pc.equal(judgments.column("failure_kind"), ErrorKind.CONTEXT_OVERFLOW.value), False)
    ids = judgments.column("id").filter(overflow).combine_chunks()
    longer = pc.greater(
        pc.utf8_length(pc.fill_null(pairs.column(b), "")), pc.utf8_length(pc.fill_null(pairs.column(a), ""))
    )
    return pc.and_(pc.is_in(pairs.column("id"), value_set=ids), longer)


def check_constraint(referee: RoleConfig, judging: Judging) -> None:
    """Raise now, before any answer is paid for, where a constrained review cannot fit the
    referee's max_tokens (lion_distill.judging.rubrics): a stage calls this first."""
    names = ("general", "coding", "math") if judging.prompt == "fastchat" else (rubric_for(judging.prompt).name,)
    for name in names:
        rubric = RUBRICS[name]
        constraint(judging.constraint, referee, partial(rubric.regex, referee.sampling.max_tokens), rubric.schema)


def _judge(referee, pairs: pa.Table, judging: Judging, where: _Where, stage, draw, written=None) -> pa.Table:
    """The judgments of `pairs` in one pass of the referee: those no review can judge, then the
    others as both their reviews come back (not in the pairs' order). The reviews are read from
    the parts a few at a time and scored as they are matched: 2 x N reviews are never all on the
    driver. With `written` (a parquet writer) each chunk is written there whole and kept `slim`."""
    orders = [f"{role}_first" for role in judging.roles]
    rubrics = _rubric_names(pairs, judging.prompt)
    unsent = _unjudgeable(pairs, judging.roles, judging.failed_answer_loses)
    # A pair no review can judge (the teacher's answer failed, say) is not sent: nobody pays for it.
    sent = kept(pairs.append_column("rubric", rubrics), pc.invert(unsent))
    reviews = _reviews(referee, sent, judging, where, stage, draw)
    tables = []

    def keep(chunks: Iterator[pa.Table]) -> None:
        for table in chunks:
            if written is not None:
                written.write_table(table)
                table = slim(table)
            tables.append(table)

    keep(_scored(pairs, rubrics, pc.indices_nonzero(unsent), judging))
    pair_ids = pairs.column("id").combine_chunks()
    for first, second in matched_orders(reviews, orders):
        at = pc.index_in(first.column("id"), value_set=pair_ids)
        mine = pc.is_valid(at)  # the parts hold this call's reviews only, unless a stray was left there
        keep(_scored(pairs, rubrics, at.filter(mine), judging, first.filter(mine), second.filter(mine)))
    empty = judgment_schema(*judging.roles).empty_table()
    judgments = pa.concat_tables(tables) if tables else empty if written is None else slim(empty)
    if judgments.num_rows < pairs.num_rows:  # a pair sent whose two reviews did not both come back
        lost = pc.invert(pc.is_in(sent.column("id"), value_set=judgments.column("id").combine_chunks()))
        if pc.any(lost).as_py():
            raise no_response(sent.column("id"), lost)
    return judgments


def _reviews(referee, sent: pa.Table, judging: Judging, where: _Where, stage, draw) -> Iterator[pa.Table]:
    """Both orders' reviews of the pairs `sent`, streamed: one pass per group of rubrics that share
    a constraint, their figures summed into one record of the stage."""
    streams, record = [], StageRecord(stage)
    groups = _by_constraint(pc.unique(sent.column("rubric")).to_pylist(), judging.constraint, referee)
    for structured, names in groups:
        # One group (the usual case) is every pair sent: no copy of them.
        group = (
            sent
            if len(groups) == 1
            else sent.filter(pc.is_in(sent.column("rubric"), value_set=pa.array(names, pa.string())))
        )
        reviews, part = answer_stream(
            referee,
            _requests(group, judging.roles, [f"{role}_first" for role in judging.roles]),
            lambda r: referee_messages(r, r["first"], r["second"], RUBRICS[r["rubric"]]),
            stage=stage,
            role_name=judging.role_name,
            run_dir=where.run,
            structured_output=structured,
            logprobs=LOGPROBS_TOP_K if judging.use_logprobs else None,
            draw=draw,
            parts=where.parts,
            columns=REVIEW_COLUMNS,  # 2 x N reviews: not their token counts and role, which the record has
        )
        streams.append(reviews)
        record = _summed(record, part)
    where.records.append(record)
    return itertools.chain.from_iterable(streams)


def _scored(
    pairs: pa.Table,
    rubrics: pa.Array,
    at: pa.Array,
    judging: Judging,
    first: pa.Table | None = None,
    second: pa.Table | None = None,
) -> Iterator[pa.Table]:
    """The judgments of the pairs at rows `at`, from their reviews of each order (aligned with
    `at`; none where no review was asked), a chunk of Python rows at a time."""
    for start in range(0, len(at), CHUNK_ROWS):
        rows = at.slice(start, CHUNK_ROWS)
        reviews = [[{}] * len(rows) if r is None else r.slice(start, CHUNK_ROWS).to_pylist() for r in (first, second)]
        rows_judged = judgment_rows(
            pairs.take(rows).to_pylist(),
            *reviews,
            judging.tau,
            use_logprobs=judging.use_logprobs,
            roles=judging.roles,
            rubrics=[RUBRICS[name] for name in rubrics.take(rows).to_pylist()],
            failed_answer_loses=judging.failed_answer_loses,
        )
        yield judgment_table(rows_judged, judging.roles)


def matched_orders(reviews: Iterable[pa.Table], orders: list[str]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Each pair's two reviews (request ids `<pair id>|<order>`), as tables of the first and the
    second order aligned by row, each review under its pair's id, as soon as both have come in
    `reviews`. A review whose other order has not come yet waits for it: few, since the two
    orders are asked side by side. A review whose other never comes is left out."""
    waiting = None
    for table in reviews:
        if waiting is not None:
            table = pa.concat_tables([waiting, table], promote_options="permissive")
        pair = pc.replace_substring_regex(table.column("id"), pattern=r"\|[^|]*$", replacement="")
        is_first, is_second = (pc.ends_with(table.column("id"), f"|{order}") for order in orders)
        first, second = table.filter(is_first), table.filter(is_second)
        first_pair, second_pair = pair.filter(is_first).combine_chunks(), pair.filter(is_second).combine_chunks()
        at = pc.index_in(first_pair, value_set=second_pair)
        both = pc.is_valid(at)
        ids = first_pair.filter(both)
        yield _with_id(first.filter(both), ids), _with_id(second.take(at.filter(both)), ids)
        waiting = pa.concat_tables(
            [first.filter(pc.invert(both)), second.filter(pc.invert(pc.is_in(second_pair, value_set=first_pair)))]
        )


def _with_id(reviews: pa.Table, ids: pa.Array) -> pa.Table:
    return reviews.set_column(reviews.schema.get_field_index("id"), "id", ids)


CHUNK_ROWS = 8192  # pairs scored, or made into requests, at once on the driver
REVIEW_COLUMNS = ("id", "text", "finish_reason", "error_kind", "error", "logprobs")  # what judgment_rows reads


def _requests(sent: pa.Table, roles: tuple[str, str], orders: list[str]) -> Iterator[pa.Table]:
    """The referee's requests: both orders of every pair, side by side as the pairs come (the
    two share the question, a prefix an engine's cache can reuse), made a chunk of pairs at a
    time as `answer` takes them (each to the object store before the next is made): the 2 x N
    requests, each carrying both answers, are never all on the driver."""
    for start in range(0, sent.num_rows, CHUNK_ROWS):
        part = sent.slice(start, CHUNK_ROWS)
        by_order = [
            pa.table(
                {
                    "id": pc.binary_join_element_wise(
                        part.column("id"), pa.repeat(pa.scalar(order), part.num_rows), "|"
                    ),
                    "instruction": part.column("instruction"),
                    "input": part.column("input"),
                    "rubric": part.column("rubric"),
                    "first": pc.fill_null(part.column(f"{first}_text"), ""),
                    "second": pc.fill_null(part.column(f"{second}_text"), ""),
                }
            )
            for order, (first, second) in zip(orders, (roles, roles[::-1]))
        ]
        m = part.num_rows
        yield pa.concat_tables(by_order).take(
            pa.array(np.column_stack([np.arange(m), m + np.arange(m)]).ravel(), pa.int64())
        )


def _rubric_names(pairs: pa.Table, prompt: str) -> pa.Array:
    """The rubric each pair is asked under, by name (rubric_for, once per distinct category)."""
    if "category" not in pairs.column_names:
        return pa.repeat(pa.scalar(rubric_for(prompt, None).name), pairs.num_rows)
    category = pairs.column("category").combine_chunks()
    distinct = pc.unique(category)
    names = pa.array([rubric_for(prompt, c).name for c in distinct.to_pylist()], pa.string())
    return names.take(pc.index_in(category, value_set=distinct))


def _unjudgeable(pairs: pa.Table, roles: tuple[str, str], failed_answer_loses: bool) -> pa.ChunkedArray:
    """referee.unjudgeable over the columns: a's answer failed or is blank, or b's request
    failed (unless a failed answer loses)."""
    a, b = roles
    answer_failed = lambda role: error_mask(pairs.column(f"{role}_finish_reason"))  # noqa: E731
    blank = pc.equal(pc.utf8_trim_whitespace(pc.fill_null(pairs.column(f"{a}_text"), "")), "")
    out = pc.or_(answer_failed(a), blank)
    return out if failed_answer_loses else pc.or_(out, answer_failed(b))


def _by_constraint(names: list[str], setting: str, referee: RoleConfig) -> list[tuple[dict | None, list[str]]]:
    """Rubric names grouped by the structured output their rubric asks of this referee: one
    group (one pass) unless the referee is constrained and the rubrics' layouts differ."""
    groups: dict[str, tuple[dict | None, list[str]]] = {}
    for name in names:
        rubric = RUBRICS[name]
        structured = constraint(setting, referee, partial(rubric.regex, referee.sampling.max_tokens), rubric.schema)
        groups.setdefault(json.dumps(structured, sort_keys=True), (structured, []))[1].append(name)
    return list(groups.values())


def _summed(a: StageRecord, b: StageRecord) -> StageRecord:
    """One record of a stage's passes, run one after another: times and counts add."""
    counts = {
        f.name: getattr(a, f.name) + getattr(b, f.name)
        for f in fields(StageRecord)
        if f.name not in ("stage", "gpus", "extra", "failed_by_kind")
    }
    kinds = Counter(a.failed_by_kind) + Counter(b.failed_by_kind)
    return replace(a, **counts, gpus=max(a.gpus, b.gpus), failed_by_kind=dict(kinds), extra={**a.extra, **b.extra})


def asking_again(unread: list[int], retries: int | None) -> bool:
    """Whether the unreadable reviews are asked once more. `unread`: the pairs, then the unreadable
    count after each pass so far. Up to `retries` re-asks; None: while the last pass read some of
    them, as Lion's recheck (src/chatgpt_referee.py: `while len(new_question_idx_list) <
    len(old_question_idx_list)`, the old list all questions at first)."""
    if not unread[-1]:
        return False
    if retries is None:
        return unread[-1] < unread[-2]
    return len(unread) - 2 < retries


def resampled(role: RoleConfig, temperature: float | None = None) -> RoleConfig:
    """The referee for a retry (a new draw): at `temperature`, or by default with sampling raised to
    at least 0.5, so that the retry can differ."""
    t = max(role.sampling.temperature, 0.5) if temperature is None else temperature
    return role.model_copy(update={"sampling": role.sampling.model_copy(update={"temperature": t})})
