"""One stage runner for every job: a job is an ordered list of named stages over a run directory.

    stages = [Stage("rationales", make_rationales), Stage("train/step_by_step/0.5", train_half)]
    state = run_stages(RunDir("runs/x"), job="step_by_step", name="x", stages=stages, report=write_report)

A stage function gets the current state (read only), does its work, writes its own outputs into the
run directory, and returns a StageResult. A detached driver actor, one per run directory, is the
single writer of `state.json` and records each stage as complete only after it returns; a re-run on
the same run directory skips the completed stages, so a killed job resumes after the last one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lion_distill.config.models import TrackingConfig
from lion_distill.data import RunDir
from lion_distill.data.rundir import FORMAT, format_problem
from lion_distill.driver_node import on_driver_node
from lion_distill.errors import RunDirFormatError, StageError
from lion_distill.memory import give_back_memory
from lion_distill.metrics import tracking

log = logging.getLogger("lion_distill")

STATE_FILE = "state.json"


@dataclass
class StageResult:
    outputs: dict = field(default_factory=dict)  # merged into state["outputs"], e.g. {"student_model": path}
    counters: dict = field(default_factory=dict)  # summed into state["counters"]: rows, tokens, api_requests, cost_usd
    summary: dict = field(default_factory=dict)  # merged into state["summary"][group]


@dataclass(frozen=True)
class Stage:
    name: str  # unique within the job, path-like: "iter_0/imitation", "rationales", "train/step_by_step/0.25"
    fn: Callable[[dict], StageResult]
    group: str | None = None  # the summary bucket; default: the name's first path component

    @property
    def bucket(self) -> str:
        return self.group or self.name.split("/", 1)[0]


def fresh_state(job: str, name: str, outputs: dict | None = None) -> dict:
    return {
        "version": FORMAT,
        "job": job,
        "name": name,
        "stages": [],
        "completed": [],
        "outputs": dict(outputs or {}),
        "counters": {},
        "summary": {},
        "done": False,
    }


def next_stage(state: dict) -> str | None:
    """The first planned stage not yet complete; None when the job is finished."""
    return next((s for s in state["stages"] if s not in state["completed"]), None)


def plan_stages(state: dict, stages: list[str]) -> dict:
    """A state whose plan is `stages`. A re-run may plan more (or fewer) stages than the run began
    with, e.g. more Lion iterations; what is already complete must stay a prefix of the plan."""
    if len(set(stages)) != len(stages):
        raise ValueError(f"stage names must be unique: {stages}")
    done = [s for s in state["completed"] if s in stages]
    if done != stages[: len(done)]:
        raise RuntimeError(
            f"the completed stages {done} are not the start of the planned {stages}: "
            "this run directory was made with a different config"
        )
    new = {**state, "stages": list(stages)}
    new["done"] = next_stage(new) is None
    return new


def checked(stage: str, result) -> StageResult:
    """A stage's return, held to the one contract every job's stages keep (docs/design.md)."""
    if not isinstance(result, StageResult):
        raise TypeError(
            f"stage {stage} returned {type(result).__name__}: a stage returns lion_distill.runner.StageResult"
        )
    return result


def record_stage(state: dict, stage: str, bucket: str, result: StageResult) -> dict:
    """A new state with `stage` complete. Completing out of order is a bug."""
    if next_stage(state) != stage:
        raise RuntimeError(f"stage {stage!r} completed out of order; next is {next_stage(state)!r}")
    counters = dict(state["counters"])
    for key, value in result.counters.items():
        counters[key] = counters.get(key, 0) + value
    summary = {**state["summary"], bucket: {**state["summary"].get(bucket, {}), **result.summary}}
    new = {
        **state,
        "completed": [*state["completed"], stage],
        "outputs": {**state["outputs"], **result.outputs},
        "counters": counters,
        "summary": summary,
    }
    new["done"] = next_stage(new) is None
    return new


class Driver:
    """Single writer of `state.json`; run as a detached named Ray actor (see `driver`)."""

    def __init__(self, run_uri: str, initial: dict):
        self.run = RunDir(run_uri)
        self.state = self._read() or initial
        self.run.write_json(STATE_FILE, self.state)

    def _read(self) -> dict | None:
        return check_format(self.run)

    def reload(self) -> dict:
        # The run directory is the source of truth: a detached actor from an earlier job may
        # hold a state that someone has since moved or deleted on disk.
        self.state = self._read() or self.state
        return self.state

    def plan(self, stages: list[str]) -> dict:
        self.state = plan_stages(self.state, stages)
        self.run.write_json(STATE_FILE, self.state)
        return self.state

    def complete(self, stage: str, bucket: str, result: StageResult) -> dict:
        self.state = record_stage(self.state, stage, bucket, result)
        self.run.write_json(STATE_FILE, self.state)
        return self.state


def check_format(run: RunDir) -> dict | None:
    """The run directory's state (None when new); RunDirFormatError, in one line, when another
    format's (lion_distill.data.rundir.format_problem): this version neither resumes nor exports it."""
    state = run.read_json(STATE_FILE)
    problem = format_problem(state, run.uri_of(STATE_FILE))
    if problem:
        raise RunDirFormatError(problem)
    return state


