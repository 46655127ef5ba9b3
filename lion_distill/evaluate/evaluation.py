"""One evaluation of one candidate: it answers the questions, the judge reviews each
(reference, candidate) pair in both orders (lion_distill.judging.judge: the referee's prompt,
parser, structured output and retries), and the scores are aggregated.

Run directory (the evaluation job's, or a Lion run's):

    eval/questions.parquet  eval/questions_report.json  eval/reference_answers.parquet
    <out>/answers.parquet   the candidate's answers (reused when an evaluation resumes)
    <out>/judgments.parquet both orders' reviews and raw scores, the averages, the status
    <out>/summary.json      relative score overall and per category, win/tie/loss, failures
    <out>/metrics.json      the stage figures (time, tokens, requests, cost) and eval/<score>

`<out>` is `eval/<candidate>` in the evaluation job and `iter_<k>/eval` in Lion.
Questions and reference answers are prepared once per run directory; judge requests
sent before a kill are answered from the response cache (openai backend) when the
evaluation runs again.
"""

from __future__ import annotations

import logging
from functools import partial

import pyarrow as pa

from lion_distill.config import RoleConfig
from lion_distill.config.evaluate import EvalConfig
from lion_distill.data import RunDir
from lion_distill.evaluate.nll import nll_gap
from lion_distill.evaluate.questions import load_questions, read_reference_answers
from lion_distill.evaluate.scores import aggregate, check_judged, headline
from lion_distill.judging.judge import Judging, check_constraint, judge_pairs
from lion_distill.judging.referee import ANSWER_COLUMNS, judgment_schema
from lion_distill.llm.answers import answer, read_rows, write_responses
from lion_distill.llm.prompts import FORMATS, student_prompt
from lion_distill.llm.serving import take_engine_metrics
from lion_distill.llm.transient import stop_if_transient
from lion_distill.metrics import Metrics, StageRecord

log = logging.getLogger("lion_distill.evaluate")
PAIR_SCHEMA = pa.schema(
    [
        (name, pa.string())
        for name in (
            "id",
            "instruction",
            "input",
            "category",
            *(f"{role}_{column}" for role in ("reference", "candidate") for column in ANSWER_COLUMNS),
        )
    ]
)

ROLES = ("reference", "candidate")  # Assistant 1 first in the reference-first order
QUESTIONS = "eval/questions.parquet"
REFERENCE = "eval/reference_answers.parquet"
JUDGMENT_SCHEMA = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("category", pa.string(), nullable=False)]
    + [f for f in judgment_schema(*ROLES) if f.name != "hard"]  # hard/easy is Lion's, not a score
)
PROMPTS = {fmt: partial(student_prompt, prompt_format=fmt) for fmt in FORMATS}  # a candidate asked in its format


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def prepare(cfg: EvalConfig, run: RunDir) -> tuple[list[dict], list[dict], list[StageRecord]]:
    """-> (questions, reference answers in question order, records): read from the run
    directory when an earlier evaluation prepared them, else loaded (and answered) now."""
    if run.exists(REFERENCE):
        return read_rows(run, QUESTIONS), read_rows(run, REFERENCE), []
    questions, report = load_questions(cfg.questions, cfg.seed)
    run.write_json("eval/questions_report.json", report)
    records = []
    if cfg.reference.answers is not None:
        texts = read_reference_answers(cfg.reference, questions)
        reference = [
            {"id": q["id"], "role": "reference", "text": t, "finish_reason": "stop"} for q, t in zip(questions, texts)
        ]
    else:
        reference, record = _answer(cfg.reference.role, "chat", questions, run, "eval/reference", "reference")
        records.append(record)
    run.write_table(QUESTIONS, pa.Table.from_pylist(questions))
    write_responses(run, REFERENCE, reference)
    return questions, read_rows(run, REFERENCE), records


def _answer(
    role: RoleConfig, prompt: str, questions: list[dict], run: RunDir, stage: str, role_name: str
) -> tuple[list[dict], StageRecord]:
    rows = [{"id": q["id"], "instruction": q["instruction"], "input": q["input"]} for q in questions]
    answers, record = answer(role, rows, PROMPTS[prompt], stage=stage, role_name=role_name, run_dir=run)
    if stage == "eval/reference":  # before they are saved: a failure that passes is asked again
        stop_if_transient(stage, answers)  # (a candidate that cannot answer has lost: failed_answer_loses)
    return answers.to_pylist(), record


