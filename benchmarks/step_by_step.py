"""The paper's grid at a size this machine runs: 3 methods x 3 fractions, test accuracy.

    python benchmarks/step_by_step.py --task svamp --data-dir DIR       # tiny T5 from scratch, released PaLM rationales
    python benchmarks/step_by_step.py --task cqa --data-dir DIR --model google-t5/t5-base --steps 10000 \
        --batch-size 64 --lr 5e-5 --gpus-per-worker 1 --fractions 0.125 0.25 0.5 1.0   # the paper's grid, on GPUs

DIR holds the full sets in the layout of data/step-by-step (default: the repository's slice).
Runs the step-by-step job (rationales from the released completions, train/<method>/<fraction>,
evaluate) on a local Ray cluster, prints the accuracy table and writes it with the per-stage
times as JSON to --out. A random-init tiny T5 measures the pipeline, not the method: expect
accuracies near what predicting the commonest label scores.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from engine.config.step_by_step import METHODS, StepByStepConfig
from engine.metrics.report import table_md

REPO = Path(__file__).resolve().parents[1]


def config(args, run_dir: str) -> StepByStepConfig:
    return StepByStepConfig.model_validate({
        "run_dir": run_dir, "name": f"benchmark-{args.task}",
        "data": {"task": args.task, "data_dir": str(args.data_dir), "train_limit": args.train_limit,
                 "test_limit": args.test_limit},
        "teacher": {"source": "released"},
        "student": {"model": args.model, "max_new_tokens": args.max_new_tokens, "batch_size": 64},
        "methods": list(METHODS), "fractions": args.fractions, "label_source": "gold",
        "steps": args.steps, "validations": args.validations,
        "train": {"architecture": "seq2seq", "learning_rate": args.lr, "batch_size": args.batch_size,
                  "epochs": args.epochs, "max_length": args.max_length, "warmup_ratio": 0.0, "rationale_weight": 1.0,
                  "num_workers": 1, "gpus_per_worker": args.gpus_per_worker, "checkpoint_every_steps": 1000},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["cqa", "svamp", "esnli", "anli1"], default="svamp")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "step-by-step")
    p.add_argument("--model", default="tiny://t5")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--steps", type=int, default=None, help="the paper's fixed step budget (default: --epochs)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--validations", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default: a temporary folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "step_by_step.json")
    args = p.parse_args()

    import ray

    from engine.cli import init_ray
    from engine.step_by_step import job
    from engine.tiny import resolve_tiny_models

    init_ray(verbose=False)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="sbs-bench-")
    start = time.perf_counter()
    state = job.run(resolve_tiny_models(config(args, run_dir)))
    seconds = time.perf_counter() - start
    ray.shutdown()
    summary = state["summary"]
    accuracy, teacher = summary["evaluate"]["accuracy"], summary["rationales"]["teacher_test_accuracy"]
    fractions = [f"{f:g}" for f in sorted(args.fractions)]
    rows = [[m] + [accuracy[m][f] for f in fractions] for m in accuracy] + [["teacher (PaLM, released)"] + [teacher] * len(fractions)]
    print(table_md(["method"] + [f"{100 * float(f):g}% of train" for f in fractions], rows))
    stage_s = {"rationales": summary["rationales"]["seconds"], "evaluate": summary["evaluate"]["seconds"],
               **{f"train/{k}": v["seconds"] for k, v in summary["train"].items()}}
    print(table_md(["stage", "seconds"], [[k, v] for k, v in stage_s.items()]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "args": vars(args) | {
            "data_dir": str(args.data_dir), "out": str(args.out)},
        "rows": summary["rationales"]["rows"], "parse_failures": summary["rationales"]["parse_failures"],
        "accuracy": accuracy, "teacher_test_accuracy": teacher, "label_shares": summary["evaluate"]["label_shares"],
        "stage_seconds": stage_s, "total_seconds": seconds, "run_dir": run_dir,
    }, indent=2))
    print(f"wrote {args.out}; report {run_dir}/report.md")


if __name__ == "__main__":
    main()
