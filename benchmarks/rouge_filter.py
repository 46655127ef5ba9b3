"""Benchmark: Lion's ROUGE-L novelty filter against rouge-score at paper scale.

6,000 candidates against a 70,000-instruction cache pool of real instructions and
sentences from ../shared/data (self-instruct, CommonsenseQA questions, e-SNLI premises
and hypotheses; ANLI, SVAMP and e-SNLI/CQA explanations top it up), with 20% of the
candidates near-duplicates of pool items and 5% copies or near-copies of other
candidates.

What the parity figures verify:
  * all candidates: the filter's decisions against an independent all-pairs
    computation (rapidfuzz's compiled LCS over every candidate x pool and candidate x
    candidate pair, no pruning, rouge-score's F1 arithmetic), resolved sequentially;
  * that all-pairs computation against rouge-score itself, bit for bit, on every pair
    it scores >= --near (0.5) and on the random pairs used for rouge-score's timing;
  * a sample of --brute candidates checked by pure rouge-score over the full pool plus
    every earlier kept candidate (about 6 s per candidate on one core).

    python benchmarks/rouge_filter.py [--data-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion_distill.lion.rouge import NoveltyFilter, rouge_l_f1, rouge_tokens  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_texts(data: Path) -> list[str]:
    """Unique texts, the instruction-like sources first, the explanations last."""
    sbs = data / "step-by-step"
    groups = [
        [r["instruction"] for p in sorted((data / "self-instruct").glob("*.jsonl")) for r in _jsonl(p)],
        [r["question"] for s in ("train", "test") for r in _jsonl(sbs / "cqa" / f"cqa_{s}.json")],
        [
            r[k]
            for p in sorted((sbs / "esnli").glob("esnli_*.json"))
            for r in _jsonl(p)
            for k in ("premise", "hypothesis")
        ],
        [
            r[k]
            for p in sorted((sbs / "anli1").glob("anli1_*.json"))
            for r in _jsonl(p)
            for k in ("premise", "hypothesis")
        ],
        [r["input"] for s in ("train", "test") for r in _jsonl(sbs / "svamp" / f"svamp_{s}.json")],
        [
            r[f"explanation_{i}"]
            for p in sorted((sbs / "esnli").glob("esnli_*.json"))
            for r in _jsonl(p)
            for i in (1, 2, 3)
        ],
        [r["abstractive_explanation"] for s in ("train", "test") for r in _jsonl(sbs / "cqa" / f"cqa_{s}.json")],
    ]
    seen, out = set(), []
    for group in groups:
        for t in group:
            t = t.strip()
            if t and t not in seen:
                seen.add(t)
                out.append(t)
    return out


def mutate(text: str, rng: random.Random, words: list[str]) -> str:
    """A realistic near-duplicate: one word swapped, dropped, replaced or re-cased."""
    w = text.split()
    if len(w) < 2:
        return text.upper()
    i = rng.randrange(len(w) - 1)
    op = rng.choice(["swap", "drop", "replace", "case", "punct"])
    if op == "swap":
        w[i], w[i + 1] = w[i + 1], w[i]
    elif op == "drop":
        del w[i]
    elif op == "replace":
        w[i] = rng.choice(words)
    elif op == "case":
        w = [x.upper() if rng.random() < 0.3 else x.lower() for x in w]
    else:
        w[i] += rng.choice([",", ";", "!", " -"])
    return " ".join(w)


def make_workload(texts: list[str], n_pool: int, n_cand: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts = texts[:]
    rng.shuffle(texts)
    n_near, n_dup = n_cand // 5, n_cand // 20
    n_fresh = n_cand - n_near - n_dup
    if len(texts) < n_pool + n_fresh:
        sys.exit(f"need {n_pool + n_fresh} unique texts, the data has {len(texts)}")
    pool, fresh = texts[:n_pool], texts[n_pool : n_pool + n_fresh]
    words = [w for t in rng.sample(pool, 2000) for w in t.split()]
    cands = fresh + [mutate(rng.choice(pool), rng, words) for _ in range(n_near)]
    rng.shuffle(cands)
    for _ in range(n_dup):  # copies of earlier candidates, exact or mutated, placed after them
        j = rng.randrange(len(cands))
        src = cands[rng.randrange(j + 1)]
        cands.insert(j + 1, src if rng.random() < 0.5 else mutate(src, rng, words))
    return pool, cands


def _f1_matrix(lcs: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """rouge-score's F1 arithmetic, elementwise (IEEE ops in the same order)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = lcs / n
        r = lcs / m
        f = 2 * p * r / (p + r)
    return np.where(lcs > 0, f, 0.0)


