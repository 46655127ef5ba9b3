"""Generation throughput: bare vLLM vs our Ray Data vllm and hf paths, and our
openai path vs the server-limited maximum and a one-request-at-a-time client.

    .venv/bin/python benchmarks/generation.py [--prompts 1024] [--max-tokens 64] [--only all|local|api]
        [--out benchmarks/out/generation.json]

Same prompts and model (a random 4-layer, 256-wide LLaMA built here) for every
local path, greedy. Start-up and generation are reported apart: bare vLLM times
`LLM(...)` and `llm.chat` separately; our vllm path's steady state is the vLLM
operator's task wall time from Ray Data's stats (one batch of all prompts: the
engine starts in the actor's constructor, outside that time). The openai path
runs against tests/fixtures/fault_server.py in its own process (fixed latency a request),
batched as a stage batches it; its steady state is counted by the server: requests
answered over the span from the first one's arrival to the last answer, which
excludes the actors' start, the Ray Data plan and collecting the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prompts(n: int) -> list[dict]:
    return [
        {"id": f"p{i}", "instruction": f"Write a short story about a robot number {i}.", "input": ""} for i in range(n)
    ]


MODEL_DESC = "random LLaMA, 4 layers, 256 wide, 4 heads (head_dim 64), MLP 1024, the tiny 2,048-token tokenizer"
SMOL_DESC = "SmolLM2-135M-Instruct (lion_distill.smol), float32"


def build_instruct() -> Path:
    from lion_distill.smol import build_instruct as build

    return build()


def bigger_llama() -> Path:
    """A random LLaMA big enough that generating, not starting the engine, dominates."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from lion_distill.tiny import DEFAULT_CACHE, build_tiny_models

    out = DEFAULT_CACHE / "bench-llama-4x256"
    if (out / "config.json").exists():
        return out
    tok = build_tiny_models().tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok)
    torch.manual_seed(0)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **ids,
    )
    tmp = out.with_name(out.name + ".tmp")
    LlamaForCausalLM(config).save_pretrained(tmp)
    GenerationConfig(**ids).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def bare_vllm(model: str, rows: list[dict], max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from lion_distill.llm.prompts import instruction_messages

    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    start = time.perf_counter() - t0
    # Same requests as our path: greedy, max_tokens, ignore_eos so both generate exactly max_tokens.
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    t1 = time.perf_counter()
    outs = llm.chat([instruction_messages(r) for r in rows], params, use_tqdm=False)
    gen = time.perf_counter() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    import gc

    gc.collect()
    return {
        "start_s": start,
        "generate_s": gen,
        "tokens": tokens,
        "tokens_per_s": tokens / gen,
        "tokens_per_s_with_start": tokens / (start + gen),
        "load_avg_1m_after": os.getloadavg()[0],
    }


def ours(role, rows: list[dict], with_stats: bool = False):
    import ray

    from lion_distill.llm import generate
    from lion_distill.llm.prompts import instruction_messages

    t0 = time.perf_counter()
    out, rec = generate(role, ray.data.from_items(rows), instruction_messages, stage="bench", role_name="bench")
    t = time.perf_counter() - t0
    assert rec.failed_rows == 0, rec.summary()
    return (t, rec.completion_tokens, out.stats()) if with_stats else (t, rec.completion_tokens)


def vllm_stage_wall_s(stats: str, operator: str = "vLLMEngineStage") -> float | None:
    """An operator's summed task wall time from `Dataset.stats()` text (None if absent)."""
    import re

    for block in stats.split("Operator ")[1:]:
        if operator in block.splitlines()[0]:
            m = re.search(r"Remote wall time:.*?([0-9.]+)(ms|s|us) total", block)
            if m:
                return float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]
    return None


