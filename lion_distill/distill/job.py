"""The distill job: the teacher answers a pool, the student distils the answers (`distill.mode`: sft
on their text, or logit_kd on the teacher's top-k log-probabilities at each of their tokens), and
the student is evaluated before and after, as a Lion run evaluates it.

    lion-distill distill --config configs/distill-smol.yaml [--set distill.mode=logit_kd]
    ray job submit --working-dir . -- python jobs/distill.py --config configs/distill-smol.yaml

Stages (resumable, on the shared runner): `eval/before` (with `eval`), `teacher`, `signal` (logit_kd),
`train`, `eval/after`. Run directory:

    pool.parquet                        the pool (a seeded sample of data's files when asked)
    teacher/teacher_responses.parquet   the teacher's answers; teacher/parts/ while it answers
    signal/<stage>-<digest>/            the teacher token signal, parts keyed by id (lion_distill.distill.signal)
    train/student/                      the distilled student (Hugging Face format)
    eval/before/, eval/after/           the evaluations (lion_distill.evaluate)
    <stage>/metrics.json, report.md
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config import load_config
from lion_distill.config.distill import DistillRunConfig
from lion_distill.data import RESPONSE_SCHEMA, RunDir, read_pool, write_pool
from lion_distill.data.pools import RowFiles
from lion_distill.data.schema import TRAINING_ROW_SCHEMAS
from lion_distill.distill.report import write_report
from lion_distill.distill.signal import read_signal, teacher_signal, with_signal
from lion_distill.distill.teacher import with_teacher_logprobs
from lion_distill.evaluate.evaluation import evaluate
from lion_distill.evaluate.scores import headline
from lion_distill.job_inputs import absolute_paths, run_with_engines, sampled_pool, with_prompt_format
from lion_distill.llm.answers import answer, answered_mask, response_table, write_responses
from lion_distill.llm.prompts import instruction_messages, prompt_format, training_row
from lion_distill.llm.serving import take_engine_metrics, training
from lion_distill.local_models import resolve_local_models
from lion_distill.metrics import Metrics, usage
from lion_distill.run_config import store_config
from lion_distill.runner import Stage, StageResult

log = logging.getLogger("lion_distill.distill")

POOL, RESPONSES = "pool.parquet", "teacher/teacher_responses.parquet"
SIGNAL_STAGE, SIGNAL_PARTS = "signal", "signal"


def teacher_stage(cfg: DistillRunConfig, run: RunDir) -> StageResult:
    """The teacher answers the pool (resumable through its parts, an API's answers cached)."""
    pool = read_pool(run, POOL)
    answers, record = answer(
        cfg.teacher,
        pool,
        instruction_messages,
        stage="teacher",
        role_name="teacher",
        run_dir=run,
        parts="teacher/parts",
    )
    answers = response_table(answers)
    write_responses(run, RESPONSES, answers)
    trainable = trainable_mask(answers, cfg.train_on_truncated)
    summary = {"asked": pool.num_rows, "trainable": int(pc.sum(trainable.cast(pa.int64())).as_py() or 0)}
    _metrics(run, "teacher", [record], {f"distill/{k}": v for k, v in summary.items()})
    return StageResult(counters=usage([record]), summary=summary)


def signal_stage(cfg: DistillRunConfig, run: RunDir) -> StageResult:
    """The teacher's top k at every token of the answers the student trains on (logit_kd)."""
    pool, answers = _trainable(cfg, run)
    signal, record = teacher_signal(
        cfg.teacher, cfg.distill, pool, answers, instruction_messages, run=run, stage=SIGNAL_STAGE, parts=SIGNAL_PARTS
    )
    tokens = int(pc.sum(pc.list_value_length(signal.column("token_ids"))).as_py() or 0)
    summary = {"scored": signal.num_rows, "answer_tokens": tokens, "signal_bytes": int(signal.nbytes)}
    _metrics(run, "signal", [record], {f"distill/{k}": v for k, v in summary.items()})
    return StageResult(counters=usage([record]), summary=summary)


def train_stage(cfg: DistillRunConfig, run: RunDir, student_model: str) -> StageResult:
    """The student fine-tuned on the trainable answers (with their signal under logit_kd)."""
    from lion_distill.train import delete_checkpoints, train_causal_sft
    from lion_distill.train.kd_loss import KDLoss

    pool, answers = _trainable(cfg, run)
    fmt = prompt_format(cfg.student)
    rows = training_rows(pool, answers, fmt, cfg.teacher.reasoning)
    kd = None
    if cfg.distill.mode == "logit_kd":
        rows = with_signal(rows, read_signal(run, cfg.teacher, cfg.distill, stage=SIGNAL_STAGE, parts=SIGNAL_PARTS))
        kd = KDLoss.of(cfg.distill)
    files = RowFiles(run, "train/train_rows")
    files.add(rows)
    with training():
        result = train_causal_sft(
            cfg.train,
            student_model,
            files.dataset(),
            run.uri_of("train/student"),
            name=f"{cfg.name}-train",
            prompt_format=fmt,
            chat_template_kwargs=cfg.student.chat_template_kwargs,
            kd=kd,
            top_k=cfg.distill.top_k,
        )
    files.remove()
    if not cfg.train.keep_checkpoints:
        delete_checkpoints(result.model_dir)
    result.record.stage = "train"
    _metrics(run, "train", [result.record], {"distill/trained": rows.num_rows})
    return StageResult({"student_model": result.model_dir}, usage([result.record]), {"trained": rows.num_rows})


def eval_stage(cfg: DistillRunConfig, run: RunDir, student_model: str, out: str) -> StageResult:
    student = cfg.student.model_copy(update={"model": student_model})
    summary, records = evaluate(
        cfg.eval, run, student, prompt_format(student), out, role_name="student", teacher=cfg.teacher
    )
    return StageResult(counters=usage(records), summary={f"eval_{k}": v for k, v in headline(summary).items()})


def trainable_mask(answers: pa.Table, train_on_truncated: bool) -> pa.ChunkedArray:
    """Answered, and complete unless cut answers are trained on (without an end token)."""
    mask = answered_mask(answers)
    if train_on_truncated:
        return mask
    return pc.and_(mask, pc.fill_null(pc.not_equal(answers.column("finish_reason"), "length"), True))


def _trainable(cfg: DistillRunConfig, run: RunDir) -> tuple[pa.Table, pa.Table]:
    pool, answers = read_pool(run, POOL), run.read_table(RESPONSES, schema=RESPONSE_SCHEMA)
    mask = trainable_mask(answers, cfg.train_on_truncated)
    return pool.filter(mask), answers.filter(mask)


def training_rows(pool: pa.Table, answers: pa.Table, fmt: str, reasoning: str) -> pa.Table:
    """Training rows in the student's layout `fmt` (lion_distill.llm.prompts.training_row; docs/design.md,
    "Data contracts"): a conversation's context is the pool row's, then the teacher's answer."""
    rows = [training_row(r, a, fmt, reasoning) for r, a in zip(pool.to_pylist(), answers.to_pylist())]
    return pa.Table.from_pylist(rows, schema=TRAINING_ROW_SCHEMAS[fmt])


def _metrics(run: RunDir, stage: str, records: list, extra: dict) -> None:
    run.write_json(f"{stage}/metrics.json", {**Metrics(records).as_dict(), **extra, **take_engine_metrics()})


def distill_stages(cfg: DistillRunConfig, run: RunDir) -> list[Stage]:
    """eval/before, teacher, signal (logit_kd), train, eval/after."""

    def student(state: dict) -> str:
        return state["outputs"]["student_model"]

    def evaluation(out: str) -> Stage:
        return Stage(out, lambda s: eval_stage(cfg, run, student(s), out), group=out.replace("/", "_"))

    stages = [evaluation("eval/before")] if cfg.eval else []
    stages.append(Stage("teacher", lambda s: teacher_stage(cfg, run)))
    if cfg.distill.mode == "logit_kd":
        stages.append(Stage(SIGNAL_STAGE, lambda s: signal_stage(cfg, run)))
    stages.append(Stage("train", lambda s: train_stage(cfg, run, student(s))))
    if cfg.eval:
        stages.append(evaluation("eval/after"))
    return stages


def load(path: str, overrides: list[str]) -> DistillRunConfig:
    return resolve_local_models(load_config(path, overrides, model=DistillRunConfig))


def resolved(cfg: DistillRunConfig) -> DistillRunConfig:
    """The config as the run uses it and stores it in config.json: its paths absolute (the teacher's
    tokenizer folder too), the student's format fixed, and the teacher's engine allowed distill.top_k
    logprobs."""
    cfg = with_teacher_logprobs(with_prompt_format(absolute_paths(cfg)))
    if cfg.distill.teacher_tokenizer and os.path.exists(cfg.distill.teacher_tokenizer):
        tokenizer = os.path.abspath(cfg.distill.teacher_tokenizer)
        cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher_tokenizer": tokenizer})})
    return cfg


def run(cfg: DistillRunConfig, allow_config_change: bool = False) -> dict:
    cfg = resolved(cfg)
    rundir = RunDir(cfg.run_dir)
    config = store_config(rundir, cfg, allow_config_change)  # a resumed run's config is the stored one
    if not rundir.exists(POOL):
        pool, report = sampled_pool(cfg.data, cfg.train.seed)
        rundir.write_json("data_report.json", report)
        write_pool(rundir, POOL, pool)
    roles = {"teacher": cfg.teacher, "student": cfg.student, **({"judge": cfg.eval.judge} if cfg.eval else {})}
    state = run_with_engines(
        cfg, rundir, job="distill", roles=roles, stages=distill_stages(cfg, rundir), report=write_report, config=config
    )
    write_report(rundir)
    log.info("done: student %s; report %s", state["outputs"]["student_model"], rundir.path("report.md"))
    return state
