"""What a Ray Train start costs a short training: `lion_distill.train.loop.fit` of the tiny LLaMA on 12
rows (two optimizer steps and the export) with one Ray Train worker against Ray Train's local mode
(`train.num_workers: 0`, the same loop in the calling process). The difference is Ray Train's own
start and end (its controller, the worker group, the process group), paid once per imitation; the
end-to-end tests whose subject is not Ray Train use the local mode for it (README, "The two commands").

    python benchmarks/train_start.py [--repeats 2] [--out benchmarks/out/train_start.json]

One local Ray cluster for every fit; the first fit of each mode also starts Ray Data's workers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/train_start.json")
    args = parser.parse_args()

    import ray

    from lion_distill.config.models import TrainConfig
    from lion_distill.tiny import build_tiny_models
    from lion_distill.train.loop import fit

    model = str(build_tiny_models().llama)
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = ray.data.from_items(
        [{"instruction": f"Say {i}.", "input": "", "response": f"The number {i}."} for i in range(12)]
    )
    seconds: dict[int, list[float]] = {1: [], 0: []}
    with tempfile.TemporaryDirectory(prefix="train-start-") as tmp:
        for workers in seconds:
            for repeat in range(args.repeats):
                cfg = TrainConfig(num_workers=workers, epochs=1, batch_size=8, max_length=64)
                begin = time.perf_counter()
                fit(cfg, model, rows, f"{tmp}/w{workers}-{repeat}", name=f"start-w{workers}-{repeat}", kind="causal")
                seconds[workers].append(round(time.perf_counter() - begin, 1))
    ray.shutdown()
    print("| path | fit seconds (each repeat) |\n|---|---|")
    print(f"| Ray Train, 1 worker | {', '.join(map(str, seconds[1]))} |")
    print(f"| Ray Train local mode (num_workers: 0) | {', '.join(map(str, seconds[0]))} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seconds": seconds, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
