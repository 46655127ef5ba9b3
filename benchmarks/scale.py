"""One Lion iteration's data path at scale: N instructions through seeding, imitation,
discrimination and generation on a local Ray cluster, every LLM role replaced by a scripted one
that answers at once. The engines are measured elsewhere (benchmarks/generation.py,
serve_throughput.py); this measures what the stages do around them: reading the pool, moving rows
between the driver and Ray Data, joining answers, building the referee's requests, tokenising the
training rows, the ROUGE-L filter, the report and the datasets export. Per stage: seconds and
rows/s, and the driver's peak RSS above its idle RSS (after Ray and the engine are imported) and above
its RSS when the stage starts (what the stage itself adds: a stage that reuses memory an earlier one freed
but did not give back to the system shows less here than it holds), and how much of the peak is the
driver's own heap (RssAnon) rather than object-store pages it wrote or read (`ray.put`, `ray.get`),
which RSS counts too but which are the object store's memory, not the driver's.

    python benchmarks/scale.py [--rows 100000 1000000] [--out FILE]

Each size runs in a fresh process (its own local Ray cluster), so one size's memory is not the
next one's. The scripted roles: the teacher and the student answer with a line naming the
instruction; the referee scores half the pairs hard (9 vs 5) and half even (7 vs 7), in a review
every rubric's parser reads; the generator writes a new instruction no earlier one resembles.
Training is the real Ray Train loop on the tiny LLaMA, one optimizer step (`train.max_steps=1`):
its input (every training row) goes the whole way, its compute is not the point.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# A vocabulary of 6,400 two-syllable words, as a real pool draws on tens of thousands: words made of
# hex digests (one new word per row) grew ROUGE-L's index by 4 GB at 1M rows, which no real pool does.
SYLLABLES = [c + v for c in "bcdfghjklmnprstv" for v in "aeiou"]
WORDS = [a + b for a in SYLLABLES for b in SYLLABLES]
STAGES = ("seed", "imitation", "discrimination", "generation", "report")
NEW_INSTRUCTIONS = 6_000  # Lion's default, as in the paper: the generator's rounds and the ROUGE-L filter at full size


def rss_mb(field: str = "VmRSS") -> float:
    """The driver's resident memory (VmRSS), or its own heap alone (RssAnon: not the object
    store's shared pages it has mapped, which VmRSS counts too), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRSS:
    """The driver's resident memory and its own heap, sampled every 20 ms: the peaks since the
    last `reset`."""

    def __init__(self):
        self.peak, self.anon = rss_mb(), rss_mb("RssAnon")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.peak, self.anon = max(self.peak, rss_mb()), max(self.anon, rss_mb("RssAnon"))
            time.sleep(0.02)

    def reset(self) -> tuple[float, float]:
        now, anon = rss_mb(), rss_mb("RssAnon")
        peaks = max(self.peak, now), max(self.anon, anon)
        self.peak, self.anon = now, anon
        return peaks


def words(*parts) -> str:
    """Six words drawn by a digest of `parts`: the same parts, the same words."""
    h = hashlib.sha256(json.dumps(parts).encode()).digest()
    return " ".join(WORDS[int.from_bytes(h[i : i + 4], "big") % len(WORDS)] for i in range(0, 24, 4))


def write_pool(path: Path, rows: int) -> None:
    with path.open("w") as f:
        for i in range(rows):
            f.write(
                json.dumps({"instruction": f"Task {i}: describe {words('pool', i)}.", "input": "", "output": ""}) + "\n"
            )


def prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def reply(role_name: str, row: dict, prompt, draw: str | None) -> tuple[str, int]:
    """(the scripted text, its completion tokens) for one request."""
    if role_name in ("teacher", "student"):
        return f"{role_name.upper()}-{row['id']} answers: {words(role_name, row['id'])}.", 12
    if role_name == "referee":
        text = prompt_text(prompt)
        pair = str(row["id"]).split("|")[0]  # a request is "<pair id>|<order>": both orders score alike
        hard = int(hashlib.sha256(pair.encode()).hexdigest(), 16) % 2 == 0
        teacher, student = (9, 5) if hard else (7, 7)
        first, second = (teacher, student) if text.find("TEACHER-") < text.find("STUDENT-") else (student, teacher)
        # Scores first (FastChat's rubrics) and last (Lion's): every rubric's parser reads it.
        return (
            f"{first} {second}\nBoth answers were read.\nScore of the Assistant 1: {first}\n"
            f"Score of the Assistant 2: {second}"
        ), 24
    return f"### Instruction:\nDescribe {words('new', row['id'], draw)}.\n### Input:\n<noinput>", 12


def scripted_generate(
    role,
    rows,
    to_prompt,
    *,
    stage,
    role_name,
    run_dir=None,
    structured_output=None,
    logprobs=None,
    draw=None,
    parts=None,
):
    """lion_distill.llm.generate's contract (rows in == rows out, the response columns, a
    StageRecord summed by generate's own accounting), answered at once in Ray Data tasks
    instead of by an engine."""
    import pyarrow as pa

    from lion_distill.llm import _account
    from lion_distill.llm.parts import write_parts
    from lion_distill.metrics import stage_timer

    def answer(batch: pa.Table) -> pa.Table:
        replies = [reply(role_name, row, to_prompt(row), draw) for row in batch.to_pylist()]
        texts, tokens = [text for text, _ in replies], [n for _, n in replies]
        n = batch.num_rows
        columns = {
            "role": pa.array([role_name] * n, pa.string()),
            "text": pa.array(texts, pa.string()),
            "finish_reason": pa.array(["stop"] * n, pa.string()),
            "error_kind": pa.nulls(n, pa.string()),
            "error": pa.nulls(n, pa.string()),
            "prompt_tokens": pa.array([64] * n, pa.int64()),
            "completion_tokens": pa.array(tokens, pa.int64()),
        }
        if logprobs:
            columns["logprobs"] = pa.nulls(n, pa.string())
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return batch

    with stage_timer(stage) as rec:
        answered = write_parts(rows.map_batches(answer, batch_format="pyarrow", batch_size=4096), parts)
        out = _account(answered.materialize(), rec, api=False)
    return out, rec


