"""A paper figure at a size this machine runs: methods x fractions x label sources x seeds (x
students), test accuracy as mean ± sd over seeds, from one step-by-step job (its `grid`).

    python benchmarks/step_by_step.py                        # tiny T5 from scratch on a learnable synthetic task
    python benchmarks/step_by_step.py --task svamp --data-dir DIR --allow-partial --train-limit 240
    python benchmarks/step_by_step.py --task cqa --data-dir DIR --students google/t5-v1_1-base --steps 10000 \
        --batch-size 64 --lr 5e-5 --gpus-per-worker 1 --fractions 0.125 0.25 0.5 1.0 --seeds 0 1 2   # on GPUs

`synthetic` (the default) is a task a 2-layer T5 learns from scratch in minutes, so the figure
shows learning, not chance: which kind of thing (fruit, animal, colour, tool) a word names, asked
in varied sentences; its teacher is a scripted one that names the kind in its rationale ("A mango
is a fruit.") and is wrong on a seeded 15% of rows, so teacher labels are noisier than gold ones.
The rows and the teacher's replies are written as a jsonl task with `completion` (read with
`teacher.source: released`). The paper tasks read the released PaLM rationales from --data-dir.
Runs the job on a local Ray cluster, prints the table and writes it with per-stage times to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

from lion_distill.config.step_by_step import METHODS, StepByStepConfig
from lion_distill.metrics.report import table_md

REPO = Path(__file__).resolve().parents[1]
KINDS = {
    "fruit": "apple banana cherry grape lemon mango peach pear plum melon kiwi lime".split(),
    "animal": "horse tiger zebra camel otter mouse eagle shark whale sheep goat wolf".split(),
    "colour": "red blue green yellow purple orange pink brown black white grey violet".split(),
    "tool": "hammer wrench saw drill chisel spanner pliers shovel rake axe file ladder".split(),
}
QUESTIONS = [
    "Which kind of thing is {a} {w}?",
    "What is {a} {w}?",
    "Tell me what {a} {w} is.",
    "Is {a} {w} a fruit, an animal, a colour or a tool?",
    "My friend mentioned {a} {w}. What kind of thing is it?",
    "Classify the word: {w}.",
    "In one word, what is {a} {w}?",
    "Someone showed me {a} {w}. What is it?",
]


def synthetic_task(folder: Path, train_rows: int, test_rows: int, teacher_error: float = 0.15, seed: int = 0) -> dict:
    """Writes train.jsonl and test.jsonl (input, label, completion); -> the data section."""
    rng = random.Random(seed)
    words = [(w, kind) for kind, ws in KINDS.items() for w in ws]

    def row() -> dict:
        word, kind = rng.choice(words)
        said = rng.choice([k for k in KINDS if k != kind]) if rng.random() < teacher_error else kind
        article = "an" if word[0] in "aeiou" else "a"
        question = rng.choice(QUESTIONS).format(a=article, w=word)
        return {
            "input": question,
            "label": kind,
            "completion": f" {article.capitalize()} {word} is a {said}. So the answer is {said}.",
        }

    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train_rows), ("test", test_rows)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row()) + "\n" for _ in range(n)))
    return {
        "task": "jsonl",
        "train_file": str(folder / "train.jsonl"),
        "test_file": str(folder / "test.jsonl"),
        "labels": list(KINDS),
    }


def config(args, run_dir: str) -> StepByStepConfig:
    if args.task == "synthetic":
        data = synthetic_task(Path(run_dir) / "task", args.train_rows, args.test_rows)
    else:
        data = {
            "task": args.task,
            "data_dir": str(args.data_dir),
            "train_limit": args.train_limit,
            "test_limit": args.test_limit,
            "allow_partial": args.allow_partial,
        }
    return StepByStepConfig.model_validate(
        {
            "run_dir": run_dir,
            "name": f"benchmark-{args.task}",
            "data": data,
            "teacher": {"source": "released"},
            "student": {"model": args.students[0], "max_new_tokens": args.max_new_tokens, "batch_size": 64},
            "methods": args.methods,
            "fractions": args.fractions,
            "grid": {"label_sources": args.label_sources, "seeds": args.seeds, "students": args.students},
            "steps": args.steps,
            "validations": args.validations,
            "train": {
                "learning_rate": args.lr,
                "batch_size": args.batch_size,
                "epochs": 1,
                "max_length": args.max_length,
                "rationale_weight": 1.0,
                "num_workers": 1,
                "gpus_per_worker": args.gpus_per_worker,
                "checkpoint_every_steps": 1000,
            },
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["synthetic", "cqa", "svamp", "esnli", "anli1"], default="synthetic")
    p.add_argument("--data-dir", type=Path, default=None, help="the full sets (paper tasks)")
    p.add_argument("--allow-partial", action="store_true", help="run a paper task on a part of its splits")
    p.add_argument("--train-rows", type=int, default=400, help="synthetic: training rows")
    p.add_argument("--test-rows", type=int, default=200, help="synthetic: test rows")
    p.add_argument("--students", nargs="+", default=["tiny://t5"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--label-sources", nargs="+", default=["gold", "teacher"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps at every fraction (the paper: 10000)")
    p.add_argument("--validations", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default: a temporary folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "step_by_step.json")
    args = p.parse_args()

    import ray

    from lion_distill.cli import init_ray
    from lion_distill.local_models import resolve_local_models
    from lion_distill.step_by_step import job
    from lion_distill.step_by_step.report import accuracy_table, curves

    init_ray(verbose=False)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="sbs-bench-")
    start = time.perf_counter()
    state = job.run(resolve_local_models(config(args, run_dir)))
    seconds = time.perf_counter() - start
    ray.shutdown()
    summary = state["summary"]
    cells, teacher = summary["evaluate"]["cells"], summary["rationales"]["teacher_test_accuracy"]
    print(accuracy_table(curves(cells), teacher))
    stage_s = {
        "rationales": summary["rationales"]["seconds"],
        "evaluate": summary["evaluate"]["seconds"],
        **{f"train/{k}": v["seconds"] for k, v in summary["train"].items()},
    }
    print(f"{len(summary['train'])} training runs, {seconds:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "rows": summary["rationales"]["rows"],
                "parse_failures": summary["rationales"]["parse_failures"],
                "cells": cells,
                "teacher_test_accuracy": teacher,
                "label_shares": summary["evaluate"]["label_shares"],
                "stage_seconds": stage_s,
                "total_seconds": seconds,
                "run_dir": run_dir,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}; report {run_dir}/report.md")
    print(table_md(["stage", "seconds"], [[k, round(v, 1)] for k, v in stage_s.items()]))


if __name__ == "__main__":
    main()
