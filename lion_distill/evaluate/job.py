"""Evaluate models against a reference with an LLM judge (Lion's Vicuna-80 protocol).

    python jobs/evaluate.py --config configs/eval-demo.yaml [--set eval.questions.sample_size=20 ...]

Stages: `questions` (load the questions, with rejects counted, and the reference answers:
from a file, or answered by a role), then `candidate/<name>` for each candidate (it answers,
the judge reviews both orders, the scores are aggregated). The report is `eval/report.md`;
run again with the same run_dir to resume after the last completed stage.
"""

from __future__ import annotations

import logging
import os

from lion_distill.config import RoleConfig, load_config
from lion_distill.config.evaluate import CandidateConfig, EvalConfig, EvalJobConfig
from lion_distill.config.models import StudentRoleConfig
from lion_distill.data import RunDir
from lion_distill.data.remote import export_complete
from lion_distill.errors import CandidateError
from lion_distill.evaluate.evaluation import evaluate, prepare
from lion_distill.evaluate.report import write_report
from lion_distill.evaluate.scores import headline
from lion_distill.llm.prompts import prompt_format
from lion_distill.local_models import resolve_local_models
from lion_distill.metrics import usage
from lion_distill.run_config import store_config
from lion_distill.runner import Stage, StageResult, run_stages


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _abs_role(role: RoleConfig | None) -> RoleConfig | None:
    if role is None or not os.path.exists(role.model):
        return role
    return role.model_copy(update={"model": os.path.abspath(role.model)})


def absolute_paths(cfg: EvalConfig) -> EvalConfig:
    """Files and local models as absolute paths: Ray workers do not share the job's working directory."""
    questions = cfg.questions.model_copy(update={"files": [_abs(p) for p in cfg.questions.files]})
    reference = cfg.reference.model_copy(
        update={"answers": cfg.reference.answers and _abs(cfg.reference.answers), "role": _abs_role(cfg.reference.role)}
    )
    candidates = [
        c.model_copy(update={"role": _abs_role(c.role), "lion_run": c.lion_run and _abs(c.lion_run)})
        for c in cfg.candidates
    ]
    return cfg.model_copy(
        update={"questions": questions, "reference": reference, "judge": _abs_role(cfg.judge), "candidates": candidates}
    )


def candidate_role(candidate: CandidateConfig) -> RoleConfig:
    """The role that serves a candidate; a Lion run's student is served as that run's config
    serves its student, from the checkpoint of `iteration` (default: the latest exported)."""
    if candidate.role is not None:
        return candidate.role
    run = RunDir(candidate.lion_run)
    config = run.read_json("config.json")
    if config is None:
        raise CandidateError(
            f"candidate {candidate.name}: {run.path('config.json')} not found; "
            f"is {candidate.lion_run} a Lion run directory?"
        )
    k = candidate.iteration

    def exported(iteration: str) -> bool:  # a student half uploaded to an object store is none
        return export_complete(run.fs, run.path(iteration, "imitation", "student"))

    if k is None:
        done = [int(name[5:]) for name in _iteration_dirs(run) if exported(name)]
        if not done:
            raise CandidateError(
                f"candidate {candidate.name}: no student checkpoint in {candidate.lion_run} yet "
                "(iter_<k>/imitation/student/)"
            )
        k = max(done)
    student = run.uri_of(f"iter_{k}", "imitation", "student")
    if not exported(f"iter_{k}"):
        raise CandidateError(f"candidate {candidate.name}: {student} has no student checkpoint")
    return StudentRoleConfig.model_validate({**config["student"], "model": student})


def _iteration_dirs(run: RunDir) -> list[str]:
    import pyarrow.fs as pafs

    infos = run.fs.get_file_info(pafs.FileSelector(run.root, allow_not_found=True))
    return [i.base_name for i in infos if i.base_name.startswith("iter_") and i.base_name[5:].isdigit()]


def eval_stages(cfg: EvalConfig, run: RunDir) -> list[Stage]:
    def questions(state: dict) -> StageResult:
        questions, _, records = prepare(cfg, run)
        return StageResult(counters=usage(records), summary={"questions": len(questions)})

    def candidate(c: CandidateConfig) -> Stage:
        def fn(state: dict) -> StageResult:
            role = candidate_role(c)
            prompt = c.prompt or prompt_format(role)  # a Lion run's student: as it was trained
            summary, records = evaluate(cfg, run, role, prompt, f"eval/{c.name}", role_name=c.name)
            return StageResult(counters=usage(records), summary=headline(summary))

        return Stage(f"candidate/{c.name}", fn, group=c.name)

    return [Stage("questions", questions), *(candidate(c) for c in cfg.candidates)]


def load(path: str, overrides: list[str]) -> EvalJobConfig:
    return resolve_local_models(load_config(path, overrides, model=EvalJobConfig))


def resolved(cfg: EvalJobConfig) -> EvalJobConfig:
    """The config as the job uses it and stores it in config.json: its paths absolute."""
    return cfg.model_copy(update={"eval": absolute_paths(cfg.eval), "run_dir": _abs(cfg.run_dir)})


def run(cfg: EvalJobConfig, allow_config_change: bool = False) -> dict:
    cfg = resolved(cfg)
    rundir = RunDir(cfg.run_dir)
    config = store_config(rundir, cfg, allow_config_change)  # a resumed run's config is the stored one
    state = run_stages(
        rundir,
        job="evaluate",
        name=cfg.name,
        stages=eval_stages(cfg.eval, rundir),
        report=write_report,
        tracking_cfg=cfg.tracking,
        config=config,
    )
    write_report(rundir)
    logging.getLogger("lion_distill.evaluate").info("done: report %s", rundir.path("eval", "report.md"))
    return state