def one_size(rows: int, work: Path, rouge_l_shards: str = "auto") -> dict:
    """One iteration at `rows` instructions, in this process -> its figures."""
    import lion_distill.llm
    from lion_distill.cli import init_ray
    from lion_distill.lion import loop

    pool = work / "pool.jsonl"
    write_pool(pool, rows)
    init_ray(verbose=False)
    lion_distill.llm.generate = scripted_generate  # lion_distill.llm.answers.answer imports it at each call
    memory = PeakRSS()
    idle, idle_anon = rss_mb(), rss_mb("RssAnon")
    seconds, peaks, growth, anon = {}, {}, {}, {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            memory.reset()
            start, begin = rss_mb(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begin
                peak, own = memory.reset()
                peaks[name] = max(peaks.get(name, 0.0), peak)
                anon[name] = max(anon.get(name, 0.0), own - idle_anon)
                growth[name] = max(growth.get(name, 0.0), peak - start)

        return wrapper

    for name in ("imitation", "discrimination", "generation"):
        loop.STAGE_FUNCTIONS[name] = timed(name, loop.STAGE_FUNCTIONS[name])
    loop.seed_pools = timed("seed", loop.seed_pools)
    loop.write_report = timed("report", loop.write_report)
    loop.export_datasets = timed("report", loop.export_datasets)
    sets = [
        f"run_dir={work / 'run'}",
        f"data.pool_files=[{pool}]",
        "data.sample_size=null",
        "lion.iterations=1",
        "lion.final_imitation=false",
        "eval=null",
        f"lion.new_instructions_per_iteration={NEW_INSTRUCTIONS}",
        "train.max_steps=1",
        "train.num_workers=1",
        "serving=per_stage",
        f"lion.rouge_l_shards={rouge_l_shards}",
    ]
    begin = time.perf_counter()
    state = loop.run(loop.load(str(REPO / "configs" / "demo.yaml"), sets))
    total = time.perf_counter() - begin
    metrics = json.loads((work / "run" / "iter_0" / "metrics.json").read_text())
    counted = {
        "seed": rows,
        "imitation": metrics["rows/imitation/teacher"],
        "discrimination": metrics["rows/discrimination/referee"],
        "generation": metrics["lion/candidates"],
        "report": rows,
    }
    return {
        "rows": rows,
        "rouge_l_shards": rouge_l_shards,
        "seconds": total,
        "idle_rss_mb": idle,
        "done": state["done"],
        "new_instructions": metrics["lion/new_instructions"],
        "hard": metrics["lion/hard"],
        "stages": [
            {
                "stage": s,
                "seconds": seconds.get(s, 0.0),
                "rows": counted[s],
                "rows_per_s": counted[s] / seconds[s] if seconds.get(s) else 0.0,
                "peak_rss_mb": peaks.get(s, 0.0),
                "above_idle_mb": peaks.get(s, 0.0) - idle,
                "heap_above_idle_mb": anon.get(s, 0.0),
                "above_start_mb": growth.get(s, 0.0),
            }
            for s in STAGES
        ],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| rows | stage | seconds | rows/s | driver peak RSS (MB) | above idle (MB) | above the stage's start (MB) "
        "| own heap above idle (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for s in r["stages"]:
            lines.append(
                f"| {r['rows']:,} | {s['stage']} | {s['seconds']:.1f} | {s['rows_per_s']:,.0f} | "
                f"{s['peak_rss_mb']:,.0f} | {s['above_idle_mb']:,.0f} | {s['above_start_mb']:,.0f} | {s['heap_above_idle_mb']:,.0f} |"
            )
        lines.append(
            f"| {r['rows']:,} | **total** | {r['seconds']:.1f} | | idle {r['idle_rss_mb']:,.0f} | "
            f"{max(s['above_idle_mb'] for s in r['stages']):,.0f} | | "
            f"{max(s['heap_above_idle_mb'] for s in r['stages']):,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--rouge-l-shards",
        default="auto",
        help="lion.rouge_l_shards: where ROUGE-L's index of the "
        "cache pool is held (auto, the default: in an actor per 1M instructions from 250K; null: the "
        "driver; N: N Ray actors)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scale.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size, JSON on the last line
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="lion-scale-") as work:
            print(json.dumps(one_size(args.one, Path(work), args.rouge_l_shards)), flush=True)
        return 0
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_USE_DATASOURCE_V2": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    results = []
    for rows in args.rows:
        shards = ["--rouge-l-shards", args.rouge_l_shards]
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(rows), *shards], env=env, cwd=REPO, capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"{rows:,} rows: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            results.append({"rows": rows, "failed": proc.returncode})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(table([results[-1]]), flush=True)
    done = [r for r in results if "failed" not in r]
    print("\n" + table(done))
    if len(done) == 2:
        small, big = sorted(done, key=lambda r: r["rows"])
        print(
            f"\ntime x{big['seconds'] / small['seconds']:.1f} for rows x{big['rows'] / small['rows']:.0f}; "
            f"driver peak above idle at {big['rows']:,}: {max(s['above_idle_mb'] for s in big['stages']):,.0f} MB"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if len(done) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
