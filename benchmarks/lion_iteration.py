"""One Lion iteration of the demo: time, rows/s and tokens/s per stage, and each
stage's share of the iteration. Runs `jobs/lion.py` on configs/demo.yaml (local Ray
cluster, tiny models, vLLM on CPU) into a fresh run directory, then reads its
iter_0/metrics.json.

    python benchmarks/lion_iteration.py [--config configs/demo.yaml] [--set k=v ...] [--out FILE]
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


def stage_rows(metrics: dict) -> list[dict]:
    """One row per stage that has a timing, in loop order (metrics.json keys are sorted)."""
    order = ("imitation", "discrimination", "generation")
    stages = sorted((key.split("/", 1)[1] for key in metrics if key.startswith("timing_s/")),
                    key=lambda stage: (order.index(stage.split("/")[0]) if stage.split("/")[0] in order else 3, stage))
    rows = []
    for stage in stages:
        seconds = metrics[f"timing_s/{stage}"]
        tokens = metrics.get(f"prompt_tokens/{stage}", 0) + metrics.get(f"completion_tokens/{stage}", 0)
        rows.append({
            "stage": stage, "seconds": seconds, "rows": metrics.get(f"rows/{stage}", 0),
            "rows_per_s": metrics.get(f"rows_per_s/{stage}", 0.0),
            "completion_tokens_per_s": metrics.get(f"completion_tokens_per_s/{stage}", 0.0),
            "tokens_per_s": tokens / seconds if seconds else 0.0,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "lion_iteration.json"))
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="lion-bench-")) / "run"
    cmd = [sys.executable, str(REPO / "jobs" / "lion.py"), "--config", args.config, "--set", f"run_dir={run_dir}",
           "--set", "lion.iterations=1", *(f"--set={s}" for s in args.set)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_USE_DATASOURCE_V2": "0",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "iter_0" / "metrics.json").read_text())
    rows = stage_rows(metrics)
    total = sum(r["seconds"] for r in rows)

    print(f"\nOne Lion iteration ({args.config}): {wall:.1f} s wall for the job, {total:.1f} s in its stages\n")
    print(f"| {'stage':34} | {'s':>7} | {'share':>6} | {'rows':>5} | {'rows/s':>7} | {'tok/s':>8} | {'compl tok/s':>11} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 8}|{'-' * 7}|{'-' * 9}|{'-' * 10}|{'-' * 13}|")
    for r in rows:
        print(f"| {r['stage']:34} | {r['seconds']:7.1f} | {r['seconds'] / total:6.1%} | {r['rows']:5d} | "
              f"{r['rows_per_s']:7.2f} | {r['tokens_per_s']:8.0f} | {r['completion_tokens_per_s']:11.0f} |")
    summary = {k: metrics[k] for k in ("lion/hard_fraction", "lion/mean_gap", "lion/new_instructions", "lion/candidates")
               if k in metrics}
    print("\n" + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"wall_s": wall, "stages": rows, "summary": summary,
                                          "run_dir": str(run_dir)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
