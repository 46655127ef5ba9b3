"""The evaluation's logic without Ray: questions and references, the relative score, win/tie/loss and
the bootstrap interval on hand-made scores, the judge's failures, the config, the reports."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lion_distill.config import ConfigError, RoleConfig, load_config
from lion_distill.config.evaluate import EvalConfig, EvalJobConfig, QuestionsConfig, ReferenceConfig
from lion_distill.data import RunDir
from lion_distill.errors import CandidateError, ErrorKind, EvalDataError
from lion_distill.evaluate.evaluation import JUDGMENT_SCHEMA, ROLES
from lion_distill.evaluate.job import candidate_role
from lion_distill.evaluate.questions import load_questions, read_reference_answers
from lion_distill.evaluate.report import failure_lines, lion_eval_section, write_report
from lion_distill.evaluate.scores import aggregate, bootstrap_interval
from lion_distill.judging.referee import FAILED, OK, judgment_rows
from lion_distill.llm.responses import error_row, response_row
from lion_distill.metrics import StageRecord
from lion_distill.metrics.report import short_message
from tests.test_lion_stages import as_answered

REPO = Path(__file__).resolve().parent.parent
VICUNA = REPO / "data" / "vicuna80"
VICUNA_QUESTIONS = QuestionsConfig(files=[str(VICUNA / "questions.jsonl")], field_map={"instruction": "text"})


UNREAD = ("unparseable", "review: no scores in the rubric's layout")  # a judgment's failure_kind, failure


def judged(category: str, candidate: float, reference: float, failure: tuple[str, str] | None = None) -> dict:
    ok = failure is None
    kind, message = failure or (None, None)
    return {
        "category": category,
        "status": OK if ok else FAILED,
        "failure_kind": kind,
        "failure": message,
        "candidate_score": candidate if ok else None,
        "reference_score": reference if ok else None,
    }


# --- questions and reference answers --------------------------------------------


def test_vicuna80_questions_and_gpt35_answers_load_in_the_repository():
    questions, report = load_questions(VICUNA_QUESTIONS, seed=0)
    assert report["rows_in"] == report["rows_kept"] == len(questions) == 80
    assert {q["category"] for q in questions} == {
        "generic",
        "knowledge",
        "roleplay",
        "common-sense",
        "fermi",
        "counterfactual",
        "writing",
        "coding",
        "math",
    }
    assert questions[0]["key"] == "1" and questions[0]["instruction"] == "How can I improve my time management skills?"
    answers = read_reference_answers(ReferenceConfig(answers=str(VICUNA / "answers_gpt-3.5-turbo.jsonl")), questions)
    assert len(answers) == 80 and answers[0].startswith("Here are some tips to improve your time management")


def test_questions_are_rejected_and_counted_as_pool_rows_are(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"id": 1, "question": "What is tea?", "topic": "food"}',
                '{"id": 2, "question": "   ", "topic": "food"}',  # empty
                "{not json",  # malformed
                '{"id": 4, "question": "What is tea?", "topic": "x"}',  # duplicate
                '{"id": 5, "question": 7}',  # not a string
                '{"id": 6, "question": "Why is the sky blue?"}',  # no category: "all"
            ]
        )
        + "\n"
    )
    cfg = QuestionsConfig(
        files=[str(path)], field_map={"instruction": "question"}, key_field="id", category_field="topic"
    )
    questions, report = load_questions(cfg, seed=0)
    assert [(q["key"], q["category"]) for q in questions] == [("1", "food"), ("6", "all")]
    assert report["rows_in"] == 6 == report["rows_kept"] + report["rows_rejected"]
    assert report["rejects"] == {"empty_instruction": 1, "malformed_json": 1, "duplicate_id": 1, "non_string_field": 1}
    assert report["examples"]["malformed_json"][0].startswith(f"{path}:3")


def test_a_sample_of_questions_is_seeded():
    cfg = VICUNA_QUESTIONS.model_copy(update={"sample_size": 10})
    first, report = load_questions(cfg, seed=1)
    assert len(first) == report["sampled"] == 10 and first == load_questions(cfg, seed=1)[0]


def test_a_missing_reference_answer_is_an_error_naming_the_question(tmp_path):
    questions, _ = load_questions(VICUNA_QUESTIONS, seed=0)
    lines = (VICUNA / "answers_gpt-3.5-turbo.jsonl").read_text().splitlines()
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(line for line in lines if json.loads(line)["question_id"] != 17) + "\n")
    with pytest.raises(EvalDataError, match=r"no reference answer for question 17 \('.+'\)"):
        read_reference_answers(ReferenceConfig(answers=str(answers)), questions)
    answers.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(EvalDataError, match=rf"{answers}:2: malformed JSON"):
        read_reference_answers(ReferenceConfig(answers=str(answers)), questions)


# --- judging and aggregation ----------------------------------------------------


def test_judgments_map_the_swapped_order_back_to_reference_and_candidate():
    pair = {"id": "q", "instruction": "x", "input": "", "reference_text": "r", "candidate_text": "c"}
    [j] = judgment_rows([pair], [{"text": "9 5\nx"}], [{"text": "6 8\ny"}], tau=0.0, roles=ROLES)
    # reference-first: reference 9, candidate 5; candidate-first: candidate 6, reference 8
    assert (j["reference_score_1"], j["candidate_score_1"], j["reference_score_2"], j["candidate_score_2"]) == (
        9,
        5,
        8,
        6,
    )
    assert (j["reference_score"], j["candidate_score"], j["status"]) == (8.5, 5.5, OK)
    assert set(JUDGMENT_SCHEMA.names) - set(j) == {"key", "category"}
    # A candidate that answers nothing has lost (scores 1); without a reference answer nothing is judged.
    [lost] = judgment_rows(
        [{**pair, "candidate_text": " "}], [{"text": "9 5"}], [{"text": "6 8"}], tau=0.0, roles=ROLES
    )
    assert (lost["status"], lost["reference_score"], lost["candidate_score"]) == (OK, 8.5, 1.0)
    [failed] = judgment_rows(
        [{**pair, "reference_text": ""}], [{"text": "9 5"}], [{"text": "6 8"}], tau=0.0, roles=ROLES
    )
    assert (failed["status"], failed["failure_kind"], failed["failure"]) == (
        FAILED,
        "unparseable",
        "reference answer: empty",
    )
    assert failed["candidate_score"] is None


def test_relative_score_per_category_with_win_tie_loss_and_failures_excluded():
    overflow = ("context_overflow", "review: VLLMValidationError: This model's maximum context length is 1024")
    judgments = [
        judged("math", 8, 4),
        judged("math", 6, 6),
        judged("math", 0, 0, UNREAD),
        judged("code", 3, 9),
        judged("code", 5, 5.5),
        judged("code", 0, 0, overflow),
    ]
    summary = aggregate(judgments, tie_margin=0.5, samples=200, seed=0)
    math, code, overall = summary["by_category"]["math"], summary["by_category"]["code"], summary["overall"]
    assert (math["candidate_score"], math["reference_score"], math["relative_score"]) == (14, 10, 1.4)
    assert (math["win"], math["tie"], math["loss"], math["questions"]) == (1, 1, 0, 2)
    assert (code["win"], code["tie"], code["loss"]) == (0, 1, 1) and code["relative_score"] == 8 / 14.5
    assert overall["relative_score"] == 22 / 24.5 and overall["questions"] == 4
    assert (summary["questions"], summary["judged"], summary["failed"]) == (6, 4, 2)
    assert (
        summary["failed_by_kind"] == {"unparseable": 1, "context_overflow": 1} and summary["judged_fraction"] == 4 / 6
    )
    assert summary["failure_examples"] == {"unparseable": UNREAD[1], "context_overflow": overflow[1]}
    assert aggregate([judged("x", 0, 0, UNREAD)])["overall"]["relative_score"] is None


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_questions():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 80, 640):
        reference = rng.integers(6, 10, n).astype(float)
        candidate = np.clip(reference - rng.integers(-2, 4, n), 1, 10).astype(float)
        low, high = bootstrap_interval(candidate, reference, samples=2000, seed=0)
        assert low < candidate.sum() / reference.sum() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    same = np.array([7.0, 8.0, 9.0])
    assert bootstrap_interval(same, same, samples=100, seed=0) == (1.0, 1.0)


# --- config ---------------------------------------------------------------------


def test_eval_configs_load_and_bad_ones_name_the_field(tmp_path):
    for name in ("eval-demo.yaml", "eval-vicuna80.yaml"):
        cfg = load_config(REPO / "configs" / name, model=EvalJobConfig)
        assert cfg.eval.candidates and cfg.eval.reference.answers.endswith("answers_gpt-3.5-turbo.jsonl")
    assert load_config(REPO / "configs" / "demo.yaml").eval.questions.sample_size == 8
    with pytest.raises(ConfigError, match="eval.candidates: name at least one"):
        load_config(REPO / "configs" / "eval-demo.yaml", ["eval.candidates=[]"], model=EvalJobConfig)
    with pytest.raises(ConfigError, match="eval.reference: .*exactly one of 'answers'"):
        load_config(
            REPO / "configs" / "eval-demo.yaml", ["eval.reference.role={backend: hf, model: m}"], model=EvalJobConfig
        )
    with pytest.raises(ConfigError, match="in a Lion run the candidate is the student"):
        load_config(REPO / "configs" / "demo.yaml", ["eval.candidates=[{name: x, lion_run: runs/x}]"])


def test_a_lion_candidate_is_the_runs_latest_student_served_as_the_run_serves_it(tmp_path):
    from lion_distill.config.evaluate import CandidateConfig

    run = RunDir(tmp_path / "lion")
    candidate = CandidateConfig(name="s", lion_run=run.uri)
    with pytest.raises(CandidateError, match="config.json not found"):
        candidate_role(candidate)
    run.write_json("config.json", {"student": {"backend": "hf", "model": "base", "sampling": {"max_tokens": 7}}})
    with pytest.raises(CandidateError, match="no student checkpoint"):
        candidate_role(candidate)
    for k in (0, 1):
        run.write_json(f"iter_{k}/imitation/student/config.json", {})
    role = candidate_role(candidate)
    assert role.model == run.path("iter_1/imitation/student") and role.sampling.max_tokens == 7
    assert candidate_role(candidate.model_copy(update={"iteration": 0})).model == run.path("iter_0/imitation/student")


# --- reports --------------------------------------------------------------------


def _summary(relative: float) -> dict:
    judgments = [judged("math", relative * 8, 8), judged("code", relative * 6, 6), judged("code", 0, 0, UNREAD)]
    return aggregate(judgments, samples=100)


def test_eval_report_has_a_table_per_category_a_plot_and_failures_by_kind(tmp_path):
    run = RunDir(tmp_path)
    run.write_json(
        "config.json", {"eval": {"reference": {"name": "gpt-3.5-turbo"}, "candidates": [{"name": "a"}, {"name": "b"}]}}
    )
    too_long = "review: VLLMValidationError: This model's maximum context length is 1024 tokens; your prompt has {}"
    judgments = [judged("math", 0.9 * 8, 8), judged("code", 0.9 * 6, 6), judged("code", 0, 0, UNREAD)]
    judgments += [
        judged("code", 0, 0, ("context_overflow", too_long.format(n) + " " + "x" * 200)) for n in (1063, 1207, 9)
    ]
    run.write_json("eval/a/summary.json", aggregate(judgments, samples=100))
    report = Path(write_report(run)).read_text()
    assert "gpt-3.5-turbo" in report and "| math | 1 |" in report and "90.0%" in report
    assert f"| unparseable | 1 | `{UNREAD[1]}` |" in report
    # One row per kind, its first message shortened as every report shortens one (lion_distill.metrics.report).
    assert f"| context_overflow | 3 | `{short_message(too_long.format(1063) + ' ' + 'x' * 200)}` |" in report
    assert "1207" not in report and short_message("a" * 500).endswith("…") and len(short_message("a" * 500)) == 120
    assert "## b\n\nNot evaluated yet." in report and "](plots/relative_score_by_category.png)" in report
    assert (tmp_path / "eval" / "plots" / "relative_score_by_category.png").stat().st_size > 0


def test_lion_report_section_plots_the_relative_score_per_iteration(tmp_path):
    run = RunDir(tmp_path)
    assert "No evaluation yet" in "\n".join(lion_eval_section(run))
    for k, relative in ((-1, 0.5), (0, 0.7), (1, 0.75)):
        run.write_json(f"iter_{k}/eval/summary.json", _summary(relative))
    section = "\n".join(lion_eval_section(run))
    assert "| base | 50.0%" in section and "| 0 | 70.0%" in section and "| 1 | 75.0%" in section
    assert (tmp_path / "plots" / "relative_score.png").stat().st_size > 0


# --- one evaluation, its Ray edge scripted ----------------------------------------


class ScriptedRoles:
    """lion_distill.llm.answers.answer with replies by role: the candidate's, and a judge that scores
    by content (9 for the reference's answer, 4 for the candidate's) and cannot read question 2 once."""

    def __init__(self):
        self.calls = []

    def __call__(
        self,
        role,
        rows,
        to_prompt,
        *,
        stage,
        role_name,
        run_dir=None,
        structured_output=None,
        logprobs=None,
        draw=None,
        parts=None,
        columns=None,
        stream=False,
    ):
        # A table, a list of rows, or tables made one at a time (the referee's requests).
        rows = (
            rows.to_pylist()
            if isinstance(rows, pa.Table)
            else rows
            if isinstance(rows, list)
            else [row for table in rows for row in table.to_pylist()]
        )
        self.calls.append({"stage": stage, "draw": draw, "rows": len(rows)})
        table = pa.Table.from_pylist(self.replies(rows, role_name, draw))
        return as_answered(table, columns, stream), StageRecord(stage, rows=len(rows))

    def stream(self, role, rows, to_prompt, **kwargs):
        """answer_stream's script: the same replies, as tables in another order than the rows'."""
        return self(role, rows, to_prompt, stream=True, **kwargs)

    def replies(self, rows, role_name, draw):
        out = []
        for row in rows:
            if role_name == "candidate":
                text = f"Candidate answer to {row['instruction']}"
            elif "colour" in row["instruction"] and draw is None:
                text = "I cannot say."
            else:
                scores = ["4" if a.startswith("Candidate") else "9" for a in (row["first"], row["second"])]
                # In the layout of the question's rubric: FastChat's math prompt asks for a tuple.
                text = f"ok\n({', '.join(scores)})" if row["rubric"] == "math" else " ".join(scores) + "\nok"
            out.append({"id": row["id"], "role": role_name, **response_row(text, "stop")})
        return out


def test_an_evaluation_maps_orders_retries_unreadable_reviews_and_reuses_answers(tmp_path, monkeypatch):
    from lion_distill.evaluate import evaluation
    from lion_distill.judging import judge
    from tests.fixtures.questions import short_questions

    llm = ScriptedRoles()
    monkeypatch.setattr(evaluation, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    questions, answers = short_questions(tmp_path)
    cfg = EvalConfig.model_validate(
        {
            "questions": {"files": [questions], "field_map": {"instruction": "text"}},
            "reference": {"answers": answers},
            "judge": {"backend": "vllm", "model": "j"},
            "judge_retries": 1,
        }
    )
    run = RunDir(tmp_path / "run")
    role = RoleConfig(backend="hf", model="c")
    summary, records = evaluation.evaluate(cfg, run, role, "alpaca", "iter_0/eval")
    # The vLLM judge is constrained to each rubric's layout: the math question is a pass of its own.
    assert [c["stage"] for c in llm.calls] == ["eval/candidate", "eval/judge", "eval/judge", "eval/judge_retry1"]
    assert [c["rows"] for c in llm.calls[1:3]] == [10, 2]
    assert llm.calls[3] == {"stage": "eval/judge_retry1", "draw": "iter_0/eval/eval/judge_retry1", "rows": 2}
    assert json.loads(run.read_bytes("iter_0/eval/metrics.json"))["rows/eval/judge"] == 12  # one record of both
    assert (
        summary["judged"] == 6 and summary["overall"]["relative_score"] == 24 / 54 and summary["overall"]["loss"] == 6
    )
    assert json.loads(run.read_bytes("iter_0/eval/metrics.json"))["eval/relative_score"] == 24 / 54
    # Again on the same folder (a resumed stage): the candidate's answers are not asked for again.
    llm.calls.clear()
    evaluation.evaluate(cfg, run, role, "alpaca", "iter_0/eval")
    assert [c["stage"] for c in llm.calls] == ["eval/judge", "eval/judge", "eval/judge_retry1"]


class OverflowingJudge(ScriptedRoles):
    """The judge's context overflows when a pair's answers exceed 60 characters together; the
    candidate answers the "tree" question with a runaway answer and fails on "metal"."""

    def replies(self, rows, role_name, draw):
        out = super().replies(rows, role_name, draw)
        for row, reply in zip(rows, out):
            if role_name == "candidate" and "tree" in row["instruction"]:
                reply["text"] = "Candidate answer " + "and on " * 200
            elif role_name == "candidate" and "metal" in row["instruction"]:
                reply.update(error_row(ErrorKind.ENGINE_LOST, "EngineDeadError"))
            elif role_name == "judge" and len(row["first"] + row["second"]) > 60:
                reply.update(
                    error_row(ErrorKind.CONTEXT_OVERFLOW, "VLLMValidationError: maximum context length is 1024")
                )
        return out


def _evaluate(tmp_path, monkeypatch, llm, **eval_cfg):
    from lion_distill.evaluate import evaluation
    from lion_distill.judging import judge
    from tests.fixtures.questions import short_questions

    monkeypatch.setattr(evaluation, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    questions, answers = short_questions(tmp_path)
    cfg = EvalConfig.model_validate(
        {
            "questions": {"files": [questions], "field_map": {"instruction": "text"}},
            "reference": {"answers": answers},
            "judge": {"backend": "openai", "model": "j"},
            **eval_cfg,
        }
    )
    run = RunDir(tmp_path / "run")
    return run, evaluation.evaluate(cfg, run, RoleConfig(backend="hf", model="c"), "alpaca", "iter_0/eval")[0]


def test_judge_failures_caused_by_the_candidate_count_against_it(tmp_path, monkeypatch):
    llm = OverflowingJudge()
    run, summary = _evaluate(tmp_path, monkeypatch, llm, judge_retries=1)
    # The runaway answer overflowed the judge's context: cut to the reference's length, judged, and said so.
    cut = [c for c in llm.calls if c["stage"] == "eval/judge_truncated"]
    assert cut == [{"stage": "eval/judge_truncated", "draw": "iter_0/eval/eval/judge_truncated", "rows": 2}]
    rows = {r["key"]: r for r in run.read_table("iter_0/eval/judgments.parquet").to_pylist()}
    assert rows["4"]["truncated"] is True and rows["4"]["candidate_score"] == 4.0 and rows["4"]["status"] == OK
    # The candidate that could not answer has lost: judged, with the lowest score.
    assert rows["5"]["status"] == OK and rows["5"]["candidate_score"] == 1.0
    assert (summary["questions"], summary["judged"], summary["truncated"], summary["judged_fraction"]) == (6, 6, 1, 1.0)
    assert "1 candidate answers were cut to fit the judge's context" in failure_lines(summary)[0]


def test_too_few_judged_fails_the_evaluation_in_one_line(tmp_path, monkeypatch):
    from lion_distill.errors import TooFewJudged

    class FailingJudge(ScriptedRoles):
        def replies(self, rows, role_name, draw):
            out = super().replies(rows, role_name, draw)
            for row, reply in zip(rows, out):
                if role_name == "judge" and "fruit" in row["instruction"]:
                    reply.update(error_row(*self.failure))
            return out

    FailingJudge.failure = (ErrorKind.BAD_REQUEST, "HTTP 400")  # a request refused: asking again changes nothing
    with pytest.raises(TooFewJudged) as error:
        _evaluate(tmp_path, monkeypatch, FailingJudge(), judge_retries=1)
    message = str(error.value)
    assert "\n" not in message and "scored 5 of 6 questions (83%)" in message and "min_judged_fraction 0.95" in message
    assert "failures: 1 bad_request" in message
    assert not (tmp_path / "run/iter_0/eval/summary.json").exists()  # no score reported
    # One setting away: a lower bar reports the score over the five judged.
    (tmp_path / "lower").mkdir()
    _, summary = _evaluate(tmp_path / "lower", monkeypatch, FailingJudge(), judge_retries=1, min_judged_fraction=0.8)
    assert summary["judged"] == 5 and summary["failed_by_kind"] == {"bad_request": 1}
    # A budget spent is no failure of the judge's: the evaluation stops, and a higher budget goes on.
    from lion_distill.errors import TransientFailures

    FailingJudge.failure = (ErrorKind.BUDGET, "not sent: the role's budget_usd would be exceeded")
    (tmp_path / "spent").mkdir()
    with pytest.raises(TransientFailures, match="eval/judge: 1 of 6 pairs failed .*raise its budget_usd"):
        _evaluate(tmp_path / "spent", monkeypatch, FailingJudge(), judge_retries=1, min_judged_fraction=0.8)
