"""The command line every job shares: `python jobs/<job>.py --config X [--set a.b=c ...]`.

    python jobs/lion.py --config configs/demo.yaml --set lion.iterations=1   # a fresh local Ray cluster
    RAY_ADDRESS=HOST:6379 python jobs/lion.py --config ...                    # the cluster RAY_ADDRESS names
    ray job submit --working-dir . -- python jobs/lion.py --config ...       # `ray job submit` sets RAY_ADDRESS

    lion-distill lion --config X --plan        # what the run will cost; no cluster, no request
    lion-distill plan lion --config X          # the same
    lion-distill inspect FILE...               # what a pool made of these files would hold
    lion-distill export RUN_DIR --to DIR       # a Lion run's data as Hugging Face datasets (--push-to-hub NAME)

A job is a module in JOBS with `load(path, overrides) -> config` and `run(config) -> state`;
its `--plan` is the function PLANS names, `plan(config) -> lion_distill.plan.Plan` (plans read the
stages; stages never import plans). `main([job, *args])` loads the config (a bad
one is one line on stderr and exit status 2), checks everything the run needs before any
cluster (lion_distill.preflight: every problem one line, exit status 2; `--plan` needs only the inputs
and lists the rest as notes), joins or starts Ray, checks the cluster's GPUs and CPUs, takes the
run directory's lock (lion_distill.joblock: one job per run directory), runs the job and exits 0 when
its state says done.
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
}
# Job name -> (module, function) that prices it for `--plan`.
PLANS = {
    "lion": ("lion_distill.plan.lion", "lion_plan"),
    "evaluate": ("lion_distill.plan.evaluate", "evaluate_plan"),
    "step_by_step": ("lion_distill.plan.step_by_step", "step_by_step_plan"),
}


def _parser(job: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{job}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config field")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray Data's per-operator progress and the workers' logs (default: one line per stage)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what the run will cost per stage and write run_dir/plan.json; start nothing, send nothing",
    )
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


def init_ray(verbose: bool) -> None:
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
    if not verbose:
        # Every stage logs one line with its figures; Ray Data's operator bars and plan
        # logs add about a thousand lines to a demo run.
        ray.data.DataContext.get_current().enable_progress_bars = False
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
    counts = export_run(args.run_dir, args.to, args.push_to_hub, public=args.public)
    for k, splits in counts.items():
        print(f"iter_{k}: " + ", ".join(f"{name} {n}" for name, n in splits.items()))
    pushed = f"; pushed to {args.push_to_hub} ({'public' if args.public else 'private'})" if args.push_to_hub else ""
    print(f"written: {args.to.rstrip('/')}/README.md" + pushed)
    return 0


def main(argv: list[str] | None = None) -> int:
    from lion_distill.config import ConfigError
    from lion_distill.llm.fit import PlanDoesNotFit
    from lion_distill.preflight import cluster_problems, preflight
    from lion_distill.runner import StageError, StateFileError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        from lion_distill.data.__main__ import main as data_main

        return data_main(argv)
    if argv[:1] == ["export"]:
        return export(argv[1:])
    if argv[:1] == ["plan"]:
        argv = [*argv[1:], "--plan"]
    name = argv[0].replace("-", "_") if argv else ""
    if name not in JOBS:
        jobs = "|".join(j.replace("_", "-") for j in JOBS)
        print(
            f"usage: lion-distill {{{jobs}}} --config FILE [--set KEY=VALUE ...] [--plan]\n"
            f"       lion-distill plan {{{jobs}}} --config FILE ...\n"
            "       lion-distill inspect FILE... [--field instruction=FIELD]\n"
            "       lion-distill export RUN_DIR --to DIR [--push-to-hub NAME]",
            file=sys.stderr,
        )
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
    for note in checks.notes:
        logging.getLogger("lion_distill").info("note: %s", note)
    init_ray(args.verbose)
    import ray

    problems = cluster_problems(cfg, ray.cluster_resources())
    if problems:
        return _problems("the cluster lacks what the run asks for", problems)
    from lion_distill.data import RunDir
    from lion_distill.joblock import RunDirBusy, job_lock

    try:
        with job_lock(RunDir(cfg.run_dir)):  # before any engine starts: a second job would take the first's
            state = job.run(cfg)
    except (RunDirBusy, PlanDoesNotFit, StateFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageError as e:
        from lion_distill.llm.transient import TransientFailures

        if isinstance(e.cause, TransientFailures):  # a clean stop: the line says what to do, no traceback
            print(f"stopped: {e.cause}", file=sys.stderr)
            return 1
        logging.getLogger("lion_distill").exception("%s", e)
        print(f"error: {e} (the run directory is resumable: run the same command again)", file=sys.stderr)
        return 1
    return 0 if state["done"] else 1
