"""Lion's judge-free discriminator (`lion.discriminator: divergence`): no student answers and no
referee. The teacher scores its own answers to the cache pool (lion_distill.distill.signal), an
instruction's gap is the student's mean per-token divergence from the teacher along that answer
(lion_distill.distill.divergence), and the most divergent are hard. The judgments have Lion's layout
(lion_distill.judging.referee.JUDGMENT_SCHEMA: the gap, hard, no scores or reviews), so generation
works from them exactly as from the referee's. An instruction the teacher did not answer is failed,
with the answer's own failure kind, never hard."""

from __future__ import annotations

import logging

import pyarrow as pa

from lion_distill.config import RunConfig
from lion_distill.data import RunDir
from lion_distill.data.schema import TRAINING_ROW_SCHEMAS
from lion_distill.distill.divergence import hard_by_divergence, student_divergence
from lion_distill.distill.signal import teacher_signal, with_signal
from lion_distill.errors import ErrorKind
from lion_distill.judging.referee import JUDGMENT_SCHEMA, OK, Failure, summarize
from lion_distill.lion.iteration import rel, write_stage_metrics
from lion_distill.lion.prompts import teacher_messages
from lion_distill.llm.answers import answered_mask
from lion_distill.llm.prompts import prompt_format, training_row
from lion_distill.metrics import stage_timer, usage
from lion_distill.runner import StageResult
from lion_distill.train.kd_loss import KDLoss

log = logging.getLogger("lion_distill.lion")


def by_divergence(
    cfg: RunConfig, run: RunDir, k: int, student_model: str, cache_pool: pa.Table, teacher: pa.Table, records: list
) -> StageResult:
    """Discrimination by divergence over `cache_pool` and the teacher's answers to it (in its order:
    text, finish_reason, error_kind, error); `records` holds what the stage has asked so far."""
    answered = answered_mask(teacher)
    rows, answers = cache_pool.filter(answered), teacher.filter(answered)
    answers = answers.append_column("id", rows.column("id"))
    signal, record = teacher_signal(
        cfg.teacher,
        cfg.distill,
        rows,
        answers,
        teacher_messages,
        run=run,
        stage="discrimination/signal",
        parts=rel(k, "discrimination", "signal"),
    )
    records.append(record)
    # The student is scored in the layout it is trained in (its answer as the last assistant turn).
    fmt = prompt_format(cfg.student)
    rows_in = [training_row(r, a, fmt) for r, a in zip(rows.to_pylist(), answers.to_pylist())]
    scored = with_signal(pa.Table.from_pylist(rows_in, schema=TRAINING_ROW_SCHEMAS[fmt]), signal)
    with stage_timer("discrimination/divergence") as timing:
        gaps = _remote_divergence(student_model, scored.to_pylist(), cfg)
        timing.rows = len(gaps)
    records.append(timing)
    hard = hard_by_divergence(gaps, tau=cfg.lion.divergence_tau, share=cfg.lion.divergence_hard_share)
    judgments = divergence_judgments(cache_pool, teacher, dict(zip(rows.column("id").to_pylist(), zip(gaps, hard))))
    run.write_table(rel(k, "discrimination", "judgments.parquet"), judgments)
    summary = summarize(judgments)
    extra = {f"lion/{name}": summary[name] for name in ("judged", "hard", "easy", "hard_fraction", "mean_gap")}
    extra["lion/judge_failed"] = summary["failed"]
    extra.update(divergence_means(gaps, hard))
    log.info(
        "iteration %d discrimination by divergence: %d judged, %d hard; mean divergence hard %s, easy %s",
        k,
        summary["judged"],
        summary["hard"],
        extra.get("lion/divergence_hard_mean"),
        extra.get("lion/divergence_easy_mean"),
    )
    write_stage_metrics(run, k, "discrimination", records, extra)
    iteration_summary = {key: summary[key] for key in ("judged", "failed", "hard", "easy", "hard_fraction", "mean_gap")}
    return StageResult(counters=usage(records), summary=iteration_summary)


def divergence_means(gaps: list[float], hard: list[bool | None]) -> dict[str, float]:
    """The mean divergence of the hard and of the easy instructions (the report's table)."""
    means = {}
    for kind, flag in (("hard", True), ("easy", False)):
        values = [g for g, h in zip(gaps, hard) if h is flag]
        if values:
            means[f"lion/divergence_{kind}_mean"] = sum(values) / len(values)
    return means


def divergence_judgments(cache_pool: pa.Table, teacher: pa.Table, judged: dict[str, tuple[float, bool | None]]):
    """Judgment rows (JUDGMENT_SCHEMA) of the divergence discriminator, one per cache-pool row: the gap
    is the divergence; a row without one is failed with its teacher answer's failure kind."""
    rows = []
    for i, answer in zip(cache_pool.column("id").to_pylist(), teacher.to_pylist()):
        gap, hard = judged.get(i, (None, None))
        if hard is not None:
            rows.append({"id": i, "gap": gap, "hard": hard, "status": OK})
            continue
        kind = ErrorKind(answer["error_kind"]) if answer.get("error_kind") else ErrorKind.UNPARSEABLE
        failure = Failure(kind, f"teacher answer: {answer.get('error') or 'empty, or no answer token to score'}")
        rows.append({"id": i, **failure.columns()})
    return pa.Table.from_pylist(rows, schema=JUDGMENT_SCHEMA)


def _remote_divergence(student_model: str, rows: list[dict], cfg: RunConfig) -> list[float]:
    """student_divergence in a Ray task, on a GPU where the cluster has one."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus)(student_divergence)
    loss = KDLoss.of(cfg.distill)
    return ray.get(
        task.remote(
            student_model,
            rows,
            loss,
            top_k=cfg.distill.top_k,
            max_length=cfg.train.max_length,
            chat_template_kwargs=cfg.student.chat_template_kwargs,
        )
    )
