"""What a user sees of a run: `--help` and `--version`, Ray Data's progress bars in a terminal
(and not in a log), the training line, the run's log in `run_dir/logs/`, and a resumed run
whose config changed since its run directory was made. The training line of a real training is
checked in tests/test_train_ray.py, the run log of a real job in tests/test_lion_e2e.py."""

import fcntl
import io
import json
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from lion_distill.cli import progress_bars
from lion_distill.data import RunDir
from lion_distill.data.rundir import RunLog
from lion_distill.run_config import ConfigChanged, config_changes, store_config
from lion_distill.train.progress import progress_line

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from lion_distill.cli import main; sys.exit(main())"]
DEMOS = {"lion": "demo.yaml", "step_by_step": "step-by-step-demo.yaml", "evaluate": "eval-demo.yaml"}


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=120, **kwargs)


def test_help_and_version_exit_0():
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("lion-distill ") and not version.stderr
    top = _cli("--help")
    assert top.returncode == 0 and "lion-distill {lion|evaluate|step-by-step|distill} --config FILE" in top.stdout
    job = subprocess.run(
        [sys.executable, "jobs/lion.py", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert job.returncode == 0 and "--allow-config-change" in job.stdout and "--quiet" in job.stdout
    assert _cli().returncode == 2  # no job named: the usage, on stderr, as an error


def test_progress_bars_in_a_terminal_only():
    master, slave = pty.openpty()
    with open(slave, "w") as terminal, open(master, "rb"):
        assert progress_bars(verbose=False, quiet=False, stream=terminal)
        assert not progress_bars(verbose=False, quiet=True, stream=terminal)
    assert not progress_bars(verbose=False, quiet=False, stream=io.StringIO())  # a log file, CI's captured stderr
    assert progress_bars(verbose=True, quiet=False, stream=io.StringIO())


def _read_until_exit(proc: subprocess.Popen, master: int, timeout: float) -> str:
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed with the process
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    return out.decode(errors="replace")


@pytest.mark.ray
def test_a_terminal_shows_ray_datas_progress_bars(ray_cluster):
    """The driver's Ray Data pipelines draw their bars on a real terminal (a pty of 120 columns)."""
    script = (
        "from lion_distill.cli import init_ray\n"
        "init_ray(verbose=False)\n"
        "import ray\n"
        "ray.data.range(8, override_num_blocks=2).map_batches(lambda b: b).materialize()\n"
    )
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=slave, stdout=slave, stderr=slave, env=ray_cluster.env, cwd=REPO
    )
    os.close(slave)
    try:
        out = _read_until_exit(proc, master, timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0, out[-2000:]
    assert "Running Dataset" in out and "MapBatches" in out, out[-2000:]


def test_the_training_line():
    line = progress_line("lion-iter0-imitation", 20, 100, 1.23456, 50_000.0, 10.0, 20)
    assert line == "lion-iter0-imitation: step 20/100, loss 1.2346, 5,000 tokens/s, ETA 0m40s"
    # Resumed at step 60: 10 steps in 5 s since, 30 to go.
    assert progress_line("x", 70, 100, 0.5, 1_000.0, 5.0, 10).endswith("200 tokens/s, ETA 0m15s")
    assert progress_line("x", 10, 40_000, 0.5, 1.0, 9.0, 10).endswith("ETA 9h59m")


def test_the_run_log_in_a_local_run_directory(tmp_path):
    run = RunDir(tmp_path / "run")
    log = logging.getLogger("lion_distill.test_run_log")
    handler = RunLog(run, "lion-1.log")
    log.addHandler(handler)
    try:
        log.warning("first line")
        assert (tmp_path / "run" / "logs" / "lion-1.log").read_text() == "first line\n"  # as it comes
        log.warning("second line")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (tmp_path / "run" / "logs" / "lion-1.log").read_text() == "first line\nsecond line\n"


def test_the_run_log_in_an_object_store(s3_bucket):
    run = RunDir(f"{s3_bucket}/runs/logged")
    log = logging.getLogger("lion_distill.test_run_log_s3")
    handler = RunLog(run, "lion-1.log", upload_every_s=0.0)
    log.addHandler(handler)
    try:
        log.warning("first line")
        assert run.read_bytes("logs/lion-1.log") == b"first line\n"  # the whole log, written again
        handler.every = 3600.0
        log.warning("second line")
        assert run.read_bytes("logs/lion-1.log") == b"first line\n"  # not yet: at most every upload_every_s
    finally:
        log.removeHandler(handler)
        handler.close()
    assert run.read_bytes("logs/lion-1.log") == b"first line\nsecond line\n"  # and at the end


def _job(job: str, run_dir: Path, *sets: str):
    import importlib

    from lion_distill.cli import JOBS

    module = importlib.import_module(JOBS[job])
    return module, module.load(str(REPO / "configs" / DEMOS[job]), [f"run_dir={run_dir}", *sets])


# A field of each job's config, the value its run directory was made with, the value now.
CHANGED = {
    "lion": ({"train": {"seed": 7}}, "train.seed: 7 -> 42"),
    "step_by_step": ({"fractions": [0.25]}, "fractions: [0.25] -> [0.5, 1.0]"),
    "evaluate": ({"eval": {"tie_margin": 0.5}}, "eval.tie_margin: 0.5 -> 0.0"),
}


@pytest.mark.parametrize("job", DEMOS)
def test_a_resumed_job_with_another_config_stops_naming_the_fields(job, tmp_path):
    """Every job compares its config with the stored config.json before it starts anything (no
    Ray here: the refusal comes first). A stored config that holds one field is one written by a
    version that had only that field: the others are not compared."""
    module, cfg = _job(job, tmp_path / "run")
    stored, change = CHANGED[job]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigChanged) as refused:
        module.run(cfg)
    assert refused.value.changes == [change]
    message = str(refused.value)
    assert "--allow-config-change" in message and str(tmp_path / "run" / "config.json") in message
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == stored  # left as it was
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]  # and nothing else written


