"""What every job that trains a student from a pool reads first, the same way: its paths made
absolute (Ray workers do not share the job's working directory) and its pool, sampled if asked.
Lion (lion_distill.lion.loop) and the distill job (lion_distill.distill.job) both start here."""

from __future__ import annotations

import logging
import os

import numpy as np

from lion_distill.config.models import DataConfig
from lion_distill.data import load_pool
from lion_distill.evaluate.job import absolute_paths as eval_absolute_paths

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