def ray_vllm(model: str, rows: list[dict], max_tokens: int) -> dict:
    """End to end, and steady state from Ray Data's own per-operator stats: the vLLM
    operator's task wall time. With one batch (batch_size = all prompts, as bare
    llm.chat gets them all at once) that is one task: the batch's trip through the
    engine, after the actor's constructor (where the engine starts) has returned."""
    from lion_distill.config.models import Parallelism, RoleConfig, SamplingParams

    role = RoleConfig(
        backend="vllm",
        model=model,
        max_model_len=512,
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        parallelism=Parallelism(batch_size=len(rows)),
    )
    t, tok, stats = ours(role, rows, with_stats=True)
    stage = vllm_stage_wall_s(stats)
    return {
        "total_s": t,
        "tokens": tok,
        "tokens_per_s_with_start": tok / t,
        "vllm_stage_task_wall_s": stage,
        "tokens_per_s_steady": tok / stage if stage else None,
        "load_avg_1m_after": os.getloadavg()[0],
        "ray_data_stats": stats,
    }


def hf(model: str, rows: list[dict], max_tokens: int) -> dict:
    from lion_distill.config.models import Parallelism, RoleConfig, SamplingParams

    role = RoleConfig(
        backend="hf",
        model=model,
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        parallelism=Parallelism(batch_size=len(rows)),
    )
    t, tok = ours(role, rows)
    return {"total_s": t, "tokens": tok, "tokens_per_s_with_start": tok / t}


def api(seconds_at_max: float, latency_s: float, concurrency: int, replicas: int = 1) -> dict:
    """Our openai path as a stage runs it (Ray Data, the default batch size, `replicas`
    actors sharing `concurrency` in flight, the shared gate) against a server in its own
    process that answers every request after `latency_s`: enough requests for
    `seconds_at_max` at the server-limited maximum. End to end includes the stage's fixed
    cost (Ray Data plan, actors' start, collecting); steady state is the server's own
    count over the span from the first request's arrival to the last answer."""
    import openai

    from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams

    limit = concurrency / latency_s
    n = int(seconds_at_max * limit)
    # The server in its own process, so the client and the driver (Ray Data's executor) do
    # not share a GIL with it; it prints its base URL, then serves until terminated.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.fault_server", str(latency_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    base_url = proc.stdout.readline().strip()
    try:
        role = RoleConfig(
            backend="openai",
            model="fake",
            sampling=SamplingParams(max_tokens=8),
            parallelism=Parallelism(replicas=replicas),
            openai=OpenAIEndpoint(
                base_url=base_url,
                max_concurrent_requests=concurrency // replicas,
                requests_per_minute=10**7,
                tokens_per_minute=10**9,
            ),
        )
        ours(role, prompts(8))  # warm: gate actor, imports
        t_small, _ = ours(role, prompts(8))  # the stage's fixed cost, about
        server_window(base_url)
        t, _ = ours(role, prompts(n))
        window = server_window(base_url)
        assert window["answered"] == n, window
        client = openai.OpenAI(api_key="EMPTY", base_url=base_url)
        k = 20
        t0 = time.perf_counter()
        for r in prompts(k):
            client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": r["instruction"]}], max_tokens=8
            )
        serial = k / (time.perf_counter() - t0)
        # A bare loop has no fixed cost: 10 s of work at the maximum measures its rate.
        bare_n = min(n, int(10 * limit))
        bare = bare_client(base_url, bare_n, concurrency)
        bare_aio = bare_client(base_url, bare_n, concurrency, aiohttp=True)
    finally:
        proc.terminate()
        proc.wait(10)
    steady = n / window["span_s"]
    return {
        "requests": n,
        "latency_s": latency_s,
        "concurrency": concurrency,
        "replicas": replicas,
        "seconds": t,
        "requests_per_s": n / t,
        "server_limited_max_per_s": limit,
        "ratio_to_max": n / t / limit,
        "stage_fixed_cost_s": t_small,
        "server_span_s": window["span_s"],
        "requests_per_s_steady": steady,
        "ratio_to_max_steady": steady / limit,
        "one_at_a_time_per_s": serial,
        "bare_client": bare,
        "bare_client_aiohttp": bare_aio,
        "load_avg_1m_after": os.getloadavg()[0],
    }


