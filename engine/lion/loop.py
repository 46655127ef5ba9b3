"""The Lion loop: iterations of imitation -> discrimination -> generation, resumable.

    state = run_lion(load_config("configs/demo.yaml"))   # with Ray initialised

Re-running on an existing run directory continues after the last completed stage:
finished stages are not recomputed, and within an interrupted stage the openai
backend's response cache means no paid request is sent twice.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from engine.config import RunConfig
from engine.data import RunDir, load_pool, write_pool
from engine.lion.discrimination import discrimination
from engine.lion.generation import generation
from engine.lion.imitation import imitation
from engine.lion.iteration import rel
from engine.lion.report import write_report
from engine.lion.state import driver, fresh_state, next_step

log = logging.getLogger("engine.lion")

STAGE_FUNCTIONS = {"imitation": imitation, "discrimination": discrimination, "generation": generation}


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Local model paths and pool files as absolute paths: Ray workers do not share the
    job's working directory."""
    roles = {}
    for name in cfg.ROLES:
        role = getattr(cfg, name)
        if os.path.exists(role.model):
            roles[name] = role.model_copy(update={"model": os.path.abspath(role.model)})
    data = cfg.data.model_copy(update={"pool_files": [os.path.abspath(p) for p in cfg.data.pool_files]})
    run_dir = cfg.run_dir if "://" in cfg.run_dir else os.path.abspath(cfg.run_dir)
    return cfg.model_copy(update={**roles, "data": data, "run_dir": run_dir})


def seed_pools(cfg: RunConfig, run: RunDir) -> None:
    """Iteration 0 starts with train pool = cache pool = the seed instructions."""
    if run.exists(rel(0, "cache_pool.parquet")):
        return
    pool, report = load_pool(cfg.data.pool_files, cfg.data.field_map, cfg.data.max_instruction_chars)
    summary = report.as_dict()
    if cfg.data.sample_size and cfg.data.sample_size < pool.num_rows:
        picks = np.sort(np.random.default_rng(cfg.lion.seed).choice(pool.num_rows, cfg.data.sample_size, replace=False))
        pool = pool.take(picks)
        summary["sampled"] = pool.num_rows
    if not pool.num_rows:
        raise ValueError(f"no usable instructions in {cfg.data.pool_files}: {summary['rejects']}")
    log.info("seed pool: %d rows in, %d kept, rejects %s", report.rows_in, report.rows_kept, dict(report.rejects))
    run.write_json("data_report.json", summary)
    write_pool(run, rel(0, "train_pool.parquet"), pool)
    write_pool(run, rel(0, "cache_pool.parquet"), pool)


def run_lion(cfg: RunConfig) -> dict:
    import ray

    cfg = absolute_paths(cfg)
    run = RunDir(cfg.run_dir)
    # The resolved config holds the *names* of key variables, never their values.
    run.write_json("config.json", cfg.model_dump(mode="json"))
    seed_pools(cfg, run)
    actor = driver(run.uri, fresh_state(cfg.name, cfg.student.model, cfg.lion.iterations))
    state = ray.get(actor.set_iterations.remote(cfg.lion.iterations))
    if state["completed"]:
        log.info("resuming %s at %s", run.uri, next_step(state))
    while (step := next_step(state)) is not None:
        k, stage = step
        log.info("iteration %d/%d: %s", k + 1, state["iterations"], stage)
        outputs, counters, summary = STAGE_FUNCTIONS[stage](cfg, run, k, state["student_model"])
        state = ray.get(actor.complete.remote(k, stage, outputs, counters, summary))
        write_report(run)
    ray.kill(actor)
    log.info("done: student %s; report %s", state["student_model"], run.path("report.md"))
    return state
