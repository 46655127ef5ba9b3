"""Discrimination: teacher and student answer the cache pool; the referee scores each
pair twice, the answers' order swapped, and the two are averaged. gap = teacher -
student; an instruction is hard when gap >= tau. An unparseable review is asked again
(a new draw), then excluded and counted: never turned into a number. A student that
answers nothing (empty or failed) has lost: the referee is shown the empty answer and
the student gets the lowest score, 1 (lion_distill.judging.referee.judgment_rows). A failed student
request is not an answer: it is asked again, then its pair is excluded and counted. A conversation
is judged on its last user turn (lion_distill.lion.conversations).

With `lion.discriminator: divergence` no student answers and no referee: the teacher scores its own
answers and the gap is the student's divergence from it along each (lion_distill.lion.divergence)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config import RunConfig
from lion_distill.data import RESPONSE_SCHEMA, RunDir
from lion_distill.data.tables import in_order, replaced_by_id
from lion_distill.judging.judge import Judging, check_constraint, judge_pairs
from lion_distill.judging.referee import ANSWER_COLUMNS, summarize
from lion_distill.lion.conversations import answer_student
from lion_distill.lion.divergence import by_divergence
from lion_distill.lion.iteration import known_teacher_answers, pool, pool_ids_not_in, rel, shown, write_stage_metrics
from lion_distill.lion.prompts import teacher_messages
from lion_distill.llm.answers import answer, response_table, write_responses
from lion_distill.llm.responses import error_mask
from lion_distill.llm.transient import stop_if_transient
from lion_distill.metrics import usage
from lion_distill.runner import StageResult

log = logging.getLogger("lion_distill.lion")


def discrimination(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> StageResult:
    judging = referee_settings(cfg)
    if cfg.lion.discriminator == "referee":
        check_constraint(cfg.referee, judging)
    cache_pool = shown(pool(run, k, "cache"), cfg.lion.show_input)
    records = []

    # Arrow tables throughout: a pool of millions is its columns, not millions of Python rows.
    teacher = _written(
        run,
        rel(k, "discrimination", "teacher_responses.parquet"),
        _teacher_answers(cfg.teacher, cache_pool, run, k, records, cfg.lion.discrimination_teacher == "reuse"),
    )
    if cfg.lion.discriminator == "divergence":
        return by_divergence(cfg, run, k, student_model, cache_pool, teacher, records)
    student_role = cfg.student.model_copy(update={"model": student_model})
    student = _written(
        run,
        rel(k, "discrimination", "student_responses.parquet"),
        _student_answers(student_role, cache_pool, run, k, cfg.lion.student_retries, records),
    )

    pairs = cache_pool.select(["id", "instruction", "input"])
    for role, answers in (("teacher", teacher), ("student", student)):
        for column in ANSWER_COLUMNS:
            pairs = pairs.append_column(f"{role}_{column}", answers.column(column))
    judgments, judge_records = judge_pairs(
        cfg.referee,
        pairs,
        judging,
        run=run,
        stage="discrimination/referee",
        draws=f"iter_{k}",
        parts=rel(k, "discrimination", "parts"),
        write_to=rel(k, "discrimination", "judgments.parquet"),
    )  # written a chunk at a time; kept without the reviews
    records.extend(judge_records)

    # Every pair that could be judged is; what failed for a reason that passes is asked by the next attempt.
    for who, table in (("teacher", teacher), ("student", student)):
        stop_if_transient(f"iteration {k} discrimination: the {who}", table)
    stop_if_transient(f"iteration {k} discrimination: the referee", judgments, "failure_kind", "pairs")
    summary = summarize(judgments)
    if summary["rows"] != cache_pool.num_rows:  # a pair judged twice, or not at all, is a bug
        raise RuntimeError(f"iteration {k} discrimination: {summary['rows']} judgments for {cache_pool.num_rows} pairs")
    log.info(
        "iteration %d discrimination: %d judged, %d hard (fraction %s), mean gap %s, %d failed %s",
        k,
        summary["judged"],
        summary["hard"],
        summary["hard_fraction"],
        summary["mean_gap"],
        summary["failed"],
        summary["failed_by_kind"] or "",
    )
    extra = {
        f"lion/{name}": summary[name]
        for name in ("judged", "hard", "easy", "hard_fraction", "mean_gap", "mean_teacher_score", "mean_student_score")
    }
    extra["lion/judge_failed"] = summary["failed"]  # by kind: the `failure_kind` column of judgments.parquet
    write_stage_metrics(run, k, "discrimination", records, extra)
    iteration_summary = {key: summary[key] for key in ("judged", "failed", "hard", "easy", "hard_fraction", "mean_gap")}
    return StageResult(counters=usage(records), summary=iteration_summary)


def referee_settings(cfg: RunConfig) -> Judging:
    """Lion's referee: teacher vs student, the `lion.referee_*` settings."""
    return Judging(
        prompt=cfg.lion.referee_prompt,
        constraint=cfg.lion.referee_constraint,
        retries=cfg.lion.referee_retries,
        retry_temperature=cfg.lion.referee_retry_temperature,
        use_logprobs=cfg.lion.referee_logprobs,
        tau=cfg.lion.tau,
    )


