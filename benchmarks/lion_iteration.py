"""Lion iterations of the demo, engines per stage vs shared: time per stage and per
iteration, engine starts, rows/s and tokens/s. Runs `jobs/lion.py` on
configs/demo.yaml (local Ray cluster, tiny models, vLLM on CPU) twice into fresh run
directories, once with `serving: per_stage` (every vLLM stage starts its own engine)
and once with `serving: shared` (one Ray Serve LLM engine per distinct model for the
job), then reads each iteration's iter_k/metrics.json.

    python benchmarks/lion_iteration.py [--iterations 2] [--modes per_stage shared] [--set k=v ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDER = ("imitation", "discrimination", "generation")


def stage_rows(metrics: dict) -> list[dict]:
    """One row per stage that has a timing, in loop order (metrics.json keys are sorted)."""
    stages = sorted(
        (key.split("/", 1)[1] for key in metrics if key.startswith("timing_s/")),
        key=lambda stage: (ORDER.index(stage.split("/")[0]) if stage.split("/")[0] in ORDER else 3, stage),
    )
    rows = []
    for stage in stages:
        seconds = metrics[f"timing_s/{stage}"]
        tokens = metrics.get(f"prompt_tokens/{stage}", 0) + metrics.get(f"completion_tokens/{stage}", 0)
        rows.append(
            {
                "stage": stage,
                "seconds": seconds,
                "rows": metrics.get(f"rows/{stage}", 0),
                "rows_per_s": metrics.get(f"rows_per_s/{stage}", 0.0),
                "completion_tokens_per_s": metrics.get(f"completion_tokens_per_s/{stage}", 0.0),
                "tokens_per_s": tokens / seconds if seconds else 0.0,
            }
        )
    return rows


def engine_figures(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k == "engine_starts" or k.startswith("engine_start_s/")}


def run_job(mode: str, iterations: int, config: str, sets: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"lion-bench-{mode}-")) / "run"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "lion.py"),
        "--config",
        config,
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"lion.iterations={iterations}",
        "--set",
        f"serving={mode}",
        *(f"--set={s}" for s in sets),
    ]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_DATA_USE_DATASOURCE_V2": "0",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    env.pop("RAY_ADDRESS", None)  # a fresh local cluster per mode: neither run inherits the other's workers
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    its = []
    for k in range(iterations):
        metrics = json.loads((run_dir / f"iter_{k}" / "metrics.json").read_text())
        rows = stage_rows(metrics)
        its.append(
            {
                "iteration": k,
                "seconds": sum(r["seconds"] for r in rows),
                "stages": rows,
                "engines": engine_figures(metrics),
            }
        )
    return {"mode": mode, "wall_s": wall, "iterations": its, "run_dir": str(run_dir)}


def print_tables(runs: dict[str, dict]) -> None:
    for mode, run in runs.items():
        print(f"\n`serving: {mode}`: {run['wall_s']:.1f} s wall for the job")
        print(f"| {'iter':>4} | {'stage':34} | {'s':>7} | {'rows':>5} | {'rows/s':>7} | {'tok/s':>8} |")
        print(f"|{'-' * 6}|{'-' * 36}|{'-' * 9}|{'-' * 7}|{'-' * 9}|{'-' * 10}|")
        for it in run["iterations"]:
            for r in it["stages"]:
                print(
                    f"| {it['iteration']:>4} | {r['stage']:34} | {r['seconds']:7.1f} | {r['rows']:5d} | "
                    f"{r['rows_per_s']:7.2f} | {r['tokens_per_s']:8.0f} |"
                )
    if {"per_stage", "shared"} <= set(runs):
        print(
            "\n| iteration | per_stage s | shared s | shared / per_stage | engine starts per_stage | shared | shared engine start s |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for a, b in zip(runs["per_stage"]["iterations"], runs["shared"]["iterations"]):
            starts = ", ".join(f"{k.split('/', 1)[1]} {v:.0f}" for k, v in b["engines"].items() if "/" in k) or "none"
            print(
                f"| {a['iteration']} | {a['seconds']:.1f} | {b['seconds']:.1f} | {b['seconds'] / a['seconds']:.2f} | "
                f"{a['engines'].get('engine_starts', 0)} | {b['engines'].get('engine_starts', 0)} | {starts} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["per_stage", "shared"], choices=["per_stage", "shared"])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "lion_iteration.json"))
    args = parser.parse_args(argv)

    runs = {mode: run_job(mode, args.iterations, args.config, args.set) for mode in args.modes}
    print_tables(runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
