"""The Lion report's examples: what the generator actually wrote, each new instruction beside
the hard or easy instruction it was drawn from, so a reader sees the loop's text and not only
its counts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import RunDir
from lion_distill.lion.iteration import rel
from lion_distill.metrics.report import table_md

PER_KIND = 3  # examples of each kind per iteration
WIDTH = 160  # characters of an instruction shown


def _cell(text: str) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def examples_section(run: RunDir, iterations: list[int]) -> list[str]:
    """Up to PER_KIND hard and PER_KIND easy new instructions per iteration, with their seeds."""
    out = ["\n## Generated instructions (examples)\n"]
    rows = []
    for k in iterations:
        path = rel(k, "generation", "new_instructions.parquet")
        if not run.exists(path):
            continue
        new = run.read_table(path, columns=["origin", "parent_id", "instruction", "input"])
        shown = [
            r
            for kind in ("hard", "easy")
            for r in new.filter(pc.equal(new["origin"], kind)).slice(0, PER_KIND).to_pylist()
        ]
        # Only the shown instructions' seeds are read out of the cache pool.
        pool = run.read_table(rel(k, "cache_pool.parquet"), columns=["id", "instruction"])
        wanted = pa.array([r["parent_id"] for r in shown], pa.string())
        seeds = {r["id"]: r for r in pool.filter(pc.is_in(pool["id"], value_set=wanted)).to_pylist()}
        for r in shown:
            seed = seeds.get(r["parent_id"], {})
            rows.append(
                [k, r["origin"], _cell(seed.get("instruction", "?")), _cell(r["instruction"]), _cell(r["input"])]
            )
    if not rows:
        return out + ["No new instructions yet."]
    return out + [table_md(["iteration", "kind", "seed instruction", "new instruction", "new input"], rows)]
