"""One stage runner for every job: a job is an ordered list of named stages over a run directory.

    stages = [Stage("rationales", make_rationales), Stage("train/step_by_step/0.5", train_half)]
    state = run_stages(RunDir("runs/x"), job="step_by_step", name="x", stages=stages, report=write_report)

A stage function gets the current state (read only), does its work, writes its own outputs into the
run directory, and returns a StageResult. A detached driver actor, one per run directory, is the
single writer of `state.json` and records each stage as complete only after it returns; a re-run on
the same run directory skips the completed stages, so a killed job resumes after the last one. A
stage's `cleanup` (what it made and no longer needs: training checkpoints) runs only once the stage
is recorded, and again on every later run (it is idempotent), so a kill midway through it leaves a
complete stage with some files left to remove, never a stage that needs what was removed.

The state belongs to its directory: `state.json` names the run (`run_id`, made when the directory's
state is first written), and the driver actor is bound to that run. An actor left by a killed job
(detached actors outlive their driver) is reused only for the same run; for a new directory (its
state deleted, say, to start over) or another run it is refused and a new one reads the directory.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lion_distill.config.models import TrackingConfig
from lion_distill.crashpoints import crash_point
from lion_distill.data import RunDir
from lion_distill.data.rundir import FORMAT, format_problem
from lion_distill.driver_node import on_driver_node
from lion_distill.errors import RunDirFormatError, StageError, StateFileError
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
    cleanup: Callable[[], None] | None = None  # idempotent; run once the stage is recorded, and on later runs

    @property
    def bucket(self) -> str:
        return self.group or self.name.split("/", 1)[0]


def fresh_state(job: str, name: str, outputs: dict | None = None) -> dict:
    return {
        "version": FORMAT,
        "run_id": uuid.uuid4().hex,
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


def check_format(run: RunDir) -> dict | None:
    """The run directory's state (None when new), read where a run begins: on the driver, not inside
    the actor, where it would surface as the actor's death. One line for a file that cannot be used:
    StateFileError when it is not a state at all, RunDirFormatError when it is another format's
    (lion_distill.data.rundir.format_problem): this version neither resumes nor exports it."""
    where = run.uri_of(STATE_FILE)
    try:
        state = run.read_json(STATE_FILE)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateFileError(
            f"{where}: not readable as a run's state ({type(e).__name__}: {str(e)[:80]}); "
            "restore it from a copy, or start a new run directory"
        ) from None
    if state is not None and not isinstance(state, dict):
        raise StateFileError(
            f"{where}: holds a JSON {type(state).__name__}, not a run's state; start a new run directory"
        )
    problem = format_problem(state, where)
    if problem:
        raise RunDirFormatError(problem)
    return state


class Driver:
    """Single writer of `state.json`, bound to one run (`run_id`); run as a detached named Ray actor
    (see `driver`)."""

    def __init__(self, run_uri: str, initial: dict):
        self.run = RunDir(run_uri)
        self.run_id = initial["run_id"]
        state = check_format(self.run)
        if state is None:  # a new directory: its run begins here
            self.state = initial
        else:
            # A state of an older run of this engine without an id is adopted by this one.
            self.state = {**state, "run_id": state.get("run_id") or self.run_id}
            self._check(self.state)
        self.run.write_json(STATE_FILE, self.state)

    def _check(self, state: dict | None) -> dict:
        if state is None or state.get("run_id") != self.run_id:
            found = "no state" if state is None else f"run {state.get('run_id')}"
            raise StateFileError(
                f"{self.run.path(STATE_FILE)}: holds {found}, not run {self.run_id} this driver was started "
                "for: the directory was deleted or replaced while the run was going on"
            )
        return state

    def reload(self) -> dict:
        # The run directory is the source of truth: never the actor's memory over it.
        self.state = self._check(check_format(self.run))
        return self.state

    def plan(self, stages: list[str]) -> dict:
        self.state = plan_stages(self.reload(), stages)
        self.run.write_json(STATE_FILE, self.state)
        return self.state

    def complete(self, stage: str, bucket: str, result: StageResult) -> dict:
        self.state = record_stage(self.reload(), stage, bucket, result)
        self.run.write_json(STATE_FILE, self.state)
        return self.state


NAMESPACE = "lion-distill"
ACTOR_PREFIX = "driver-"
ACTOR_CALL_TIMEOUT_S = 120.0  # a call to the driver actor (ServingConfig.call_timeout_s's default)


def actor_name(run: RunDir, run_id: str) -> str:
    return f"{ACTOR_PREFIX}{hashlib.sha256(run.uri.encode()).hexdigest()[:12]}-{run_id[:12]}"


def driver(run: RunDir, initial: dict, timeout_s: float = ACTOR_CALL_TIMEOUT_S):
    """Start, or get, the run's driver actor, on the driver's node: one per run directory and run.
    Actors of this directory bound to other runs (left by killed jobs) are refused: killed, never
    asked. Only one job runs on a run directory (lion_distill.joblock), so no other job uses them."""
    import ray

    state = check_format(run)
    run_id = initial["run_id"] if state is None or not state.get("run_id") else state["run_id"]
    name = actor_name(run, run_id)
    directory = name[: len(ACTOR_PREFIX) + 12]
    for other in ray.util.list_named_actors(all_namespaces=True):
        if other["namespace"] == NAMESPACE and other["name"].startswith(directory) and other["name"] != name:
            try:
                ray.kill(ray.get_actor(other["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone meanwhile
                continue
            log.info("%s: refused the driver actor %s of another run", run.uri, other["name"])
    actor = (
        ray.remote(num_cpus=0)(Driver)
        .options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, **on_driver_node())
        .remote(run.uri, {**initial, "run_id": run_id})
    )
    ray.get(actor.reload.remote(), timeout=timeout_s)
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
    call_timeout_s: float = ACTOR_CALL_TIMEOUT_S,
) -> dict:
    """Run the stages not yet complete, in order; call report(run) after each; return the final state.

    `outputs` seeds state["outputs"] on a fresh run (e.g. the base student's path); on a resumed run
    the recorded outputs win. A stage that raises leaves the run resumable at that stage: its error
    goes up to the caller, named. `tracking_cfg`: each stage's figures, the resolved `config` and the
    reports go to the experiment tracker too (lion_distill.metrics.tracking). `call_timeout_s`: the
    deadline of each call to the driver actor (`serving.call_timeout_s`)."""
    import ray

    actor = driver(run, fresh_state(job, name, outputs), call_timeout_s)
    tracker, failed = None, True
    try:
        tracker = tracking.open_tracker(tracking_cfg, run, name)
        if tracker is not None and config is not None:
            tracking.log_config(tracker, config)
        state = ray.get(actor.plan.remote([s.name for s in stages]), timeout=call_timeout_s)
        if state["completed"]:
            log.info("%s: resuming %s at %s", job, run.uri, next_stage(state))
        for index, stage in enumerate(stages):
            if stage.name in state["completed"]:
                if stage.cleanup is not None:  # a kill may have cut it short last time
                    stage.cleanup()
                continue
            log.info("%s: stage %s", job, stage.name)
            try:
                with tracking.active(tracker):  # the stage's training runs log their curves into it
                    result = checked(stage.name, stage.fn(state))
            except Exception as exc:
                raise StageError(stage.name, exc) from exc
            crash_point("stage-done")  # the stage's outputs are written, its completion is not
            state = ray.get(actor.complete.remote(stage.name, stage.bucket, result), timeout=call_timeout_s)
            if stage.cleanup is not None:
                stage.cleanup()
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
