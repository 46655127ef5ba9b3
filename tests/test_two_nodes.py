"""A real two-node cluster (tests/fixtures/two_nodes.py): a 0-CPU head and one worker raylet.

- The demo's Lion iteration submitted as a user does, `ray job submit --working-dir .`: it
  finishes, the run directory is complete, and everything that needs a CPU (every actor that
  asks for one, every Ray Train worker) ran on the worker node; only actors that need nothing
  (Ray's and the job's bookkeeping) may sit with the driver, on the head.
- A run directory the worker node cannot see stops the job before any stage, with one line
  naming that node.
"""

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_lion_e2e import REPO, check_run_dir, overrides


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def test_ray_job_submit_runs_a_lion_iteration_on_the_worker_node(two_nodes, vllm_server, tmp_path):
    run = tmp_path / "submitted"
    entry = [
        "python",
        "jobs/lion.py",
        "--config",
        "configs/demo.yaml",
        *(f"--set={s}" for s in overrides(run, vllm_server, iterations=1, sample=8, new=2)),
        "--set=lion.final_imitation=false",
    ]
    proc = two_nodes.cluster.submit(entry)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    check_run_dir(run, iterations=1, final_imitation=False)

    dashboard = two_nodes.cluster.dashboard_url
    submission = re.search(r"raysubmit_\w+", proc.stdout)[0]
    driver_node = _get(f"{dashboard}/api/jobs/{submission}")["driver_node_id"]
    assert driver_node == two_nodes.head_node_id  # `ray job submit` runs the driver on the head, as on a real cluster
    actors = _get(f"{dashboard}/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
    ours = [a for a in actors if a["class_name"] != "JobSupervisor"]  # Ray's own: it runs the entrypoint
    train_workers = [a for a in ours if "TrainWorker" in a["class_name"]]
    assert train_workers and {a["node_id"] for a in train_workers} == {two_nodes.worker_node_id}
    for actor in ours:
        # `node:...` resources pin an actor to a node (Ray's PlacementGroupCleaner to the head): no compute.
        needs = {k: v for k, v in (actor.get("required_resources") or {}).items() if v and not k.startswith("node:")}
        assert actor["node_id"] == two_nodes.worker_node_id or (not needs and actor["node_id"] == driver_node), actor


def test_a_run_directory_one_node_cannot_see_stops_the_job(two_nodes, tmp_path):
    if two_nodes.hidden is None:
        pytest.skip(
            "no `unshare -m` here: a folder that one node of a one-machine cluster cannot see needs a mount namespace"
        )
    run = two_nodes.hidden / "run"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "lion.py"),
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--set=run_dir={run}",
    ]
    begin = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=two_nodes.cluster.env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    problems = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("run_dir:")]
    assert problems == [
        f"run_dir: {run} is not shared: node {two_nodes.worker_ip} ({two_nodes.worker_node_id[:12]}) cannot see "
        "the marker the driver wrote there; mount it on every node (a shared filesystem) or use an "
        "object store URI (s3://...)"
    ], proc.stderr[-3000:]
    assert not (run / "state.json").exists() and [p.name for p in run.iterdir()] == []  # the marker is gone again
    assert time.monotonic() - begin < 120
