"""The min-max loop's state, and the driver actor that owns it.

The state says which stages of which iteration are complete, where the current
student checkpoint is, and the running counters. `state.json` in the run directory
is its durable copy, rewritten atomically after every stage; the actor reloads it
when started, so `jobs/lion.py` on an existing run directory resumes from the last
completed stage (a detached actor outlives a job but not a cluster restart).
"""
from __future__ import annotations

import hashlib

from engine.data import RunDir

STAGES = ("imitation", "discrimination", "generation")
STATE_FILE = "state.json"
COUNTERS = ("rows", "prompt_tokens", "completion_tokens", "api_requests", "cost_usd")


def fresh_state(name: str, student_model: str, iterations: int) -> dict:
    return {
        "name": name,
        "iterations": iterations,
        "completed": {},  # "k" -> stages done in iteration k, in order
        "student_model": student_model,  # the checkpoint the next imitation starts from
        "counters": {c: 0 for c in COUNTERS},
        "iteration_summary": {},  # "k" -> hard_fraction, mean_gap, new_instructions, ...
        "done": False,
    }


def next_step(state: dict) -> tuple[int, str] | None:
    """The first stage not yet complete, in loop order; None when the run is finished."""
    for k in range(state["iterations"]):
        done = state["completed"].get(str(k), [])
        for stage in STAGES:
            if stage not in done:
                return k, stage
    return None


def record_stage(state: dict, k: int, stage: str, outputs: dict, counters: dict, summary: dict) -> dict:
    """A new state with `stage` of iteration `k` complete. Completing out of order is a bug."""
    if next_step(state) != (k, stage):
        raise RuntimeError(f"stage {stage!r} of iteration {k} completed out of order; next is {next_step(state)}")
    new = {**state, "completed": {**state["completed"]}, "counters": {**state["counters"]},
           "iteration_summary": {**state["iteration_summary"]}}
    new["completed"][str(k)] = [*state["completed"].get(str(k), []), stage]
    new.update(outputs)
    for name, value in counters.items():
        new["counters"][name] = new["counters"].get(name, 0) + value
    new["iteration_summary"][str(k)] = {**state["iteration_summary"].get(str(k), {}), **summary}
    new["done"] = next_step(new) is None
    return new


class LionDriver:
    """Single writer of `state.json`; run as a detached named Ray actor (see `driver`)."""

    def __init__(self, run_uri: str, initial: dict):
        self.run = RunDir(run_uri)
        self.state = self.run.read_json(STATE_FILE) or initial
        self.run.write_json(STATE_FILE, self.state)

    def reload(self) -> dict:
        # The run directory is the source of truth: a detached actor from an earlier
        # job may hold a state that someone has since moved or deleted on disk.
        self.state = self.run.read_json(STATE_FILE) or self.state
        return self.state

    def get(self) -> dict:
        return self.state

    def set_iterations(self, iterations: int) -> dict:
        """A re-run may ask for more (or fewer) iterations than the run began with."""
        self.state = {**self.state, "iterations": iterations}
        self.state["done"] = next_step(self.state) is None
        self.run.write_json(STATE_FILE, self.state)
        return self.state

    def complete(self, k: int, stage: str, outputs: dict, counters: dict, summary: dict) -> dict:
        self.state = record_stage(self.state, k, stage, outputs, counters, summary)
        self.run.write_json(STATE_FILE, self.state)
        return self.state


def driver(run_uri: str, initial: dict):
    """Get or start the run's driver actor: one per run directory per cluster."""
    import ray

    name = "lion-driver-" + hashlib.sha256(run_uri.encode()).hexdigest()[:12]
    actor = ray.remote(num_cpus=0)(LionDriver).options(
        name=name, namespace="lion", lifetime="detached", get_if_exists=True
    ).remote(run_uri, initial)
    ray.get(actor.reload.remote())
    return actor
