"""The real small model (lion_distill.smol): its teacher answers, and the student's size.

    python benchmarks/smol_student.py answers   # SmolLM2-135M-Instruct answers 64 seed instructions (vLLM, greedy)
                                                # -> data/smol/teacher_answers.jsonl (the learning test's data)
    python benchmarks/smol_student.py layers [--layers 4 6 8] [--epochs 3]
                                                # per student size: held-out NLL on the teacher's answers
                                                # before and after imitation (plain torch loop), seconds
    python benchmarks/smol_student.py formats [--seeds 0 1 2] [--train 24] [--lr 1e-3]
                                                # the 6-layer student trained in `chat` and in `alpaca`
                                                # (student.prompt_format), each measured asked in both

The first 48 answers train, the last 16 are held out. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parent.parent
ANSWERS = REPO / "data" / "smol" / "teacher_answers.jsonl"
TRAIN, HELD_OUT = 48, 16


def instructions(n: int) -> list[dict]:
    import numpy as np

    from lion_distill.data import load_pool

    pool, _ = load_pool([str(REPO / "data" / "self-instruct" / "seed_tasks.jsonl")])
    picks = np.sort(np.random.default_rng(0).choice(pool.num_rows, n, replace=False))
    return [{"instruction": r["instruction"], "input": r["input"]} for r in pool.take(picks).to_pylist()]


def answers(args) -> dict:
    from vllm import LLM, SamplingParams

    from lion_distill.llm.prompts import instruction_messages
    from lion_distill.smol import build_instruct

    rows = instructions(TRAIN + HELD_OUT)
    llm = LLM(model=str(build_instruct()), dtype="float32", max_model_len=2048, enforce_eager=True, seed=0)
    start = time.perf_counter()
    outs = llm.chat([instruction_messages(r) for r in rows], SamplingParams(temperature=0, max_tokens=args.max_tokens))
    seconds = time.perf_counter() - start
    ANSWERS.parent.mkdir(parents=True, exist_ok=True)
    with ANSWERS.open("w") as f:
        for r, o in zip(rows, outs):
            f.write(
                json.dumps({**r, "response": o.outputs[0].text, "complete": o.outputs[0].finish_reason == "stop"})
                + "\n"
            )
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "answers": len(rows),
        "completion_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "complete": sum(o.outputs[0].finish_reason == "stop" for o in outs),
    }


def read_answers() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text().splitlines()]


def imitate(
    model_path: str,
    rows: list[dict],
    epochs: int,
    lr: float,
    batch_size: int = 8,
    max_length: int = 384,
    template: str = "alpaca",
    seed: int | None = None,
):
    """The student fine-tuned on `rows` (asked in `template`) in one process with the project's
    step code -> the model. `seed`: the rows shuffled each epoch by it (else in order)."""
    import numpy as np
    import torch

    from lion_distill.config.models import TrainConfig
    from lion_distill.train import batches, step

    cfg = TrainConfig(learning_rate=lr, epochs=epochs, batch_size=batch_size, max_length=max_length)
    cols = {k: [r[k] for r in rows] for k in ("instruction", "input", "response", "complete")}
    tokens = batches.tokenize_causal(cols, tokenizer_path=model_path, max_length=cfg.max_length, template=template)
    pad = batches.load_tokenizer(model_path).pad_token_id
    if seed is not None:
        torch.manual_seed(seed)
    model = step.setup_model(step.load_model(model_path, "causal"), torch.device("cpu"))
    optimizer, scheduler = step.build_optimizer(model, cfg, -(-len(rows) // batch_size) * epochs)
    n_tokens, start = 0, time.perf_counter()
    for epoch in range(epochs):
        order = np.arange(len(rows)) if seed is None else np.random.default_rng([seed, epoch]).permutation(len(rows))
        for i in range(0, len(rows), batch_size):
            picked = order[i : i + batch_size]
            batch = batches.collate_causal({k: [v[j] for j in picked] for k, v in tokens.items()}, pad_id=pad)
            step.backward(model, batch, cfg, torch.device("cpu"))
            step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
            n_tokens += int(batch["attention_mask"].sum())
    return model, {
        "train_s": time.perf_counter() - start,
        "train_tokens_per_s": n_tokens / (time.perf_counter() - start),
    }


def layers(args) -> dict:
    import tempfile

    from transformers import AutoTokenizer

    from lion_distill.evaluate.nll import mean_nll
    from lion_distill.smol import build_instruct, build_student

    data = read_answers()
    train, held = data[:TRAIN], data[TRAIN:]
    out = {"teacher_held_out_nll": mean_nll(str(build_instruct()), held, "chat")["nll"]}
    for n in args.layers:
        path = str(build_student(n))
        before = mean_nll(path, held, "alpaca")["nll"]
        model, timing = imitate(path, train, args.epochs, args.lr)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(path).save_pretrained(tmp)
            after = mean_nll(tmp, held, "alpaca")["nll"]
        out[f"layers_{n}"] = {"before": before, "after": after, "drop": 1 - after / before, **timing}
        print(n, out[f"layers_{n}"], flush=True)
    return out


def formats(args) -> dict:
    """Per seed, the 6-layer student trained on the same answers in each format, and its held-out
    NLL asked in each (transformers; tests/test_smol_chat_students.py asks through vLLM)."""
    import tempfile

    from transformers import AutoTokenizer

    from lion_distill.evaluate.nll import mean_nll
    from lion_distill.smol import build_instruct, build_student

    data = read_answers()
    train, held = data[: args.train], data[TRAIN:]
    path = str(build_student(6))
    out = {
        "teacher_held_out_nll": mean_nll(str(build_instruct()), held, "chat")["nll"],
        "before": {asked: mean_nll(path, held, asked)["nll"] for asked in ("chat", "alpaca")},
    }
    for seed in args.seeds:
        for trained in ("chat", "alpaca"):
            model, timing = imitate(path, train, args.epochs, args.lr, max_length=320, template=trained, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                AutoTokenizer.from_pretrained(path).save_pretrained(tmp)
                nll = {asked: mean_nll(tmp, held, asked)["nll"] for asked in ("chat", "alpaca")}
            del model  # one student in memory at a time
            out[f"seed_{seed}_{trained}"] = {**nll, **timing}
            print(seed, trained, out[f"seed_{seed}_{trained}"], flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["answers", "layers", "formats"])
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=24, help="formats: the first N answers train")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = {"answers": answers, "layers": layers, "formats": formats}[args.mode](args)
    print(json.dumps(result, indent=2))
    out = Path(args.out or f"benchmarks/out/smol_{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