def _written(run: RunDir, path: str, answers: pa.Table) -> pa.Table:
    """`answers` written to `path` -> the columns the pairs need (their role and token counts,
    which the file has, let go while the referee judges)."""
    write_responses(run, path, answers)
    return answers.select(list(ANSWER_COLUMNS))


def _teacher_answers(role, cache_pool: pa.Table, run: RunDir, k: int, records: list, reuse: bool) -> pa.Table:
    """The teacher's answer to each cache-pool instruction, in its order: with `reuse`, those paid for
    in earlier stages reused and the rest asked now; without (`lion.discrimination_teacher:
    ask_again`, Lion's step 2.1), every one asked now as a new draw, so that neither a response cache
    nor a seeded engine hands back the answers imitation trained on. A function of its own so that
    the answers known before, one more pool-sized table, are let go as soon as these are made."""
    known = known_teacher_answers(run, k) if reuse else RESPONSE_SCHEMA.empty_table()
    missing = cache_pool.filter(pool_ids_not_in(cache_pool, known))
    if missing.num_rows:
        answers, record = answer(
            role,
            missing,
            teacher_messages,
            stage="discrimination/teacher",
            role_name="teacher",
            run_dir=run,
            draw=None if reuse else f"iter_{k}/discrimination/teacher",
            parts=rel(k, "discrimination", "parts"),
        )
        records.append(record)
        known = pa.concat_tables([known, response_table(answers)])
    return in_order(known, cache_pool.column("id"))


def _student_answers(role, cache_pool: pa.Table, run: RunDir, k: int, retries: int, records: list) -> pa.Table:
    """The student's answers to the cache pool, asked as it was trained (lion_distill.lion.conversations);
    a failed request (an engine error, a context overflow: the infrastructure's, not the student's)
    is asked again as a new draw, up to `retries` times, then left failed: its pair is excluded and
    counted, never hard."""
    parts = rel(k, "discrimination", "parts")
    student, first = answer_student(
        answer, role, cache_pool, "discrimination/student", role_name="student", run_dir=run, parts=parts
    )
    student = response_table(student)
    records.extend(first)
    for attempt in range(1, retries + 1):
        failed = error_mask(student.column("finish_reason"))
        again = student.column("id").filter(failed)
        if not len(again):
            break
        stage = f"discrimination/student_retry{attempt}"
        retried, more = answer_student(
            answer,
            role,
            cache_pool.filter(pc.is_in(cache_pool.column("id"), again.combine_chunks())),
            stage,
            role_name="student",
            run_dir=run,
            draw=f"iter_{k}/{stage}",
            parts=parts,
        )
        records.extend(more)
        retried = response_table(retried)
        better = retried.filter(pc.invert(error_mask(retried.column("finish_reason"))))
        student = replaced_by_id(student, better)
    return student
