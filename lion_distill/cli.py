"""The command line every job shares: `python jobs/<job>.py --config X [--set a.b=c ...]`.

    python jobs/lion.py --config configs/demo.yaml --set lion.iterations=1   # a fresh local Ray cluster
    RAY_ADDRESS=HOST:6379 python jobs/lion.py --config ...                    # the cluster RAY_ADDRESS names
    ray job submit --working-dir . -- python jobs/lion.py --config ...       # `ray job submit` sets RAY_ADDRESS

    lion-distill lion --config X --plan        # what the run will cost; no cluster, no request
    lion-distill lion --config X --quiet       # no progress bars (they are off anyway where stderr is no terminal)
    lion-distill plan lion --config X          # the same
    lion-distill inspect FILE...               # what a pool made of these files would hold
    lion-distill export RUN_DIR --to DIR       # a Lion run's data as Hugging Face datasets (--push-to-hub NAME)

A job is a module in JOBS with `load(path, overrides) -> config`, `resolved(config) -> config` (as
the run stores it: paths absolute) and `run(config, allow_config_change) -> state`;
its `--plan` is the function PLANS names, `plan(config) -> lion_distill.plan.Plan` (plans read the
stages; stages never import plans). `main([job, *args])` loads the config (a bad
one is one line on stderr and exit status 2), checks everything the run needs before any
cluster (lion_distill.preflight: every problem one line, exit status 2; `--plan` needs only the inputs
and lists the rest as notes), joins or starts Ray, checks the cluster's GPUs and CPUs, takes the
run directory's lock (lion_distill.joblock: one job per run directory), runs the job and exits 0 when
its state says done. The job's log lines also go to `run_dir/logs/<job>-<UTC time>.log`; a resumed
run whose config differs from its stored config.json stops naming the fields
(lion_distill.run_config) unless `--allow-config-change`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Job name -> the module that composes it (imported only when that job runs).
JOBS = {
    "lion": "lion_distill.lion.loop",
    "evaluate": "lion_distill.evaluate.job",
    "step_by_step": "lion_distill.step_by_step.job",
    "distill": "lion_distill.distill.job",
}
JOB_CHOICES = "{" + "|".join(j.replace("_", "-") for j in JOBS) + "}"
# Job name -> (module, function) that prices it for `--plan`.
PLANS = {
    "lion": ("lion_distill.plan.lion", "lion_plan"),
    "evaluate": ("lion_distill.plan.evaluate", "evaluate_plan"),
    "step_by_step": ("lion_distill.plan.step_by_step", "step_by_step_plan"),
    "distill": ("lion_distill.plan.distill", "distill_plan"),
}


USAGE = """usage: lion-distill {jobs} --config FILE [--set KEY=VALUE ...] [--plan] [--quiet | --verbose]
       lion-distill plan {jobs} --config FILE ...
       lion-distill inspect FILE... [--field instruction=FIELD]
       lion-distill export RUN_DIR --to DIR [--push-to-hub NAME]
       lion-distill --version
`lion-distill JOB --help` says more about each job; docs/configuration.md lists every config field."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("lion-distill")
    except PackageNotFoundError:  # a checkout run through jobs/*.py, never installed
        return "unknown (not installed)"


def _parser(job: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{job}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="run config YAML (see configs/ and docs/configuration.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config field")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument(
        "--verbose",
        action="store_true",
        help="also Ray Data's progress in logs that are no terminal, and the workers' own logs",
    )
    shown.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (by default Ray Data's are shown where stderr is a terminal)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what the run will cost per stage and write run_dir/plan.json; start nothing, send nothing",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run directory whose stored config.json differs from this config (default: stop, naming the fields)",
    )
    parser.add_argument("--version", action="version", version=f"lion-distill {version()}")
    return parser


