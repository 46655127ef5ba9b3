"""Benchmark: loading an instruction pool from an Alpaca JSON file, by size.

The 52K-row `alpaca_data.json` is not in the repository, so a synthetic one is generated with
its layout (a JSON list indented by 4, as the released file; about 40% of rows with an `input`;
instruction, input and output lengths near Alpaca's means). Each size is loaded with our reader
(`lion_distill.data.load_pool`: every record checked, rejects located by `file:line`) and with a
baseline that does only `json.load` plus building the same rows (no checks, no locations), and
the same rows are loaded from JSONL. Linear time shows as a constant time per row across sizes.

    python benchmarks/pool_loading.py [--rows 13000 52000 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion_distill.data import instruction_id, load_pool, pool_table  # noqa: E402

WORDS = (
    "the a of to and in is for that with on as be by this are from or an it at which can your "
    "write explain describe list give generate create summarize classify identify compare find "
    "story poem email sentence paragraph data number city history science music food health"
).split()


def _text(rng: random.Random, chars: int) -> str:
    words, n = [], 0
    while n < chars:
        w = rng.choice(WORDS)
        words.append(w)
        n += len(w) + 1
    return " ".join(words).capitalize() + "."


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """Alpaca-like rows: instruction ~60 chars, input on 40% of rows ~70 chars, output ~270 chars."""
    rng = random.Random(seed)
    return [
        {
            "instruction": f"{_text(rng, 55)} ({i})",
            "input": _text(rng, 70) if rng.random() < 0.4 else "",
            "output": _text(rng, 270),
        }
        for i in range(n)
    ]


def baseline(path: Path):
    """json.load and the same rows, without checks or locations: the floor for this file."""
    rows = [{"instruction": r["instruction"].strip(), "input": r["input"].strip()} for r in json.load(open(path))]
    for r in rows:
        r["id"] = instruction_id(r["instruction"], r["input"])
    return pool_table(rows)


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[13_000, 52_000, 208_000, 1_000_000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "pool_loading.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            rows = alpaca_rows(n)
            alpaca, jsonl = Path(tmp, f"alpaca_{n}.json"), Path(tmp, f"alpaca_{n}.jsonl")
            alpaca.write_text(json.dumps(rows, indent=4, ensure_ascii=False))
            jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            del rows
            pool, report = load_pool([alpaca])
            assert report.rows_kept == n and report.reconciles, report.as_dict()
            del pool
            ours, base, lines = timed(load_pool, [alpaca]), timed(baseline, alpaca), timed(load_pool, [jsonl])
            result = {
                "rows": n,
                "mb": round(alpaca.stat().st_size / 1e6, 1),
                "ours_s": round(ours, 2),
                "baseline_s": round(base, 2),
                "jsonl_s": round(lines, 2),
                "us_per_row": round(ours / n * 1e6, 1),
            }
            results.append(result)
            print(
                f"{n:>9,} rows {result['mb']:>6} MB  ours {ours:6.2f} s ({result['us_per_row']} us/row)  "
                f"json.load baseline {base:6.2f} s  same rows as JSONL {lines:6.2f} s",
                flush=True,
            )
            alpaca.unlink()
            jsonl.unlink()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS {peak_mb:.0f} MB; {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "peak_rss_mb": round(peak_mb)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
