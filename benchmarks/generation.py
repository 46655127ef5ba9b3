"""Generation throughput: bare vLLM vs our Ray Data vllm and hf paths, and our
openai path vs the server-limited maximum and a one-request-at-a-time client.

    .venv/bin/python benchmarks/generation.py [--prompts 64] [--max-tokens 32] [--out benchmarks/out/generation.json]

Same prompts and model (the tiny LLaMA) for every local path. Ray Data's vLLM
engine starts inside the stage, so its steady state is measured by difference:
(tokens of a 2N run - tokens of an N run) / (time 2N - time N).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prompts(n: int) -> list[dict]:
    return [{"id": f"p{i}", "instruction": f"Write a short story about a robot number {i}.", "input": ""} for i in range(n)]


def bare_vllm(model: str, rows: list[dict], max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from engine.llm.prompts import instruction_messages

    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True)
    start = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    t1 = time.perf_counter()
    outs = llm.chat([instruction_messages(r) for r in rows], params, use_tqdm=False)
    gen = time.perf_counter() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    return {"start_s": start, "generate_s": gen, "tokens": tokens, "tokens_per_s": tokens / gen}


def ours(role, rows: list[dict]) -> tuple[float, int]:
    import ray

    from engine.llm import generate
    from engine.llm.prompts import instruction_messages

    t0 = time.perf_counter()
    _, rec = generate(role, ray.data.from_items(rows), instruction_messages, stage="bench", role_name="bench")
    assert rec.failed_rows == 0, rec.summary()
    return time.perf_counter() - t0, rec.completion_tokens


def ray_vllm(model: str, rows: list[dict], max_tokens: int) -> dict:
    from engine.config.models import Parallelism, RoleConfig, SamplingParams

    role = RoleConfig(backend="vllm", model=model, max_model_len=512, sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                      parallelism=Parallelism(batch_size=len(rows)))
    t_n, tok_n = ours(role, rows)
    t_2n, tok_2n = ours(role, rows + [{**r, "id": r["id"] + "b"} for r in rows])
    steady = (tok_2n - tok_n) / max(t_2n - t_n, 1e-9)
    return {"total_s": t_n, "tokens": tok_n, "tokens_per_s_with_start": tok_n / t_n, "tokens_per_s_steady": steady}


def hf(model: str, rows: list[dict], max_tokens: int) -> dict:
    from engine.config.models import Parallelism, RoleConfig, SamplingParams

    role = RoleConfig(backend="hf", model=model, sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                      parallelism=Parallelism(batch_size=len(rows)))
    t, tok = ours(role, rows)
    return {"total_s": t, "tokens": tok, "tokens_per_s_with_start": tok / t}


def api(n: int, latency_s: float, concurrency: int) -> dict:
    import openai

    from engine.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
    from engine.llm.fault_server import FaultServer

    with FaultServer(latency_s=latency_s) as server:
        role = RoleConfig(backend="openai", model="fake", sampling=SamplingParams(max_tokens=8),
                          parallelism=Parallelism(batch_size=n),
                          openai=OpenAIEndpoint(base_url=server.base_url, max_concurrent_requests=concurrency,
                                                requests_per_minute=10**7, tokens_per_minute=10**9))
        ours(role, prompts(8))  # warm: actor pool, gate actor
        t, _ = ours(role, prompts(n))
        client = openai.OpenAI(api_key="EMPTY", base_url=server.base_url)
        k = 20
        t0 = time.perf_counter()
        for r in prompts(k):
            client.chat.completions.create(model="fake", messages=[{"role": "user", "content": r["instruction"]}], max_tokens=8)
        serial = k / (time.perf_counter() - t0)
    limit = concurrency / latency_s
    return {"requests": n, "latency_s": latency_s, "concurrency": concurrency, "requests_per_s": n / t,
            "server_limited_max_per_s": limit, "ratio_to_max": n / t / limit, "one_at_a_time_per_s": serial}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--api-requests", type=int, default=1280)
    parser.add_argument("--out", default="benchmarks/out/generation.json")
    args = parser.parse_args()

    import ray

    from engine.tiny import build_tiny_models

    model = str(build_tiny_models().llama)
    rows = prompts(args.prompts)
    results = {"model": "tiny LLaMA (2 layers, 128 wide, head_dim 64)", "prompts": args.prompts, "max_tokens": args.max_tokens}
    results["bare_vllm"] = bare_vllm(model, rows, args.max_tokens)
    ray.init(num_cpus=6, include_dashboard=False, object_store_memory=512 << 20, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    results["ray_vllm"] = ray_vllm(model, rows, args.max_tokens)
    results["hf"] = hf(model, rows, args.max_tokens)
    results["api"] = api(args.api_requests, 0.1, 64)
    ray.shutdown()
    bare = results["bare_vllm"]["tokens_per_s"]
    table = [
        ("bare vllm.LLM (steady)", bare, 1.0),
        ("Ray Data vllm (steady)", results["ray_vllm"]["tokens_per_s_steady"], results["ray_vllm"]["tokens_per_s_steady"] / bare),
        ("Ray Data vllm (with start)", results["ray_vllm"]["tokens_per_s_with_start"], results["ray_vllm"]["tokens_per_s_with_start"] / bare),
        ("Ray Data hf (with start)", results["hf"]["tokens_per_s_with_start"], results["hf"]["tokens_per_s_with_start"] / bare),
    ]
    print(f"{'path':<30}{'tokens/s':>12}{'x bare':>10}")
    for name, tps, ratio in table:
        print(f"{name:<30}{tps:>12.0f}{ratio:>10.2f}")
    a = results["api"]
    print(f"openai path: {a['requests_per_s']:.0f} req/s = {a['ratio_to_max']:.2f}x the server-limited "
          f"{a['server_limited_max_per_s']:.0f} req/s; one at a time: {a['one_at_a_time_per_s']:.1f} req/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
