"""Everything a run will need, checked before it starts or joins a cluster: every problem at
once, one line each, so a run fails in seconds instead of at the stage that needs the thing.

    problems = preflight(cfg)                 # [] when the run can start
    problems += cluster_problems(cfg, ray.cluster_resources())   # once joined

Checks: input files exist and parse (with rows left to use; an evaluation's questions with a
reference answer each, and a student in each Lion run it evaluates); an API role's key variable is
set; a local role's model folder exists (a name that is no folder is said to be a hub name,
which only works where the hub is reachable); the run directory is writable; the experiment
tracker can start (installed, credentials, its folder writable or its server answering).
"""
from __future__ import annotations

import os
import uuid
from typing import Iterator

from pydantic import BaseModel

from engine.config.evaluate import EvalConfig
from engine.config.models import DataConfig, RoleConfig, TrackingConfig


def roles(cfg: BaseModel, prefix: str = "") -> Iterator[tuple[str, RoleConfig]]:
    """Every RoleConfig in a config, however nested, by its dotted field name."""
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, RoleConfig):
            yield prefix + name, value
        elif isinstance(value, BaseModel):
            yield from roles(value, f"{prefix}{name}.")
        elif isinstance(value, list):  # the evaluation's candidates
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from roles(item, f"{prefix}{name}[{i}].")


def _sections(cfg: BaseModel, kind: type) -> Iterator[tuple[str, BaseModel]]:
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, kind):
            yield name, value


def role_problems(name: str, role: RoleConfig, env=os.environ) -> list[str]:
    if role.backend == "openai":
        from engine.llm.openai_client import resolve_api_key

        try:
            resolve_api_key(role, env)
        except ValueError as e:
            return [f"{name}.{e}"]
        return []
    if os.path.isdir(role.model):
        return []
    if role.model.startswith((".", "/", "~")) or os.sep in role.model.strip("/").split("/", 1)[-1]:
        return [f"{name}.model: {role.model!r} does not exist (a local model folder was expected)"]
    return [f"{name}.model: {role.model!r} is no local folder, so it is a model hub name: the run needs the hub "
            "(and HF_HUB_OFFLINE unset) on every node, or a local path"]


def data_problems(name: str, data: DataConfig) -> list[str]:
    from engine.data import PoolFileError, load_pool

    problems = [f"{name}.pool_files: {path}: file not found" for path in data.pool_files if not os.path.exists(path)]
    if problems:
        return problems
    try:
        _, report = load_pool(data.pool_files, data.field_map, data.max_instruction_chars)
    except PoolFileError as e:
        return [f"{name}.pool_files: {e}"]
    if not report.rows_kept:
        return [f"{name}.pool_files: no usable instructions ({dict(report.rejects)})"]
    return []


def eval_problems(name: str, cfg: EvalConfig) -> list[str]:
    """Questions that load, a reference answer for each, and a student in every Lion run named."""
    from engine.data import PoolFileError
    from engine.evaluate.job import CandidateError, candidate_role
    from engine.evaluate.questions import EvalDataError, load_questions, read_reference_answers

    problems = []
    try:
        questions = load_questions(cfg.questions, cfg.seed)[0]
        if cfg.reference.answers is not None:
            read_reference_answers(cfg.reference, questions)
    except (PoolFileError, EvalDataError) as e:
        problems.append(f"{name}: {e}")
    for i, candidate in enumerate(cfg.candidates):
        if candidate.lion_run is not None:
            try:
                candidate_role(candidate)
            except CandidateError as e:
                problems.append(f"{name}.candidates[{i}]: {e}")
    return problems


def run_dir_problems(run_dir: str) -> list[str]:
    if "://" in run_dir:
        return []  # a remote filesystem: its credentials are checked by its first write
    probe = os.path.join(run_dir, f".preflight-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return [f"run_dir: {run_dir} is not writable ({e.strerror or e})"]
    return []


def preflight(cfg: BaseModel, env=os.environ) -> list[str]:
    """Every problem that would stop the run, one line each; [] when it can start."""
    problems = []
    for name, data in _sections(cfg, DataConfig):
        problems += data_problems(name, data)
    for name, evaluation in _sections(cfg, EvalConfig):
        problems += eval_problems(name, evaluation)
    for name, role in roles(cfg):
        problems += role_problems(name, role, env)
    if getattr(cfg, "run_dir", None):
        problems += run_dir_problems(cfg.run_dir)
    for name, settings in _sections(cfg, TrackingConfig):
        from engine.metrics.tracking import problems as tracking_problems

        problems += tracking_problems(name, settings, cfg.run_dir, env)
    return problems


def cluster_problems(cfg: BaseModel, resources: dict) -> list[str]:
    """What the joined cluster lacks: GPUs for training workers and, where the cluster has GPUs
    (local roles run on CPU otherwise), for the largest local role (tensor parallel x replicas;
    stages run one at a time)."""
    gpus, cpus, problems = resources.get("GPU", 0), resources.get("CPU", 0), []
    train = getattr(cfg, "train", None)
    if train is not None and train.gpus_per_worker:
        need = train.num_workers * train.gpus_per_worker
        if need > gpus:
            problems.append(f"train: {train.num_workers} workers x {train.gpus_per_worker:g} GPUs need {need:g} GPUs; "
                            f"the cluster has {gpus:g}")
    if train is not None and train.num_workers > cpus:
        problems.append(f"train.num_workers: {train.num_workers} workers need a CPU each; the cluster has {cpus:g}")
    if gpus:
        for name, role in roles(cfg):
            p = role.parallelism
            need = p.tensor_parallel_size * p.replicas if role.backend != "openai" else 0
            if need > gpus:
                problems.append(f"{name}.parallelism: tensor_parallel_size {p.tensor_parallel_size} x replicas "
                                f"{p.replicas} need {need} GPUs; the cluster has {gpus:g}")
    return problems
