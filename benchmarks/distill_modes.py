"""Which distillation mode pays, on the real small model on this CPU: SmolLM2-135M-Instruct teaching
its 6-layer copy (smol://), every arm given the same teacher budget (the answers to 24 instructions
that Lion's loop trains on with 16 seeds and 8 new instructions), two seeds:

    sft          the distill job, distill.mode sft, on 24 pool instructions (the 16 seeds and 8 more)
    logit_kd     the same job and rows, distill.mode logit_kd (the teacher's top 20 at each token)
    lion_referee Lion (1 iteration + the final imitation): 16 seeds, then 8 instructions the generator
                 writes from the hard and easy ones, hard by the 135M referee
    lion_divergence  the same, hard by the student's divergence from the teacher (no referee)
    lion_random  Lion's budget and schedule (16 seeds, then 8 more) on random pool instructions instead
                 of generated ones: two distill jobs in a row

Measured on 32 held-out instructions no arm trains on (the teacher's greedy answers in
data/smol/teacher_answers.jsonl, whose 64 instructions are kept out of every arm's pool): the
student's KL(teacher || student) per answer token over the teacher's top 50 and the tail, and its NLL
of the teacher's answers (as lion_distill.evaluate.nll); each job's wall time. Every job is the real
command (`python jobs/<job>.py --config ...`) on its own local Ray cluster.

    nice -n 10 env PYTHONPATH=. .venv/bin/python benchmarks/distill_modes.py --seeds 0 1
    # figures: benchmarks/out/distill_modes.json; the table is printed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HELD_OUT = REPO / "data" / "smol" / "teacher_answers.jsonl"
POOL_FILES = ["data/self-instruct/seed_tasks.jsonl", "data/self-instruct/user_oriented_instructions.jsonl"]
SEEDS, NEW, EVAL_K = 16, 8, 50
ARMS = ("sft", "logit_kd", "lion_referee", "lion_divergence", "lion_random")
COMMON = [  # every job: the demo's teacher and student, three epochs an imitation, in the job's process
    "teacher.backend=vllm",
    "teacher.model=smol://instruct",
    "teacher.max_model_len=2048",
    "teacher.sampling.max_tokens=128",
    "student.backend=hf",
    "student.model=smol://student?layers=6",
    "train.learning_rate=2.0e-4",
    "train.epochs=3",
    "train.batch_size=4",
    "train.max_length=320",
    "train.num_workers=0",
    "eval=null",
]


def pools(work: Path, seed: int) -> dict[str, Path]:
    """The seed's instruction files: 16 seeds, 8 more random ones, and the 24 together, all drawn
    from the pool without the held-out instructions."""
    from lion_distill.data import load_pool

    pool, _ = load_pool(POOL_FILES, {}, 4096, [])
    held = {json.loads(line)["instruction"] for line in HELD_OUT.read_text().splitlines()}
    rows = [r for r in pool.to_pylist() if r["instruction"] not in held]
    picks = np.random.default_rng(seed).choice(len(rows), SEEDS + NEW, replace=False)
    chosen = [{"instruction": rows[i]["instruction"], "input": rows[i]["input"]} for i in picks]
    files = {"seeds": chosen[:SEEDS], "more": chosen[SEEDS:], "all": chosen}
    out = {}
    for name, part in files.items():
        out[name] = work / f"pool-{seed}-{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    return out


def job(kind: str, config: str, sets: list[str], log: Path) -> float:
    """Run one job to the end -> its wall time (s)."""
    start = time.perf_counter()
    cmd = [sys.executable, str(REPO / "jobs" / f"{kind}.py"), "--config", config, *(f"--set={s}" for s in sets)]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    with log.open("ab") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if code:
        raise RuntimeError(f"{kind} job failed ({code}): see {log}")
    return time.perf_counter() - start


def distill(run: Path, pool: Path, mode: str, seed: int, log: Path, student: str | None = None) -> float:
    sets = COMMON + [
        f"run_dir={run}",
        f"data.pool_files=[{pool}]",
        f"distill.mode={mode}",
        f"train.seed={seed}",
        "train_on_truncated=true",
        f"teacher.sampling.seed={seed}",
    ]
    return job(
        "distill",
        str(REPO / "configs" / "distill-smol.yaml"),
        sets + ([f"student.model={student}"] if student else []),
        log,
    )


def lion(run: Path, pool: Path, discriminator: str, seed: int, log: Path) -> float:
    sets = COMMON + [
        f"run_dir={run}",
        f"data.pool_files=[{pool}]",
        "data.sample_size=null",
        "lion.iterations=1",
        f"lion.new_instructions_per_iteration={NEW}",
        f"lion.discriminator={discriminator}",
        f"lion.seed={seed}",
        f"train.seed={seed}",
        f"teacher.sampling.seed={seed}",
    ]
    return job("lion", str(REPO / "configs" / "demo-smol.yaml"), sets, log)


def run_arm(arm: str, work: Path, files: dict[str, Path], seed: int, log: Path) -> tuple[str, float, dict]:
    """-> (the arm's final student, its wall time, what it paid the teacher for)."""
    base = work / f"{arm}-{seed}"
    if arm in ("sft", "logit_kd"):
        seconds = distill(base, files["all"], arm, seed, log)
        return str(base / "train" / "student"), seconds, _distill_budget(base)
    if arm == "lion_random":
        first = distill(base / "seeds", files["seeds"], "sft", seed, log)
        second = distill(
            base / "more", files["more"], "sft", seed, log, student=str(base / "seeds" / "train" / "student")
        )
        budget = {
            k: _distill_budget(base / "seeds")[k] + _distill_budget(base / "more")[k] for k in ("answers", "tokens")
        }
        return str(base / "more" / "train" / "student"), first + second, budget
    seconds = lion(base, files["seeds"], arm.removeprefix("lion_"), seed, log)
    state = json.loads((base / "state.json").read_text())
    metrics = [json.loads(p.read_text()) for p in sorted(base.glob("iter_*/imitation/metrics.json"))]
    budget = {
        "answers": sum(m.get("lion/imitation_trained", 0) for m in metrics),
        "tokens": sum(m.get("completion_tokens/imitation/teacher", 0) for m in metrics),
        "new_instructions": state["summary"].get("iter_0", {}).get("new_instructions"),
    }
    return state["outputs"]["student_model"], seconds, budget


def _distill_budget(run: Path) -> dict:
    teacher = json.loads((run / "teacher" / "metrics.json").read_text())
    return {"answers": teacher.get("distill/trainable", 0), "tokens": teacher.get("completion_tokens/teacher", 0)}


def held_out(teacher: str):
    """The 32 held-out answers in the training layout with the teacher's top 50 (a transformers forward)."""
    import pyarrow as pa

    from lion_distill.distill.signal import scoring_requests, with_signal
    from lion_distill.llm.prompts import instruction_messages
    from lion_distill.llm.scorers import HFScorer

    rows = [{**json.loads(line), "id": f"h{i}"} for i, line in enumerate(HELD_OUT.read_text().splitlines())][-32:]
    answers = [{"text": r["response"], "finish_reason": "stop" if r["complete"] else "length"} for r in rows]
    signal = HFScorer(teacher, EVAL_K)(scoring_requests(rows, answers, instruction_messages, teacher))
    keep = ("id", "instruction", "input", "response", "complete")
    table = pa.Table.from_pylist([{k: r[k] for k in keep} for r in rows])
    return with_signal(table, signal.select(["id", "token_ids", "topk_ids", "topk_logprobs"]))


def measure(student: str, held) -> dict:
    from lion_distill.distill.divergence import student_divergence
    from lion_distill.evaluate.nll import mean_nll
    from lion_distill.train.kd_loss import KDLoss

    kl = student_divergence(student, held.to_pylist(), KDLoss("forward_kl"), top_k=EVAL_K, max_length=384)
    rows = held.select(["instruction", "input", "response", "complete"]).to_pylist()
    return {"kl": float(np.nanmean(kl)), "nll": mean_nll(student, rows, "alpaca")["nll"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--work", default="benchmarks/out/distill_modes")
    args = parser.parse_args()
    from lion_distill.smol import build_instruct, build_student

    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log, out = work / "jobs.log", REPO / "benchmarks" / "out" / "distill_modes.json"
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    held = held_out(str(build_instruct()))
    base = measure(str(build_student()), held)
    results.update(base=base, load_start=os.getloadavg())
    print(f"base student: KL {base['kl']:.3f}, NLL {base['nll']:.3f}", flush=True)
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in args.seeds:
        files = pools(work, seed)
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            student, seconds, budget = run_arm(arm, work, files, seed, log)
            figures = {"arm": arm, "seed": seed, "wall_s": round(seconds, 1), **budget, **measure(student, held)}
            figures["load"] = os.getloadavg()
            results["runs"].append(figures)
            out.write_text(json.dumps(results, indent=1))
            print(json.dumps(figures), flush=True)
    results["load_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| arm | held-out KL | NLL | teacher answers / tokens | wall time | seeds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    base = results["base"]
    lines.append(f"| base student | {base['kl']:.3f} | {base['nll']:.3f} | 0 | | |")
    for arm in ARMS:
        runs = [r for r in results["runs"] if r["arm"] == arm]
        if not runs:
            continue
        kl, nll = [r["kl"] for r in runs], [r["nll"] for r in runs]
        lines.append(
            f"| {arm} | {np.mean(kl):.3f} ({', '.join(f'{x:.3f}' for x in kl)}) | {np.mean(nll):.3f} "
            f"({', '.join(f'{x:.3f}' for x in nll)}) | {np.mean([r['answers'] for r in runs]):.0f} / "
            f"{np.mean([r['tokens'] for r in runs]):,.0f} | {np.mean([r['wall_s'] for r in runs]):.0f} s | "
            f"{', '.join(str(r['seed']) for r in runs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
