"""Discrimination: teacher and student answer the cache pool; the referee scores each
pair twice, the answers' order swapped, and the two are averaged. gap = teacher -
student; an instruction is hard when gap >= tau. An unparseable review is asked again
(a new draw), then excluded and counted: never turned into a number. A student that
answers nothing (empty or failed) has lost: the referee is shown the empty answer and
the student gets the lowest score, 1 (engine.lion.referee.judgment_rows). A failed student
request is not an answer: it is asked again, then its pair is excluded and counted. A conversation
is judged on its last user turn (engine.lion.conversations)."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from engine.config import RunConfig
from engine.data import RunDir
from engine.lion.conversations import answer_student
from engine.lion.iteration import (
    answer, known_teacher_answers, pool_ids_not_in, pools, rel, usage, write_responses, write_stage_metrics,
)
from engine.lion.judge import check_constraint, judge_pairs
from engine.lion.prompts import teacher_messages
from engine.lion.referee import JUDGMENT_SCHEMA, summarize

log = logging.getLogger("engine.lion")


def discrimination(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> tuple[dict, dict, dict]:
    check_constraint(cfg.referee, cfg.lion.referee_constraint, cfg.lion.referee_prompt)
    _, cache_pool = pools(run, k)
    ids = cache_pool.column("id").to_pylist()
    records = []

    known = known_teacher_answers(run, k)
    missing = cache_pool.filter(pool_ids_not_in(cache_pool, known))
    if missing.num_rows:
        answers, record = answer(cfg.teacher, missing, teacher_messages,
                                 stage="discrimination/teacher", role_name="teacher", run_dir=run,
                                 parts=rel(k, "discrimination", "parts"))
        records.append(record)
        known.update({r["id"]: r for r in answers})
    teacher = [known[i] for i in ids]
    write_responses(run, rel(k, "discrimination", "teacher_responses.parquet"), teacher)

    student_role = cfg.student.model_copy(update={"model": student_model})
    student = _student_answers(student_role, cache_pool, run, k, cfg.lion.student_retries, records)
    write_responses(run, rel(k, "discrimination", "student_responses.parquet"), student)

    pairs = [
        {"id": row["id"], "instruction": row["instruction"], "input": row["input"],
         "teacher_text": t.get("text"), "teacher_finish_reason": t.get("finish_reason"),
         "student_text": s.get("text"), "student_finish_reason": s.get("finish_reason")}
        for row, t, s in zip(cache_pool.to_pylist(), teacher, student)
    ]
    judgments, judge_records = judge_pairs(
        cfg.referee, pairs, run=run, stage="discrimination/referee", draws=f"iter_{k}",
        setting=cfg.lion.referee_constraint, prompt=cfg.lion.referee_prompt, retries=cfg.lion.referee_retries,
        use_logprobs=cfg.lion.referee_logprobs, tau=cfg.lion.tau, parts=rel(k, "discrimination", "parts"))
    records.extend(judge_records)
    run.write_table(rel(k, "discrimination", "judgments.parquet"), pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA))

    summary = summarize(judgments)
    log.info("iteration %d discrimination: %d judged, %d hard (fraction %s), mean gap %s, %d failed %s", k,
             summary["judged"], summary["hard"], summary["hard_fraction"], summary["mean_gap"], summary["failed"],
             summary["failed_by_reason"] or "")
    extra = {f"lion/{name}": summary[name] for name in ("judged", "hard", "easy", "hard_fraction", "mean_gap",
                                                         "mean_teacher_score", "mean_student_score")}
    extra["lion/judge_failed"] = summary["failed"]  # by reason: the `status` column of judgments.parquet
    write_stage_metrics(run, k, "discrimination", records, extra)
    iteration_summary = {key: summary[key] for key in ("judged", "failed", "hard", "easy", "hard_fraction", "mean_gap")}
    return {}, usage(records), iteration_summary


def _student_answers(role, cache_pool: pa.Table, run: RunDir, k: int, retries: int, records: list) -> list[dict]:
    """The student's answers to the cache pool, asked as it was trained (engine.lion.conversations);
    a failed request (an engine error, a context overflow: the infrastructure's, not the student's)
    is asked again as a new draw, up to `retries` times, then left failed: its pair is excluded and
    counted, never hard."""
    parts = rel(k, "discrimination", "parts")
    student, first = answer_student(answer, role, cache_pool, "discrimination/student", role_name="student", run_dir=run,
                                    parts=parts)
    records.extend(first)
    for attempt in range(1, retries + 1):
        again = sorted(s["id"] for s in student if (s.get("finish_reason") or "").startswith("failed"))
        if not again:
            break
        stage = f"discrimination/student_retry{attempt}"
        retried, more = answer_student(answer, role, cache_pool.filter(pc.is_in(cache_pool.column("id"), pa.array(again))),
                                       stage, role_name="student", run_dir=run, draw=f"iter_{k}/{stage}",
                                       parts=parts)
        records.extend(more)
        better = {r["id"]: r for r in retried if not (r.get("finish_reason") or "").startswith("failed")}
        student = [better.get(s["id"], s) for s in student]
    return student
