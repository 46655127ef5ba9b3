"""What every job that trains a student from a pool does the same way: its paths made absolute (Ray
workers do not share the job's working directory), its pool, sampled if asked, its student's format
fixed, and its stages run on the shared runner inside the job's warm engines.
Lion (lion_distill.lion.loop) and the distill job (lion_distill.distill.job) both start here."""

from __future__ import annotations

import logging
import os

import numpy as np

from lion_distill.config.models import DataConfig
from lion_distill.data import load_pool
from lion_distill.evaluate.job import absolute_paths as eval_absolute_paths
from lion_distill.llm.prompts import prompt_format

log = logging.getLogger("lion_distill")


def absolute_paths(cfg):
    """A job config (ROLES, data, run_dir, eval) with local model paths and pool files absolute."""
    roles = {}
    for name in cfg.ROLES:
        role = getattr(cfg, name)
        if os.path.exists(role.model):
            roles[name] = role.model_copy(update={"model": os.path.abspath(role.model)})
    sources = [
        s.model_copy(update={"data_files": [os.path.abspath(f) for f in s.data_files]}) for s in cfg.data.datasets
    ]
    data = cfg.data.model_copy(
        update={"pool_files": [os.path.abspath(p) for p in cfg.data.pool_files], "datasets": sources}
    )
    run_dir = cfg.run_dir if "://" in cfg.run_dir else os.path.abspath(cfg.run_dir)
    evaluation = cfg.eval and eval_absolute_paths(cfg.eval)
    return cfg.model_copy(update={**roles, "data": data, "run_dir": run_dir, "eval": evaluation})


def sampled_pool(data: DataConfig, seed: int):
    """-> (the pool's instructions, their load report as a dict): the pool files, a seeded sample of
    `data.sample_size` of them if asked."""
    pool, report = load_pool(data.pool_files, data.field_map, data.max_instruction_chars, data.sources(), reuse=False)
    summary = report.as_dict()
    if data.sample_size and data.sample_size < pool.num_rows:
        picks = np.sort(np.random.default_rng(seed).choice(pool.num_rows, data.sample_size, replace=False))
        pool = pool.take(picks)
        summary["sampled"] = pool.num_rows
    if not pool.num_rows:
        raise ValueError(f"no usable instructions in {data.pool_files + data.sources()}: {summary['rejects']}")
    log.info("pool: %d rows in, %d kept, rejects %s", report.rows_in, report.rows_kept, dict(report.rejects))
    return pool, summary


def with_prompt_format(cfg):
    """A job config with its student's format fixed for the run, from the base student (its export may carry a
    template of its own: lion_distill.train.card)."""
    return cfg.model_copy(
        update={"student": cfg.student.model_copy(update={"prompt_format": prompt_format(cfg.student)})}
    )


def run_with_engines(cfg, rundir, *, job: str, roles: dict, stages: list, report, config: dict) -> dict:
    """The job's stages on the shared runner (lion_distill.runner), inside the engines its roles share
    for the whole job (lion_distill.llm.serving) -> the run's state."""
    from lion_distill.llm.serving import job_engines
    from lion_distill.runner import run_stages

    with job_engines(
        roles,
        cfg.serving,
        run_id=rundir.uri,
        train_workers=cfg.train.num_workers,
        gpus_per_worker=cfg.train.gpus_per_worker,
    ):
        return run_stages(
            rundir,
            job=job,
            name=cfg.name,
            stages=stages,
            outputs={"student_model": cfg.student.model},
            report=report,
            tracking_cfg=cfg.tracking,
            config=config,
            call_timeout_s=cfg.serving.call_timeout_s,
        )
