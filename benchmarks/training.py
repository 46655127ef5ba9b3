"""Student training throughput.

    python benchmarks/training.py                 # CPU: Ray Train + FSDP2 (2 workers) vs a plain torch loop
    python benchmarks/training.py --mode mfu      # no Ray: a 1B-class LLaMA-shaped model in bf16 on a GPU, MFU
    python benchmarks/training.py --mode mfu --device cpu --hidden 128 --intermediate 256 --layers 2 --heads 2 \
        --kv-heads 2 --vocab 2048 --seq-len 64 --steps 5 --out benchmarks/out/training_mfu_cpu.json

`ray` mode trains the tiny LLaMA on the same synthetic instruction set both ways and
reports samples/s and tokens/s (training loop only, and end to end for Ray) and the
overhead ratio. `mfu` mode runs `lion_distill.train.step` bare (FSDP2 over a one-rank
process group, or every rank under torchrun) on random tokens: MFU is the model's FLOPs
(lion_distill.train.flops: 6N without the embedding plus attention's 12 L w T a token) over
the timed steps' seconds and the GPU's dense bf16 peak (looked up by its exact name, or
--peak-flops), with the peak memory the steps allocated. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lion_distill.train import step
from lion_distill.train.flops import mfu, model_flops, peak_flops

# The optimizer and loss settings `mfu` mode trains with (as TrainConfig names them): a plain object,
# so benchmarks/gpu_smoke.py runs this on a machine with torch and transformers only (no pydantic).
MFU_STEP = dict(
    architecture="causal",
    learning_rate=1e-4,
    weight_decay=0.0,
    warmup_ratio=0.0,
    lr_schedule="cosine",
    max_grad_norm=1.0,
    rationale_weight=1.0,
    label_weight=1.0,
)


def synthetic_rows(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Write the numbers from {i} to {i + 5}.",
            "input": "" if i % 3 else "as words",
            "response": " ".join(str(i + k) for k in range(6)),
        }
        for i in range(n)
    ]


def plain_loop(model_path: str, rows: list[dict], cfg) -> dict:
    """The reference: one process, no Ray, no FSDP, same step code and data. One
    thread, like each Ray worker (Ray sets OMP_NUM_THREADS=1): on this 2-core box
    two intra-op threads measured 15x slower (10 vs 151 samples/s) under shared load."""
    from lion_distill.train import batches

    torch.set_num_threads(1)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    tokens = batches.tokenize_causal(cols, tokenizer_path=model_path, max_length=cfg.max_length)
    pad = batches.load_tokenizer(model_path).pad_token_id
    model = step.setup_model(step.load_model(model_path, "causal"), torch.device("cpu"))
    n_batches = -(-len(rows) // cfg.batch_size)
    optimizer, scheduler = step.build_optimizer(model, cfg, n_batches * cfg.epochs)
    samples = n_tokens = 0
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for i in range(0, len(rows), cfg.batch_size):
            batch = batches.collate_causal({k: v[i : i + cfg.batch_size] for k, v in tokens.items()}, pad_id=pad)
            step.backward(model, batch, cfg, torch.device("cpu"))
            step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
            samples += batch["input_ids"].shape[0]
            n_tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {"samples_per_s": samples / seconds, "tokens_per_s": n_tokens / seconds, "loop_s": seconds}


def ray_mode(args) -> dict:
    import tempfile

    import ray

    from lion_distill.config.models import TrainConfig
    from lion_distill.tiny import build_tiny_models
    from lion_distill.train import train_causal_sft

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.model == "smol":  # the real layer-dropped student on SmolLM2's real answers
        from lion_distill.smol import STUDENT_LAYERS, build_student

        model_path = str(build_student(STUDENT_LAYERS))
        answers = Path(__file__).resolve().parent.parent / "data" / "smol" / "teacher_answers.jsonl"
        rows = [json.loads(line) for line in answers.read_text().splitlines()][: args.rows]
        model_desc = f"SmolLM2-135M-Instruct, {STUDENT_LAYERS} of 30 layers kept (lion_distill.smol)"
    else:
        model_path = str(build_tiny_models().llama)
        rows = synthetic_rows(args.rows)
        model_desc = "tiny LLaMA (2 layers, 128 wide)"
    cfg = TrainConfig(
        num_workers=2,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=1e-3,
        max_length=128 if args.model == "tiny" else 384,
        checkpoint_every_steps=10_000,
    )
    plain = plain_loop(model_path, rows, cfg)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 << 20, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        rec = train_causal_sft(cfg, model_path, ray.data.from_items(rows), f"{tmp}/student", name="bench").record
    ray.shutdown()
    fsdp = {
        "samples_per_s": rec.extra["samples_per_s"],
        "tokens_per_s": rec.extra["tokens_per_s"],
        "loop_s": rec.rows / rec.extra["samples_per_s"],
        "end_to_end_s": rec.seconds,
        "samples_per_s_end_to_end": rec.rows / rec.seconds,
    }
    return {
        "model": model_desc,
        "rows": len(rows),
        "epochs": args.epochs,
        "batch_size_per_worker": args.batch_size,
        "plain_torch_1_process": plain,
        "ray_train_fsdp2_2_workers": fsdp,
        "loop_ratio_ray_over_plain": fsdp["samples_per_s"] / plain["samples_per_s"],
        "end_to_end_ratio_ray_over_plain": fsdp["samples_per_s_end_to_end"] / plain["samples_per_s"],
    }


def mfu_mode(args) -> dict:
    import torch.distributed as dist

    device = torch.device(args.device)
    if not dist.is_initialized():  # torchrun sets RANK etc.; alone, a one-rank group still runs FSDP2
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        return mfu_run(args, device)
    finally:
        dist.destroy_process_group()


def mfu_run(args, device: torch.device) -> dict:
    """The timed steps on random tokens, in the process group that is up (one rank or torchrun's)."""
    from types import SimpleNamespace

    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = llama_shaped(args)
    params, counter = step.parameter_count(model), model_flops(model)
    model = step.setup_model(model, device, activation_checkpointing=args.activation_checkpointing)
    cfg = SimpleNamespace(**MFU_STEP, batch_size=args.batch_size)
    optimizer, scheduler = step.build_optimizer(model, cfg, args.steps + args.warmup)
    ids = torch.randint(0, args.vocab, (args.batch_size, args.seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        step.backward(model, batch, cfg, device)
        step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    world = dist.get_world_size()
    tokens_per_s = args.steps * args.batch_size * args.seq_len * world / seconds
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_flops or peak_flops(name)
    flops = counter.batch(batch) * args.steps * world
    del model, optimizer
    return {
        "device": name,
        "ranks": world,
        "params": params,
        "seq_len": args.seq_len,
        "batch_size_per_rank": args.batch_size,
        "activation_checkpointing": args.activation_checkpointing,
        "steps": args.steps,
        "tokens_per_s": tokens_per_s,
        "samples_per_s": tokens_per_s / args.seq_len,
        "model_flops_per_token": counter.batch(batch) / (args.batch_size * args.seq_len),
        "peak_flops_per_rank": peak,
        "mfu": mfu(flops, seconds, peak * world) if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }


def llama_shaped(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab,
        max_position_embeddings=args.seq_len,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def table(result: dict) -> str:
    if "mfu" in result:
        return (
            f"| device | ranks | params | tokens/s | MFU |\n| --- | ---: | ---: | ---: | ---: |\n"
            f"| {result['device']} | {result['ranks']} | {result['params']:,} | {result['tokens_per_s']:,.0f} | "
            f"{'n/a' if result['mfu'] is None else format(result['mfu'], '.2%')} |"
        )
    p, r = result["plain_torch_1_process"], result["ray_train_fsdp2_2_workers"]
    return (
        "| path | samples/s | tokens/s | x plain |\n| --- | ---: | ---: | ---: |\n"
        f"| plain torch loop, 1 process | {p['samples_per_s']:.1f} | {p['tokens_per_s']:,.0f} | 1.00 |\n"
        f"| Ray Train + FSDP2, 2 workers (loop) | {r['samples_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {result['loop_ratio_ray_over_plain']:.2f} |\n"
        f"| Ray Train + FSDP2, 2 workers (end to end, {r['end_to_end_s']:.0f} s) | {r['samples_per_s_end_to_end']:.1f} | | "
        f"{result['end_to_end_ratio_ray_over_plain']:.2f} |"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ray", "mfu"], default="ray")
    ap.add_argument("--out", default="benchmarks/out/training.json")
    ap.add_argument(
        "--rows", type=int, default=256, help="ray mode: synthetic instructions (smol: teacher answers, at most 64)"
    )
    ap.add_argument("--model", choices=["tiny", "smol"], default="tiny", help="ray mode: the model trained")
    ap.add_argument("--epochs", type=int, default=2, help="ray mode")
    ap.add_argument("--batch-size", type=int, default=8, help="per worker / rank")
    ap.add_argument("--device", default="cuda", help="mfu mode")
    ap.add_argument("--hidden", type=int, default=2048, help="mfu mode: LLaMA shape (default ~1.2B params)")
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="dense bf16 peak per rank; default: the GPU's by its exact name (lion_distill.train.flops), else no MFU",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = ray_mode(args) if args.mode == "ray" else mfu_mode(args)
    print(table(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
