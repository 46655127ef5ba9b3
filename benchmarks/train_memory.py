"""Host memory of a training worker while the student is set up: every rank loading
the full model before sharding (the old path) vs meta-device init on every rank and
rank 0 broadcasting the weights (`lion_distill.train.step.load_sharded`).

    python benchmarks/train_memory.py                      # 2 gloo ranks, a 126M-parameter LLaMA (480 MB in fp32)
    python benchmarks/train_memory.py --ranks 2 --layers 12 --out benchmarks/out/train_memory.json

Each rank is a fresh process (torch.multiprocessing spawn) that imports the same
modules, sets the model up and reports its resident memory before, its peak during
(VmHWM, reset first) and after; the model is built locally with random weights and
saved once. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def build_model(folder: str, args) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)  # loading needs config and weights only (a tokenizer only for the export)
    return sum(p.numel() for p in model.parameters())


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_peak() -> None:
    """Linux: the peak (VmHWM) restarts from the current RSS, so imports' transient peaks do not hide the setup's."""
    Path("/proc/self/clear_refs").write_text("5")


def _rank(rank: int, world: int, port: int, path: str, mode: str, out: str) -> None:
    # Imported before the baseline, so it measures the model, not modules both modes load.
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    from lion_distill.train import step

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    before = _status_mb("VmRSS")
    _reset_peak()
    device = torch.device("cpu")
    if mode == "full_per_rank":
        model = step.setup_model(step.load_model(path, "causal"), device)
    else:
        model = step.load_sharded(path, "causal", device)
    dist.barrier()
    Path(out, f"{mode}-{rank}.json").write_text(
        json.dumps({"before_mb": before, "peak_mb": _status_mb("VmHWM"), "after_mb": _status_mb("VmRSS")})
    )
    del model
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        params = build_model(tmp, args)
        result = {"params": params, "fp32_mb": params * 4 / 2**20, "ranks": args.ranks, "modes": {}}
        for mode in ("full_per_rank", "meta_broadcast"):
            mp.start_processes(
                _rank, args=(args.ranks, _free_port(), tmp, mode, tmp), nprocs=args.ranks, start_method="spawn"
            )
            result["modes"][mode] = [json.loads(Path(tmp, f"{mode}-{r}.json").read_text()) for r in range(args.ranks)]
    return result


def table(result: dict) -> str:
    lines = [
        f"model: {result['params'] / 1e6:.1f}M parameters, {result['fp32_mb']:.0f} MB in fp32; "
        f"{result['ranks']} gloo ranks",
        "| setup | rank | RSS before (MB) | peak RSS (MB) | peak added (MB) | RSS after (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, ranks in result["modes"].items():
        for r, m in enumerate(ranks):
            lines.append(
                f"| {mode} | {r} | {m['before_mb']:.0f} | {m['peak_mb']:.0f} | {m['peak_mb'] - m['before_mb']:.0f} | "
                f"{m['after_mb']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--out", default="benchmarks/out/train_memory.json")
    args = ap.parse_args(argv)
    result = run(args)
    print(table(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
