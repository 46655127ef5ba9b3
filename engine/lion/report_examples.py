"""The Lion report's examples: what the generator actually wrote, each new instruction beside
the hard or easy instruction it was drawn from, so a reader sees the loop's text and not only
its counts."""
from __future__ import annotations

from engine.data import RunDir
from engine.lion.iteration import read_rows, rel
from engine.metrics.report import table_md

PER_KIND = 3  # examples of each kind per iteration
WIDTH = 160  # characters of an instruction shown


def _cell(text: str) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= WIDTH else text[:WIDTH - 1] + "…"


def examples_section(run: RunDir, iterations: list[int]) -> list[str]:
    """Up to PER_KIND hard and PER_KIND easy new instructions per iteration, with their seeds."""
    out = ["\n## Generated instructions (examples)\n"]
    rows = []
    for k in iterations:
        new = read_rows(run, rel(k, "generation", "new_instructions.parquet"))
        if not new:
            continue
        seeds = {r["id"]: r for r in read_rows(run, rel(k, "cache_pool.parquet"))}
        for kind in ("hard", "easy"):
            for r in [r for r in new if r["origin"] == kind][:PER_KIND]:
                seed = seeds.get(r["parent_id"], {})
                rows.append([k, kind, _cell(seed.get("instruction", "?")), _cell(r["instruction"]), _cell(r["input"])])
    if not rows:
        return out + ["No new instructions yet."]
    return out + [table_md(["iteration", "kind", "seed instruction", "new instruction", "new input"], rows)]
