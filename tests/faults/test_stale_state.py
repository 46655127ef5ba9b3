"""A killed driver's detached state actor outlives it; a fresh run directory on that cluster (the
old one deleted to start over) starts at the first stage, the old actor refused, never reused."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import sys, time
import ray
from lion_distill.data import RunDir
from lion_distill.runner import Stage, StageResult, run_stages

ray.init(log_to_driver=False)
run, ran, block = RunDir(sys.argv[1]), sys.argv[2], sys.argv[3] == "block"

def stage(name, wait=False):
    def fn(state):
        with open(ran, "a") as f:
            f.write(name + "\\n")
        while wait:  # the kill comes here
            time.sleep(1)
        run.write_json(f"{name}.json", {"done": True})
        return StageResult(outputs={name: True})
    return Stage(name, fn)

state = run_stages(run, job="faults", name="stale", stages=[stage("first"), stage("second", block)])
print("DONE", state["completed"], flush=True)
"""


def _driver(ray_cluster, run: Path, ran: Path, block: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-c", DRIVER, str(run), str(ran), "block" if block else "go"]
    env = {**ray_cluster.env, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_fresh_run_directory_after_a_killed_driver_starts_at_the_first_stage(ray_cluster, tmp_path):
    import ray

    run, ran = tmp_path / "run", tmp_path / "ran.log"
    first = _driver(ray_cluster, run, ran, block=True)
    deadline = time.monotonic() + 180
    while not (run / "first.json").exists() or "second" not in (ran.read_text() if ran.exists() else ""):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    old_run = json.loads((run / "state.json").read_text())["run_id"]
    leftover = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if old_run[:12] in a["name"]]
    assert len(leftover) == 1  # the killed driver's state actor, detached, still holds its state

    shutil.rmtree(run)  # start over
    ran.unlink()
    again = _driver(ray_cluster, run, ran, block=False)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert ran.read_text().splitlines() == ["first", "second"]  # from the first stage, not the old state's next
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["first", "second"] and state["run_id"] != old_run
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if old_run[:12] in a["name"]]