def evaluate(
    cfg: EvalConfig,
    run: RunDir,
    role: RoleConfig,
    prompt: str,
    out: str,
    role_name: str = "candidate",
    teacher: RoleConfig | None = None,
) -> tuple[dict, list[StageRecord]]:
    """Evaluate the candidate `role` (asked in `prompt` format) into `out`; -> (summary, records).
    `role_name` is the candidate's name in the spend log (a budget is per role) and among the
    job's engines (Lion's student); the judge's is "judge". With a `teacher` (Lion's), the
    summary's "nll" is the judge-free gap (lion_distill.evaluate.nll)."""
    judging = judge_settings(cfg)
    check_constraint(cfg.judge, judging)
    questions, reference, records = prepare(cfg, run)
    if run.exists(f"{out}/answers.parquet"):
        candidate = read_rows(run, f"{out}/answers.parquet")
    else:
        candidate, record = _answer(role, prompt, questions, run, "eval/candidate", role_name)
        records.append(record)
        write_responses(run, f"{out}/answers.parquet", candidate)
    pairs = answer_pairs(questions, reference, candidate)
    judgments, judge_records = judge_pairs(cfg.judge, pairs, judging, run=run, stage="eval/judge", draws=out)
    stop_if_transient("eval/judge", judgments, "failure_kind", "pairs")
    records += judge_records
    nll = None
    if teacher is not None:
        nll, teacher_records = nll_gap(teacher, role, prompt, questions, run, out)
        records += teacher_records
    rows = [{**j, "key": q["key"], "category": q["category"]} for q, j in zip(questions, judgments.to_pylist())]
    run.write_table(f"{out}/judgments.parquet", pa.Table.from_pylist(rows, schema=JUDGMENT_SCHEMA))
    summary = aggregate(rows, cfg.tie_margin, cfg.bootstrap_samples, cfg.seed)
    if nll is not None:
        summary["nll"] = nll
    check_judged(summary, cfg.min_judged_fraction, out)
    _write_summary(run, out, summary, records)
    return summary, records


def judge_settings(cfg: EvalConfig) -> Judging:
    """The evaluation's judge: reference vs candidate, and a candidate that cannot answer has lost."""
    return Judging(
        prompt=cfg.judge_prompt,
        constraint=cfg.judge_constraint,
        retries=cfg.judge_retries,
        use_logprobs=cfg.judge_logprobs,
        tau=0.0,
        roles=ROLES,
        role_name="judge",
        failed_answer_loses=True,
    )


def answer_pairs(questions: list[dict], reference: list[dict], candidate: list[dict]) -> pa.Table:
    """Each question with the reference's and the candidate's answer (aligned with the questions)."""
    return pa.Table.from_pylist(
        [
            {
                "id": q["id"],
                "instruction": q["instruction"],
                "input": q["input"],
                "category": q["category"],
                **{f"reference_{column}": r.get(column) for column in ANSWER_COLUMNS},
                **{f"candidate_{column}": c.get(column) for column in ANSWER_COLUMNS},
            }
            for q, r, c in zip(questions, reference, candidate)
        ],
        schema=PAIR_SCHEMA,
    )


def _write_summary(run: RunDir, out: str, summary: dict, records: list[StageRecord]) -> None:
    """<out>/metrics.json (the stage figures and eval/<score>) and <out>/summary.json, and its line."""
    figures = Metrics(records).as_dict()
    figures.update({f"eval/{name}": value for name, value in headline(summary).items()})
    figures.update({f"eval/{name}": value for name, value in (summary.get("nll") or {}).items()})
    figures.update(take_engine_metrics())  # the candidate's or judge's engine may start here
    run.write_json(f"{out}/metrics.json", figures)
    run.write_json(f"{out}/summary.json", summary)
    overall = summary["overall"]
    log.info(
        "%s: relative score %s (95%% CI %s-%s), %d of %d judged (%d answers truncated to fit), %d judge failures",
        out,
        *(_percent(overall[k]) for k in ("relative_score", "ci_low", "ci_high")),
        summary["judged"],
        summary["questions"],
        summary["truncated"],
        summary["failed"],
    )