def driver(run: RunDir, initial: dict):
    """Get or start the run's driver actor: one per run directory per cluster, on the driver's node."""
    import ray

    name = "driver-" + hashlib.sha256(run.uri.encode()).hexdigest()[:12]
    actor = (
        ray.remote(num_cpus=0)(Driver)
        .options(name=name, namespace="lion-distill", lifetime="detached", get_if_exists=True, **on_driver_node())
        .remote(run.uri, initial)
    )
    ray.get(actor.reload.remote())
    return actor


def run_stages(
    run: RunDir,
    *,
    job: str,
    name: str,
    stages: list[Stage],
    outputs: dict | None = None,
    report: Callable[[RunDir], object] | None = None,
    tracking_cfg: TrackingConfig | None = None,
    config: dict | None = None,
) -> dict:
    """Run the stages not yet complete, in order; call report(run) after each; return the final state.

    `outputs` seeds state["outputs"] on a fresh run (e.g. the base student's path); on a resumed run
    the recorded outputs win. A stage that raises leaves the run resumable at that stage: its error
    goes up to the caller, named. `tracking_cfg`: each stage's figures, the resolved `config` and the
    reports go to the experiment tracker too (lion_distill.metrics.tracking)."""
    import ray

    check_format(run)  # here, on the driver: inside the actor it would surface as the actor's death
    actor = driver(run, fresh_state(job, name, outputs))
    tracker, failed = None, True
    try:
        tracker = tracking.open_tracker(tracking_cfg, run, name)
        if tracker is not None and config is not None:
            tracking.log_config(tracker, config)
        state = ray.get(actor.plan.remote([s.name for s in stages]))
        if state["completed"]:
            log.info("%s: resuming %s at %s", job, run.uri, next_stage(state))
        for index, stage in enumerate(stages):
            if stage.name in state["completed"]:
                continue
            log.info("%s: stage %s", job, stage.name)
            try:
                with tracking.active(tracker):  # the stage's training runs log their curves into it
                    result = checked(stage.name, stage.fn(state))
            except Exception as exc:
                raise StageError(stage.name, exc) from exc
            state = ray.get(actor.complete.remote(stage.name, stage.bucket, result))
            if tracker is not None:
                tracking.log_stage(tracker, run, stage.name, index, result.summary)
            if report is not None:
                with tracking.active(tracker):  # its plots go to the tracker as they are saved
                    path = report(run)
                if tracker is not None:
                    tracking.log_report(tracker, run, path)
            give_back_memory()  # what the stage and its report freed: the next stage starts without it
        failed = False
        return state
    finally:
        ray.kill(actor)
        if tracker is not None:
            tracker.close(failed)
