"""What only a GPU can settle, in one prepared run of a few minutes: each step timed and skipped
once its share of the budget is spent, every figure in one JSON (docs/gpu.md says how to run it).

    python benchmarks/gpu_smoke.py --out "$OUT/gpu_smoke.json"         # on a lent GPU (default budget 480 s)
    python benchmarks/gpu_smoke.py --dry-run --out /tmp/gpu_smoke.json  # here: every step on CPU, tiny sizes

Needs torch, transformers, peft and bitsandbytes only: no Ray, no vLLM, no network (a lent GPU
machine has none of them). Models are random, built from their configs and saved to a scratch
folder so that the real loading code runs; the tokenizer is the repository's tiny one
(lion_distill.tiny). The process is one NCCL rank (gloo with --dry-run).

Steps (share of the budget):
- env (5%): torch, CUDA, NCCL and driver versions, the device, its memory and dense bf16 peak
  (lion_distill.train.flops, or --peak-flops for a GPU the table does not name), an all-reduce on the rank.
- mfu (20%): benchmarks/training.py's MFU run on the 1.1B LLaMA shape, without and with activation
  checkpointing: tokens/s, MFU, peak memory.
- llama (15%) and t5 (15%): a 1.1B LLaMA and a T5-v1.1-base (its head its own, as v1.1's checkpoints
  hold it) through load_sharded (meta init, FSDP2, bf16 mixed precision): finite losses, the bf16 loss
  against fp32 from_pretrained's on one batch, peak memory at accumulation 1 and 4 (sharded gradients:
  about equal), the T5's embeddings one weight and its head another after a step; the T5 exported in bf16.
- checkpoint (20%): a smaller LLaMA's checkpoint saved on the GPU, loaded on two CPU ranks (gloo),
  exported there in bf16, reloaded and compared with the GPU's weights.
- qlora (15%): a 4-bit NF4 base (bitsandbytes on CUDA, kept out of FSDP2 by ignored_params) with a
  LoRA adapter: steps, peak memory, the merged bf16 export.
- generate (10%): greedy generation with transformers from the exports.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import training  # noqa: E402  (benchmarks/training.py, beside this file)

from lion_distill.train import step  # noqa: E402
from lion_distill.train.checkpoint import export_hf, load_checkpoint, save_checkpoint  # noqa: E402
from lion_distill.train.targets import LABEL_TASK, RATIONALE_TASK  # noqa: E402

# 1.1B LLaMA (benchmarks/training.py's MFU shape), a 4-layer one for checkpoints and QLoRA, T5-v1.1-base.
SIZES = {
    "gpu": {
        "llama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32),
        "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16),
        "t5": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
        "vocab": 32_000,
        "causal_batch": (4, 1024),  # rows, tokens
        "seq2seq_batch": (8, 512, 128),  # rows, input tokens, target tokens
        "mfu": ["--batch-size", "4", "--seq-len", "2048", "--steps", "8", "--warmup", "2"],
    },
    "dry": {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        "t5": dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2),
        "vocab": 2048,
        "causal_batch": (2, 16),
        "seq2seq_batch": (2, 12, 6),
        "mfu": ["--hidden", "64", "--intermediate", "128", "--layers", "2", "--heads", "2", "--kv-heads", "2"]
        + ["--vocab", "2048", "--batch-size", "2", "--seq-len", "32", "--steps", "2", "--warmup", "1"],
    },
}
SHARES = {"env": 0.05, "mfu": 0.20, "llama": 0.15, "t5": 0.15, "checkpoint": 0.20, "qlora": 0.15, "generate": 0.10}
STEP = dict(training.MFU_STEP, learning_rate=1e-4)


class Run:
    """What the steps share: the device, the sizes, the scratch folder, the exports, the clock."""

    def __init__(self, args):
        self.dry = args.dry_run
        self.device = torch.device("cpu") if self.dry else torch.device("cuda", 0)
        self.size = SIZES["dry" if self.dry else "gpu"]
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-smoke-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.exports: dict[str, Path] = {}
        self.deadline = 0.0
        self.peak_flops = args.peak_flops  # None: the device's by its exact name (lion_distill.train.flops)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def peak_memory(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 1e9 if self.device.type == "cuda" else None

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def tokenizer(self) -> Path:
        from lion_distill.tiny import build_tiny_models

        return build_tiny_models(self.work / "tiny").tokenizer


def saved_model(run: Run, name: str, architecture: str, shape: dict) -> str:
    """A random model of `shape`, saved with the tiny tokenizer, as a student folder is."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    folder = run.work / name
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer())
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if architecture == "causal":
        heads = shape["num_attention_heads"]
        config = LlamaConfig(**shape, num_key_value_heads=max(1, heads // 8), vocab_size=run.size["vocab"], **ids)
        model = LlamaForCausalLM(config)
    else:  # T5 v1.1: gated GELU; no dropout, so that two forwards of one batch compare
        config = T5Config(**shape, vocab_size=run.size["vocab"], feed_forward_proj="gated-gelu", dropout_rate=0.0)
        config.decoder_start_token_id = tokenizer.pad_token_id
        model = T5ForConditionalGeneration(config)
        # Its head of its own, as T5 v1.1's checkpoints hold one (transformers 5 configures it tied).
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
        model.all_tied_weights_keys.pop("lm_head.weight")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def random_batch(run: Run, architecture: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = run.size["vocab"]
    if architecture == "causal":
        rows, tokens = run.size["causal_batch"]
        ids = torch.randint(3, vocab, (rows, tokens), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    rows, source, target = run.size["seq2seq_batch"]
    ids = torch.randint(3, vocab, (rows, source), generator=g)
    task = torch.tensor([LABEL_TASK, RATIONALE_TASK] * (rows // 2))  # both tasks, as collate_seq2seq pairs them
    labels = torch.randint(3, vocab, (rows, target), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "task": task}


def train_step(model, optimizer, scheduler, batches: list[dict], cfg, device) -> float:
    """One optimizer step over `batches` (accumulated), as lion_distill.train.loop takes it."""
    tokens = sum(step.target_tokens(b, cfg.architecture) for b in batches)
    loss = sum(step.backward(model, b, cfg, device, tokens=tokens) for b in batches)
    step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    return loss


def sharded_training(run: Run, folder: str, architecture: str) -> tuple[dict, object]:
    """load_sharded on this rank, bf16 against fp32 on one batch, a step at accumulation 1 and 4."""
    cfg = SimpleNamespace(**{**STEP, "architecture": architecture})
    batch = random_batch(run, architecture, seed=0)
    reference = step.load_model(folder, architecture).to(run.device).eval()  # fp32, no FSDP, no autocast
    with torch.no_grad():
        fp32 = float(step.batch_loss(reference, {k: v.to(run.device) for k, v in batch.items()}, architecture, 1.0))
    del reference
    run.reset_memory()
    model = step.load_sharded(folder, architecture, run.device)
    figures = {"load_peak_memory_gb": run.peak_memory()}
    with torch.no_grad():
        model.eval()
        mixed = float(step.batch_loss(model, {k: v.to(run.device) for k, v in batch.items()}, architecture, 1.0))
        model.train()
    figures.update(loss_fp32=fp32, loss_mixed_precision=mixed, relative_difference=abs(mixed - fp32) / abs(fp32))
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=4)
    for accumulation in (1, 4):
        if run.left() <= 0:
            figures[f"accumulation_{accumulation}"] = "skipped: the step's share was spent"
            continue
        run.reset_memory()
        began = time.perf_counter()
        micro = [random_batch(run, architecture, seed=1 + i) for i in range(accumulation)]
        loss = train_step(model, optimizer, scheduler, micro, cfg, run.device)
        figures[f"accumulation_{accumulation}"] = {
            "loss": loss,
            "finite": bool(torch.isfinite(torch.tensor(loss))),
            "peak_memory_gb": run.peak_memory(),
            "step_s": time.perf_counter() - began,
        }
    return figures, model


def step_env(run: Run) -> dict:
    import peft
    import transformers

    from lion_distill.train.flops import device_peak_flops

    probe = torch.ones(1, device=run.device)
    dist.all_reduce(probe)
    figures = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "backend": dist.get_backend(),
        "all_reduce": float(probe),
    }
    try:
        import bitsandbytes

        figures["bitsandbytes"] = bitsandbytes.__version__
    except ImportError as e:
        figures["bitsandbytes"] = f"not importable: {e}"
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        figures.update(
            device=torch.cuda.get_device_name(run.device),
            capability=f"{props.major}.{props.minor}",
            memory_gb=props.total_memory / 1e9,
            cuda=torch.version.cuda,
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            bf16=torch.cuda.is_bf16_supported(),
            driver=_nvidia_smi("driver_version"),
        )
    figures["peak_bf16_flops"] = run.peak_flops or device_peak_flops()  # what the mfu step divides by
    return figures


def _nvidia_smi(field: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True)
    except OSError:
        return None
    return out.stdout.decode().strip() or None


def step_mfu(run: Run) -> dict:
    figures = {}
    for checkpointing in (False, True):
        key = "with_activation_checkpointing" if checkpointing else "without_activation_checkpointing"
        if run.left() <= 0:
            figures[key] = "skipped: the step's share was spent"
            continue
        argv = ["--mode", "mfu", "--device", run.device.type, *run.size["mfu"]]
        argv += ["--peak-flops", str(run.peak_flops)] if run.peak_flops else []
        args = training.parser().parse_args(argv + (["--activation-checkpointing"] if checkpointing else []))
        figures[key] = training.mfu_run(args, run.device)
        run.reset_memory()
    return figures


def step_llama(run: Run) -> dict:
    figures, model = sharded_training(run, saved_model(run, "llama", "causal", run.size["llama"]), "causal")
    del model
    return figures


def step_t5(run: Run) -> dict:
    folder = saved_model(run, "t5", "seq2seq", run.size["t5"])
    names = ("shared", "encoder.embed_tokens", "decoder.embed_tokens")
    figures, model = sharded_training(run, folder, "seq2seq")
    figures["embeddings_one_weight_after_a_step"] = len({id(model.get_submodule(n).weight) for n in names}) == 1
    figures["head_its_own_after_a_step"] = model.lm_head.weight is not model.shared.weight
    run.exports["t5"] = run.work / "t5-export"
    export_hf(model, folder, str(run.exports["t5"]), dtype=torch.bfloat16)
    return figures


def step_checkpoint(run: Run) -> dict:
    """Saved by this GPU rank, loaded and exported by two CPU ranks: the weights come back exact."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    folder = saved_model(run, "small", "causal", run.size["small"])
    cfg = SimpleNamespace(**STEP)
    model = step.load_sharded(folder, "causal", run.device)
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=4)
    train_step(model, optimizer, scheduler, [random_batch(run, "causal", seed=7)], cfg, run.device)
    checkpoint = run.work / "checkpoint"
    save_checkpoint(checkpoint, model, optimizer, scheduler, {"step": 1})
    trained = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    del model, optimizer
    run.exports["llama"] = run.work / "llama-export"
    began = time.perf_counter()
    torch.multiprocessing.start_processes(
        _cpu_rank,
        args=(2, str(run.work / "rendezvous"), folder, str(checkpoint), str(run.exports["llama"])),
        nprocs=2,
        start_method="spawn",
    )
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(run.exports["llama"], dtype="auto").state_dict()
    differences = [float((reloaded[k].float() - v.to(torch.bfloat16).float()).abs().max()) for k, v in trained.items()]
    config = json.loads((run.exports["llama"] / "config.json").read_text())
    return {
        "two_cpu_ranks_s": time.perf_counter() - began,
        "weights": len(trained),
        "max_abs_difference": max(differences),
        "exact": max(differences) == 0.0,
        "export_dtype": {str(v.dtype) for v in reloaded.values()}.pop(),
        "config_dtype": config.get("dtype"),
    }


def _cpu_rank(rank: int, world: int, rendezvous: str, folder: str, checkpoint: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        cpu = torch.device("cpu")
        model = step.load_sharded(folder, "causal", cpu)
        optimizer, scheduler = step.build_optimizer(model, SimpleNamespace(**STEP), total_steps=4)
        load_checkpoint(checkpoint, model, optimizer, scheduler)
        export_hf(model, folder, out, dtype=torch.bfloat16)
        dist.barrier()  # no rank tears down while the other still talks to it
        del model, optimizer, scheduler
    finally:
        # FSDP2's modules hold references in cycles: freed while the group is up, or a rank can
        # abort in gloo at exit (tests/fixtures/gloo_ranks.py)
        gc.collect()
        dist.destroy_process_group()


def step_qlora(run: Run) -> dict:
    from lion_distill.train import lora

    settings = SimpleNamespace(r=8, alpha=16.0, dropout=0.0, target_modules=None, load_in_4bit=True)
    folder = (
        str(run.work / "small")
        if (run.work / "small").is_dir()
        else saved_model(run, "small", "causal", run.size["small"])
    )
    run.reset_memory()
    model = step.load_sharded(
        folder,
        "causal",
        run.device,
        adapt=lora.adapter(settings, "causal"),
        quantization=lora.quantization(settings, run.device),
    )
    cfg = SimpleNamespace(**{**STEP, "learning_rate": 1e-3})
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=3)
    batch = random_batch(run, "causal", seed=3)
    losses = [train_step(model, optimizer, scheduler, [batch], cfg, run.device) for _ in range(3)]
    run.exports["qlora"] = run.work / "qlora-export"
    lora.export(model, folder, str(run.exports["qlora"]), dtype=torch.bfloat16)
    return {
        "losses": losses,
        "finite": all(torch.isfinite(torch.tensor(losses))),
        "four_bit_weights": len(step.quantised_parameters(model)),
        "peak_memory_gb": run.peak_memory(),
    }


def step_generate(run: Run) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    figures = {}
    for name, folder in run.exports.items():
        if run.left() <= 0:
            figures[name] = "skipped: the step's share was spent"
            continue
        cls = AutoModelForSeq2SeqLM if name == "t5" else AutoModelForCausalLM
        model = cls.from_pretrained(folder, dtype="auto").to(run.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompt = tokenizer(["Name three primary colours."], return_tensors="pt").to(run.device)
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out.shape[1] - (0 if model.config.is_encoder_decoder else prompt["input_ids"].shape[1])
        figures[name] = {"dtype": str(model.dtype), "new_tokens": int(new), "seconds": time.perf_counter() - began}
    return figures


STEPS = {
    "env": step_env,
    "mfu": step_mfu,
    "llama": step_llama,
    "t5": step_t5,
    "checkpoint": step_checkpoint,
    "qlora": step_qlora,
    "generate": step_generate,
}


def run_steps(run: Run, budget_s: float, out: Path) -> dict:
    """Each step may run until its share of the budget, and what earlier steps left, is spent."""
    start, spent_share = time.monotonic(), 0.0
    report = {"dry_run": run.dry, "budget_s": budget_s, "steps": {}}
    for name, measure in STEPS.items():
        spent_share += SHARES[name]
        run.deadline = start + budget_s * spent_share
        if run.left() <= 0:
            report["steps"][name] = {"status": "skipped", "reason": "the budget was spent before it began"}
            continue
        began = time.monotonic()
        try:
            report["steps"][name] = {"status": "ok", "figures": measure(run)}
        except Exception as e:  # one step's failure is a figure too; the rest still run
            tail = traceback.format_exc().strip().splitlines()[-6:]
            report["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:600], "traceback": tail}
        report["steps"][name]["seconds"] = round(time.monotonic() - began, 2)
        run.reset_memory()
        report["total_s"] = round(time.monotonic() - start, 2)
        out.write_text(json.dumps(report, indent=2, default=str))  # a run cut short keeps what it measured
        print(f"{name}: {report['steps'][name]['status']} in {report['steps'][name]['seconds']:.1f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny sizes (gloo, no CUDA)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="all steps together (a lent run's command: 600 s)")
    ap.add_argument("--out", default="benchmarks/out/gpu_smoke.json")
    ap.add_argument("--work", help="scratch folder for the models and exports (default: a new temporary one)")
    ap.add_argument(
        "--peak-flops",
        type=float,
        help="dense bf16 peak of the device for MFU; default: its own by the exact name CUDA reports "
        "(lion_distill.train.flops.PEAK_BF16_FLOPS), else no MFU",
    )
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --dry-run for the CPU pass")
    if args.dry_run:  # one thread a process, as Ray's workers run: on a few shared cores more threads only contend
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the spawned CPU ranks of `checkpoint`
    run = Run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.device.type == "cuda":
        torch.cuda.set_device(run.device)
    dist.init_process_group(
        "gloo" if args.dry_run else "nccl", init_method=f"file://{run.work / 'rank0'}", rank=0, world_size=1
    )
    try:
        report = run_steps(run, args.budget_s, out)
    finally:
        dist.destroy_process_group()
    failed = [n for n, s in report["steps"].items() if s["status"] == "failed"]
    print(f"wrote {out} ({report['total_s']:.0f} s); failed: {', '.join(failed) or 'none'}")


if __name__ == "__main__":
    main()