def _problems(what: str, problems: list[str]) -> int:
    print(f"error: {what}:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 2


def job_plan(name: str, cfg):
    """The job's plan (lion_distill.plan.<job>), with what the run directory already holds."""
    module, function = PLANS[name]
    return getattr(importlib.import_module(module), function)(cfg)


def _plan(name: str, cfg, checks) -> int:
    """The plan's table, then what stands between it and a run (a key not handed out yet, a model
    folder not mounted here): notes, not errors. The plan is written to the run directory where
    that directory can be written from here."""
    from lion_distill.data import RunDir
    from lion_distill.plan import plan_table

    plan = job_plan(name, cfg)
    print(plan_table(plan))
    if checks.notes:
        print("\nNotes:", *(f"  - {note}" for note in checks.notes), sep="\n")
    if checks.run:
        print("\nBefore the run can start:", *(f"  - {problem}" for problem in checks.run), sep="\n")
    try:
        RunDir(cfg.run_dir).write_json("plan.json", plan.as_dict())
    except OSError as e:
        print(f"plan.json not written: {cfg.run_dir} cannot be written from here ({e.strerror or e})")
    else:
        print(f"written: {cfg.run_dir.rstrip('/')}/plan.json")
    return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (a test harness swaps it)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


def _log_to_stderr() -> None:
    """The job's own lines (loggers under `lion_distill`) on a handler of their own: Ray Serve LLM's
    first import in a process replaces the root logger's handlers with a JSON one, which would
    turn every line after the first engine start into a JSON object."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    engine = logging.getLogger("lion_distill")
    engine.handlers, engine.propagate = [handler], False
    engine.setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)


def progress_bars(verbose: bool, quiet: bool, stream=None) -> bool:
    """Ray Data's progress bars: where stderr is a terminal, unless --quiet. Written to a log file
    or a CI job's captured output, their redrawn lines would be thousands."""
    stream = sys.stderr if stream is None else stream
    return not quiet and (verbose or bool(getattr(stream, "isatty", lambda: False)()))


def _log_to_run_dir(run_dir: str, job: str):
    """The job's lines also in run_dir/logs/, one file per job started on the run directory."""
    import time

    from lion_distill.data import RunDir
    from lion_distill.data.rundir import RunLog

    handler = RunLog(RunDir(run_dir), f"{job}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("lion_distill").addHandler(handler)
    return handler


def init_ray(verbose: bool, quiet: bool = False) -> None:
    import ray

    from lion_distill.memory import driver_allocator

    driver_allocator()  # the driver's Arrow buffers: freed ones leave the process (lion_distill.memory)
    # 15-20 s per parquet read on small machines through Ray Data's datasource-v2 path.
    os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")
    if os.environ.get("RAY_ADDRESS", "local") != "local":
        ray.init(log_to_driver=verbose)  # the cluster RAY_ADDRESS names (`ray job submit` sets it)
    else:
        # A fresh local cluster, never one some earlier `ray start` left on the machine.
        # Logical CPUs above the physical ones, so a vLLM actor's CPU bundle and the
        # Ray Data stages around it can be scheduled together on a small machine.
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=verbose)
    ray.data.DataContext.get_current().enable_progress_bars = progress_bars(verbose, quiet)
    if not verbose:
        # Every stage logs one line with its figures; Ray Data's plan logs (and, where stderr is
        # no terminal, its progress as log lines) add about a thousand lines to a demo run.
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # a deployment's options, 15 lines an engine


def export(argv: list[str]) -> int:
    """`lion-distill export RUN_DIR --to DIR`: lion_distill.lion.export."""
    from lion_distill.lion.export import export_run

    parser = argparse.ArgumentParser(
        prog="lion-distill export", description="a Lion run's data as Hugging Face datasets"
    )
    parser.add_argument("run_dir", help="a Lion run directory (local path or pyarrow filesystem URI)")
    parser.add_argument(
        "--to", required=True, help="the folder to write: iter_<k>/ (save_to_disk) and README.md (the card)"
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="NAME",
        help="also push to this hub dataset repository, private (HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--public", action="store_true", help="with --push-to-hub: a public repository")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "state.json")) and "://" not in args.run_dir:
        print(f"error: {args.run_dir}: not a run directory (no state.json)", file=sys.stderr)
        return 2
    if args.public and not args.push_to_hub:
        print("error: --public goes with --push-to-hub", file=sys.stderr)
        return 2
    from lion_distill.errors import RunDirFormatError, StateFileError

    try:
        counts = export_run(args.run_dir, args.to, args.push_to_hub, public=args.public)
    except (RunDirFormatError, StateFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, splits in counts.items():
        print(f"iter_{k}: " + ", ".join(f"{name} {n}" for name, n in splits.items()))
    pushed = f"; pushed to {args.push_to_hub} ({'public' if args.public else 'private'})" if args.push_to_hub else ""
    print(f"written: {args.to.rstrip('/')}/README.md" + pushed)
    return 0


def main(argv: list[str] | None = None) -> int:
    from lion_distill.config import ConfigError
    from lion_distill.preflight import preflight

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE.format(jobs=JOB_CHOICES))
        return 0
    if argv[:1] == ["--version"]:
        print(f"lion-distill {version()}")
        return 0
    if argv[:1] == ["inspect"]:
        from lion_distill.data.__main__ import main as data_main

        return data_main(argv)
    if argv[:1] == ["export"]:
        return export(argv[1:])
    if argv[:1] == ["plan"]:
        argv = [*argv[1:], "--plan"]
    name = argv[0].replace("-", "_") if argv else ""
    if name not in JOBS:
        print(USAGE.format(jobs=JOB_CHOICES), file=sys.stderr)
        return 2
    job = importlib.import_module(JOBS[name])
    args = _parser(name, job.__doc__).parse_args(argv[1:])
    _log_to_stderr()
    try:
        cfg = job.load(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checks = preflight(cfg)
    if args.plan:
        if checks.inputs:
            return _problems(f"{args.config}: the plan cannot be made", checks.inputs)
        return _plan(name, cfg, checks)
    if checks.problems:
        return _problems(f"{args.config}: the run cannot start", checks.problems)
    return _start(job, name, cfg, args, checks.notes)


def _start(job, name: str, cfg, args, notes: list[str]) -> int:
    """A run whose inputs are known good: the stored config compared, Ray joined or started, the
    cluster checked, then the job, its lines also in run_dir/logs/. A refusal leaves the run
    directory as it was."""
    from lion_distill.data import RunDir
    from lion_distill.run_config import ConfigChanged, check_config

    try:  # before Ray starts: a resumed run with another config stops in seconds
        check_config(RunDir(cfg.run_dir), job.resolved(cfg), args.allow_config_change)
    except ConfigChanged as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = logging.getLogger("lion_distill")
    for note in notes:
        log.info("note: %s", note)
    init_ray(args.verbose, args.quiet)
    import ray

    from lion_distill.llm.fit import cluster_gpus
    from lion_distill.preflight import cluster_problems, cpu_engine_notes

    gpus = cluster_gpus()
    for note in cpu_engine_notes(cfg, gpus):  # after Ray is joined: what its GPUs say
        log.info("note: %s", note)
    problems = cluster_problems(cfg, ray.cluster_resources(), gpus.ceiling)
    if problems:
        return _problems("the cluster lacks what the run asks for", problems)
    run_log = _log_to_run_dir(cfg.run_dir, name)
    try:
        return _run(job, cfg, args, run_log)
    finally:
        logging.getLogger("lion_distill").removeHandler(run_log)
        run_log.close()


def _run(job, cfg, args, run_log: logging.Handler) -> int:
    """The job on its run directory, under its lock; a refusal or a failure is one line."""
    from lion_distill.data import RunDir
    from lion_distill.errors import RunDirBusy, RunDirFormatError, StageError, StateFileError, TransientFailures
    from lion_distill.joblock import job_lock
    from lion_distill.llm.fit import PlanDoesNotFit
    from lion_distill.run_config import ConfigChanged
    from lion_distill.runner import check_format

    try:
        check_format(RunDir(cfg.run_dir))  # before the job writes its config there
        with job_lock(RunDir(cfg.run_dir)):  # before any engine starts: a second job would take the first's
            state = job.run(cfg, allow_config_change=args.allow_config_change)
    except (
        RunDirBusy,
        RunDirFormatError,
        StateFileError,
        PlanDoesNotFit,
        ConfigChanged,
    ) as e:  # ConfigChanged: a config.json written since
        _in_run_log(run_log, str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageError as e:
        if isinstance(e.cause, TransientFailures):  # a clean stop: the line says what to do, no traceback
            _in_run_log(run_log, f"stopped: {e.cause}")
            print(f"stopped: {e.cause}", file=sys.stderr)
            return 1
        logging.getLogger("lion_distill").exception("%s", e)
        print(f"error: {e} (the run directory is resumable: run the same command again)", file=sys.stderr)
        return 1
    return 0 if state["done"] else 1


def _in_run_log(run_log: logging.Handler, message: str) -> None:
    """An error the job prints on stderr, in the run's log file too (logged, it would print twice)."""
    run_log.handle(
        logging.makeLogRecord({"name": "lion_distill", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message})
    )
