"""Lion adversarial distillation, end to end.

    python jobs/lion.py --config configs/demo.yaml [--set lion.iterations=1 ...]   # a local Ray cluster
    ray job submit --working-dir . -- python jobs/lion.py --config configs/lion-7b.yaml
    RAY_ADDRESS=HOST:6379 python jobs/lion.py ...                                 # an existing cluster

Run again with the same run_dir to resume after the last completed stage.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from engine.config import ConfigError, load_config  # noqa: E402
from engine.lion.loop import run_lion  # noqa: E402
from engine.tiny import resolve_tiny_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_tiny_models(load_config(args.config, args.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import ray

    os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")  # 15-20 s per parquet read otherwise (ENVIRONMENT.md)
    if os.environ.get("RAY_ADDRESS", "local") != "local":
        ray.init()  # the cluster RAY_ADDRESS names (`ray job submit` sets it)
    else:
        # A fresh local cluster, never one some earlier `ray start` left on the machine.
        # Logical CPUs above the physical ones, so a vLLM actor's CPU bundle and the
        # Ray Data stages around it can be scheduled together on a small machine.
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    state = run_lion(cfg)
    return 0 if state["done"] else 1


if __name__ == "__main__":
    sys.exit(main())