def server_window(base_url: str) -> dict:
    """The fault server's count of answered requests and their span since the last call."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/_window") as r:
        return json.load(r)


def bare_client(base_url: str, n: int, concurrency: int, aiohttp: bool = False) -> dict:
    """The machine's own ceiling for this client: the same requests through a bare
    AsyncOpenAI (no Ray, no gate, no cache), `concurrency` in flight, in this process;
    httpx transport (the default) or openai's aiohttp one (what our path uses)."""
    import asyncio

    import openai

    async def run() -> float:
        http = openai.DefaultAioHttpClient() if aiohttp else None
        client = openai.AsyncOpenAI(api_key="EMPTY", base_url=base_url, http_client=http)
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                await client.chat.completions.create(
                    model="fake", messages=[{"role": "user", "content": r["instruction"]}], max_tokens=8
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for r in prompts(n)))
        t = time.perf_counter() - t0
        await client.close()
        return t

    c0 = time.process_time()
    t = asyncio.run(run())
    return {"requests_per_s": n / t, "cpu_ms_per_request": (time.process_time() - c0) / n * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--api-seconds", type=float, default=10.0, help="work per API run, at the server-limited max")
    parser.add_argument("--only", choices=["all", "local", "api"], default="all")
    parser.add_argument("--out", default="benchmarks/out/generation.json")
    parser.add_argument(
        "--model",
        choices=["random", "smol"],
        default="random",
        help="smol: the real SmolLM2-135M-Instruct (lion_distill.smol); its answers end at eos",
    )
    args = parser.parse_args()

    import ray

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and args.only != "all" else {}
    results["load_avg_1m_before"] = os.getloadavg()[0]
    if args.only in ("all", "local"):
        model = str(bigger_llama() if args.model == "random" else build_instruct())
        rows = prompts(args.prompts)
        results.update(
            {
                "model": MODEL_DESC if args.model == "random" else SMOL_DESC,
                "prompts": args.prompts,
                "max_tokens": args.max_tokens,
            }
        )
        results["bare_vllm"] = bare_vllm(model, rows, args.max_tokens)
    ray.init(
        address="local",
        num_cpus=6,
        include_dashboard=False,
        object_store_memory=512 << 20,
        log_to_driver=False,
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "RAY_DATA_USE_DATASOURCE_V2": "0"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.only in ("all", "local"):
        results["ray_vllm"] = ray_vllm(model, rows, args.max_tokens)
        results["hf"] = hf(model, rows[:128], args.max_tokens)
    if args.only in ("all", "api"):
        results["api"] = [
            api(args.api_seconds, 0.1, 64),
            api(args.api_seconds, 0.1, 64, replicas=2),
            api(args.api_seconds / 2.5, 0.1, 256),
            api(args.api_seconds / 2.5, 0.1, 256, replicas=2),
        ]
    ray.shutdown()
    if "bare_vllm" in results:
        bare = results["bare_vllm"]["tokens_per_s"]
        rv = results["ray_vllm"]
        table = [
            ("bare vllm.LLM (generate only)", bare),
            ("bare vllm.LLM (with start)", results["bare_vllm"]["tokens_per_s_with_start"]),
            ("Ray Data vllm (steady)", rv["tokens_per_s_steady"]),
            ("Ray Data vllm (with start)", rv["tokens_per_s_with_start"]),
            ("Ray Data hf (with start, 128 prompts)", results["hf"]["tokens_per_s_with_start"]),
        ]
        print(f"{'path':<40}{'tokens/s':>12}{'x bare':>10}")
        for name, tps in table:
            print(f"{name:<40}{tps:>12.0f}{tps / bare:>10.2f}")
    for a in results.get("api", []):
        steady = a.get("requests_per_s_steady") or float("nan")
        print(
            f"openai path, {a['concurrency']} in flight over {a.get('replicas', 1)} actor(s): {a['requests_per_s']:.0f} req/s = {a['ratio_to_max']:.2f}x the "
            f"server-limited {a['server_limited_max_per_s']:.0f} req/s end to end ({a['requests']} requests, "
            f"{a['seconds']:.1f} s; stage fixed cost {a['stage_fixed_cost_s']:.1f} s); steady state {steady:.0f} req/s = "
            f"{steady / a['server_limited_max_per_s']:.2f}x (server span {a['server_span_s']:.1f} s); bare AsyncOpenAI "
            f"here: httpx {a['bare_client']['requests_per_s']:.0f}, aiohttp {a['bare_client_aiohttp']['requests_per_s']:.0f} "
            f"req/s; one at a time: {a['one_at_a_time_per_s']:.1f} req/s"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