def all_pairs_reference(pool: list[str], cands: list[str], threshold: float, near: float):
    """Decisions from every pair's exact LCS, no pruning; also the pairs scoring >= near."""
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    vocab: dict[str, int] = {}

    def enc(text: str) -> str:  # one code point per token: rapidfuzz's fastest path
        cps = []
        for tok in rouge_tokens(text):
            i = vocab.setdefault(tok, len(vocab))
            cps.append(chr(i + 0x800 * (i >= 0xD800)))  # skip the surrogate block
        return "".join(cps)

    P, C = [enc(t) for t in pool], [enc(t) for t in cands]
    m_pool = np.array([len(s) for s in P], dtype=np.float64)
    n_cand = np.array([len(s) for s in C], dtype=np.float64)
    hit_pool = np.zeros(len(C), dtype=bool)
    near_pairs = []
    for lo in range(0, len(C), 250):
        lcs = process.cdist(C[lo : lo + 250], P, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
        f = _f1_matrix(lcs.astype(np.float64), m_pool[None, :], n_cand[lo : lo + 250, None])
        hit_pool[lo : lo + 250] = (f >= threshold).any(axis=1)
        for i, j in zip(*np.nonzero(f >= near)):
            near_pairs.append((cands[lo + i], pool[j], float(f[i, j])))
    lcs = process.cdist(C, C, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
    fcc = _f1_matrix(lcs.astype(np.float64), n_cand[None, :], n_cand[:, None])
    kept = np.zeros(len(C), dtype=bool)
    for i in range(len(C)):
        kept[i] = not hit_pool[i] and not (fcc[i, :i][kept[:i]] >= threshold).any()
    for i, j in zip(*np.nonzero(np.tril(fcc >= near, -1))):
        near_pairs.append((cands[i], cands[j], float(fcc[i, j])))
    return kept, near_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("LION_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "rouge_filter.json"))
    ap.add_argument("--pool", type=int, default=70_000)
    ap.add_argument("--candidates", type=int, default=6_000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--timing-pairs", type=int, default=20_000, help="random pairs timed with rouge-score")
    ap.add_argument(
        "--near", type=float, default=0.5, help="all-pairs F1 from which pairs are re-scored by rouge-score"
    )
    ap.add_argument("--brute", type=int, default=30, help="candidates checked by pure rouge-score over the full pool")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = Path(args.data_dir)
    if not (data / "step-by-step" / "cqa").is_dir():
        sys.exit(f"data not found at {data}: pass --data-dir or set LION_DATA_DIR (see ../shared/data/README.md)")
    from rouge_score import rouge_scorer

    pool, cands = make_workload(load_texts(data), args.pool, args.candidates, args.seed)
    rng = random.Random(args.seed + 1)

    # CPU seconds of this process next to wall seconds: on a shared machine the wall
    # clock also counts other people's work; both sides of the ratio are timed alike.
    t0, c0 = time.perf_counter(), time.process_time()
    filt = NoveltyFilter(pool, threshold=args.threshold)
    t1, c1 = time.perf_counter(), time.process_time()
    decisions = filt.filter(cands)
    t2, c2 = time.perf_counter(), time.process_time()
    kept = sum(decisions)
    build_s, filter_s = t1 - t0, t2 - t1
    build_cpu, filter_cpu = c1 - c0, c2 - c1

    # rouge-score's rate on random candidate x pool pairs; the brute-force loop scores
    # each candidate against the pool plus every candidate kept before it.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [(rng.choice(cands), rng.choice(pool)) for _ in range(args.timing_pairs)]
    t0, c0 = time.perf_counter(), time.process_time()
    timed = [scorer.score(a, b)["rougeL"].fmeasure for a, b in pairs]
    rate = len(pairs) / (time.perf_counter() - t0)
    rate_cpu = len(pairs) / (time.process_time() - c0)
    prefix_kept = np.concatenate([[0], np.cumsum(decisions)[:-1]])
    n_pairs = int(len(cands) * len(pool) + prefix_kept.sum())
    rouge_s, rouge_cpu = n_pairs / rate, n_pairs / rate_cpu

    t0 = time.perf_counter()
    ref, near_pairs = all_pairs_reference(pool, cands, args.threshold, args.near)
    ref_s = time.perf_counter() - t0
    same_all = int((ref == np.array(decisions)).sum())
    near_same = sum(1 for a, b, f in near_pairs if scorer.score(a, b)["rougeL"].fmeasure == f)
    random_same = sum(1 for (a, b), f in zip(pairs, timed) if rouge_l_f1(a, b) == f)

    # Pure rouge-score for a sample, each against the pool and the filter's kept-before-it.
    t0 = time.perf_counter()
    sample = sorted(rng.sample(range(len(cands)), min(args.brute, len(cands))))
    kept_before = [c for c, d in zip(cands, decisions) if d]
    brute_same = 0
    for i in sample:
        others = pool + kept_before[: int(prefix_kept[i])]
        keep = all(scorer.score(o, cands[i])["rougeL"].fmeasure < args.threshold for o in others)
        brute_same += keep == decisions[i]
    brute_s = time.perf_counter() - t0

    result = {
        "pool": len(pool),
        "candidates": len(cands),
        "threshold": args.threshold,
        "kept": kept,
        "filter_build_s": round(build_s, 3),
        "filter_s": round(filter_s, 3),
        "filter_total_s": round(build_s + filter_s, 3),
        "filter_build_cpu_s": round(build_cpu, 3),
        "filter_cpu_s": round(filter_cpu, 3),
        "rouge_score_pairs_per_s": round(rate, 1),
        "rouge_score_pairs_per_cpu_s": round(rate_cpu, 1),
        "brute_force_pairs": n_pairs,
        "rouge_score_estimated_s": round(rouge_s, 1),
        "rouge_score_estimated_cpu_s": round(rouge_cpu, 1),
        "speedup": round(rouge_s / (build_s + filter_s), 1),
        "speedup_cpu": round(rouge_cpu / (build_cpu + filter_cpu), 1),
        "load_average_1min": os.getloadavg()[0],
        "all_pairs_identical": same_all,
        "all_pairs_checked": len(cands),
        "all_pairs_s": round(ref_s, 1),
        "near_pairs": len(near_pairs),
        "near_pairs_identical_f1": near_same,
        "random_pairs": len(pairs),
        "random_pairs_identical_f1": random_same,
        "brute_identical": brute_same,
        "brute_checked": len(sample),
        "brute_s": round(brute_s, 1),
    }
    rows = [
        ("pool x candidates", f"{len(pool):,} x {len(cands):,} (kept {kept:,})"),
        ("filter: index build", f"{build_s:.2f} s wall, {build_cpu:.2f} s CPU"),
        ("filter: decisions", f"{filter_s:.2f} s wall, {filter_cpu:.2f} s CPU"),
        ("rouge-score rate", f"{rate:,.0f} pairs/s wall, {rate_cpu:,.0f} pairs/CPU-s (one core)"),
        ("rouge-score estimate", f"{rouge_s / 3600:.1f} h wall, {rouge_cpu / 3600:.1f} h CPU for {n_pairs:,} pairs"),
        (
            "speed-up (build + filter)",
            f"{rouge_s / (build_s + filter_s):,.0f}x wall, {rouge_cpu / (build_cpu + filter_cpu):,.0f}x CPU",
        ),
        ("identical vs all-pairs exact LCS", f"{same_all}/{len(cands)} candidates ({ref_s:.0f} s)"),
        (f"all-pairs F1 == rouge-score, F1 >= {args.near}", f"{near_same}/{len(near_pairs)} pairs, bit for bit"),
        ("rouge_l_f1 == rouge-score, random", f"{random_same}/{len(pairs)} pairs, bit for bit"),
        ("identical vs pure rouge-score", f"{brute_same}/{len(sample)} sampled candidates ({brute_s:.0f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
