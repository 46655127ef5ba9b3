"""The Lion loop: iterations of imitation -> discrimination -> generation, on the shared stage runner.

    state = run(load("configs/demo.yaml", []))   # with Ray initialised

Re-running on an existing run directory continues after the last completed stage:
finished stages are not recomputed, and within an interrupted stage the openai
backend's response cache means no paid request is sent twice.
"""

from __future__ import annotations

import logging
from functools import partial

from lion_distill.config import RunConfig, load_config
from lion_distill.data import RunDir, write_pool
from lion_distill.distill.teacher import with_teacher_logprobs
from lion_distill.evaluate.evaluation import evaluate
from lion_distill.evaluate.scores import headline
from lion_distill.job_inputs import absolute_paths, run_with_engines, sampled_pool, with_prompt_format
from lion_distill.lion.discrimination import discrimination
from lion_distill.lion.export import export_run
from lion_distill.lion.generation import generation
from lion_distill.lion.imitation import imitation
from lion_distill.lion.iteration import merge_iteration_metrics, rel
from lion_distill.lion.report import write_report
from lion_distill.llm.prompts import prompt_format
from lion_distill.local_models import resolve_local_models
from lion_distill.memory import give_back_memory
from lion_distill.metrics import usage
from lion_distill.run_config import store_config
from lion_distill.runner import Stage, StageResult
from lion_distill.train import delete_checkpoints

log = logging.getLogger("lion_distill.lion")

STAGE_FUNCTIONS = {"imitation": imitation, "discrimination": discrimination, "generation": generation}
STAGES = tuple(STAGE_FUNCTIONS)


def initial_pool(cfg: RunConfig):
    """-> (the seed instructions, their load report as a dict): the pool files, sampled if asked."""
    return sampled_pool(cfg.data, cfg.lion.seed)


def seed_pools(cfg: RunConfig, run: RunDir) -> None:
    """Iteration 0 starts with train pool = cache pool = the seed instructions."""
    if run.exists(rel(0, "cache_pool.parquet")):
        return
    pool, summary = initial_pool(cfg)
    run.write_json("data_report.json", summary)
    write_pool(run, rel(0, "train_pool.parquet"), pool)
    write_pool(run, rel(0, "cache_pool.parquet"), pool)


def _stage(cfg: RunConfig, run: RunDir, k: int, name: str) -> Stage:
    def fn(state: dict) -> StageResult:
        return STAGE_FUNCTIONS[name](cfg, run, k, state["outputs"]["student_model"])

    # An exported student's Ray Train checkpoints, once the imitation is recorded (lion_distill.runner).
    trained = name == "imitation" and not cfg.train.keep_checkpoints
    cleanup = partial(delete_checkpoints, run.uri_of(rel(k, "imitation", "student"))) if trained else None
    return Stage(f"iter_{k}/{name}", fn, cleanup=cleanup)


def _eval_stage(cfg: RunConfig, run: RunDir, k: int) -> Stage:
    """The student as it is now (iteration -1: the base student) against the eval reference."""

    def fn(state: dict) -> StageResult:
        student = cfg.student.model_copy(update={"model": state["outputs"]["student_model"]})
        summary, records = evaluate(
            cfg.eval, run, student, prompt_format(student), rel(k, "eval"), role_name="student", teacher=cfg.teacher
        )
        merge_iteration_metrics(run, k)
        return StageResult(counters=usage(records), summary={f"eval_{key}": v for key, v in headline(summary).items()})

    return Stage(f"iter_{k}/eval", fn)


def lion_stages(cfg: RunConfig, run: RunDir) -> list[Stage]:
    """The loop in order: imitation, discrimination, generation for each iteration; then, with
    `lion.final_imitation`, the imitation of the last iteration's new instructions, which
    gives the final student. With `eval`, the student is evaluated before training and right
    after each imitation."""
    stages = [_eval_stage(cfg, run, -1)] if cfg.eval else []
    final = [(cfg.lion.iterations, "imitation")] if cfg.lion.final_imitation else []
    for k, name in [(k, name) for k in range(cfg.lion.iterations) for name in STAGES] + final:
        stages.append(_stage(cfg, run, k, name))
        if name == "imitation" and cfg.eval:
            stages.append(_eval_stage(cfg, run, k))
    return stages


def export_datasets(run: RunDir) -> None:
    """What the run made, as Hugging Face datasets in run_dir/datasets (lion_distill.lion.export).
    A remote run directory is exported with `lion-distill export RUN_DIR --to DIR`."""
    if "://" in run.uri:
        log.info("datasets not exported: %s is remote; run `lion-distill export %s --to DIR`", run.uri, run.uri)
        return
    counts = export_run(run.uri, str(run.local_path("datasets")))
    log.info(
        "datasets: %s (iterations %s; `datasets.load_from_disk` reads each)", run.local_path("datasets"), list(counts)
    )


def load(path: str, overrides: list[str]) -> RunConfig:
    return resolve_local_models(load_config(path, overrides))


def resolved(cfg: RunConfig) -> RunConfig:
    """The config as the run uses it and stores it in config.json: its paths absolute, the
    student's format fixed, and the teacher's engine allowed distill.top_k logprobs where a
    white-box mode needs them."""
    return with_teacher_logprobs(with_prompt_format(absolute_paths(cfg)))


def run(cfg: RunConfig, allow_config_change: bool = False) -> dict:
    cfg = resolved(cfg)
    rundir = RunDir(cfg.run_dir)
    config = store_config(rundir, cfg, allow_config_change)  # a resumed run's config is the stored one
    seed_pools(cfg, rundir)
    give_back_memory()  # the seed file's rows, read before the first stage
    roles = {name: getattr(cfg, name) for name in cfg.ROLES}
    if cfg.eval is not None:
        roles["judge"] = cfg.eval.judge  # frozen like the referee: one engine for the job
    state = run_with_engines(
        cfg, rundir, job="lion", roles=roles, stages=lion_stages(cfg, rundir), report=write_report, config=config
    )
    write_report(rundir)
    give_back_memory()
    export_datasets(rundir)
    log.info("done: student %s; report %s", state["outputs"]["student_model"], rundir.path("report.md"))
    return state