def test_config_changes_compare_sections_field_by_field(tmp_path):
    from lion_distill.config import load_config
    from lion_distill.config.run import RunConfig

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path}"])
    stored = cfg.model_dump(mode="json")
    new = load_config(
        REPO / "configs" / "demo.yaml",
        [f"run_dir={tmp_path}", "teacher.sampling.temperature=0.1", "teacher.engine_kwargs={enforce_eager: true}"],
    ).model_dump(mode="json")
    # A section field by field, a dict of engine arguments as one value.
    assert config_changes(RunConfig, stored, new) == [
        f"teacher.sampling.temperature: {stored['teacher']['sampling']['temperature']} -> 0.1",
        f"teacher.engine_kwargs: {json.dumps(stored['teacher']['engine_kwargs'], sort_keys=True)} -> "
        + '{"enforce_eager": true}',
    ]
    # A field the stored config lacks was added since that run directory was made: not a change.
    lacking = {**stored, "lion": {k: v for k, v in stored["lion"].items() if k != "seed"}}
    assert config_changes(RunConfig, lacking, {**stored, "lion": {**stored["lion"], "seed": 7}}) == []
    # Told the change is meant, the new config replaces the stored one.
    run = RunDir(tmp_path / "run")
    store_config(run, cfg)
    changed = cfg.model_copy(update={"name": "renamed"})
    with pytest.raises(ConfigChanged, match='name: "lion-demo" -> "renamed"'):
        store_config(run, changed)
    assert store_config(run, changed, allow_change=True)["name"] == "renamed" == run.read_json("config.json")["name"]


def test_the_command_line_refuses_a_changed_config_before_ray_starts(tmp_path):
    """`jobs/lion.py` on a run directory made with lion.tau 1.0, now 1.5: exit status 2 and the
    field on stderr, in seconds (no Ray cluster started), the run directory as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"lion": {"tau": 1.0}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "jobs/lion.py", "--config", "configs/demo.yaml", f"--set=run_dir={run}", "--set=lion.tau=1.5"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "lion.tau: 1.0 -> 1.5" in proc.stderr and "--allow-config-change" in proc.stderr
    assert "Ray instance" not in proc.stderr  # refused before any cluster
    assert [p.name for p in run.iterdir()] == ["config.json"]
    assert json.loads((run / "config.json").read_text()) == {"lion": {"tau": 1.0}}
