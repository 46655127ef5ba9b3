"""The distill job's report: `report.md` with the run's state, each stage's figures and the
student's evaluation before and after distillation. It reads what the stages wrote and says what
is missing, so it can be written after any stage."""

from __future__ import annotations

from lion_distill.data import RunDir
from lion_distill.metrics.report import state_section, table_md

STAGES = ("teacher", "signal", "train")
FIGURES = ("timing_s", "rows", "prompt_tokens", "completion_tokens", "api_requests", "cost_usd", "tokens_per_s")


def write_report(run: RunDir) -> str:
    state = run.read_json("state.json", {})
    out = ["# Distillation report\n", *state_section(state), *_stages(run), *_evaluation(state)]
    run.write_bytes("report.md", ("\n".join(out) + "\n").encode())
    return run.path("report.md")


def _stages(run: RunDir) -> list[str]:
    rows = []
    for stage in STAGES:
        figures = run.read_json(f"{stage}/metrics.json")
        if figures is not None:
            rows.append([stage, *(figures.get(f"{name}/{stage}") for name in FIGURES)])
    distilled = {k: v for stage in STAGES for k, v in (run.read_json(f"{stage}/metrics.json") or {}).items()}
    lines = [
        f"- {key.split('/', 1)[1]}: {value:,}" for key, value in sorted(distilled.items()) if key.startswith("distill/")
    ]
    return ["\n## Stages\n", table_md(["stage", *FIGURES], rows) if rows else "No stage has finished yet.", "", *lines]


def _evaluation(state: dict) -> list[str]:
    summary = state.get("summary", {})
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if not before and not after:
        return []
    keys = sorted({*(before or {}), *(after or {})})
    rows = [[key.removeprefix("eval_"), (before or {}).get(key), (after or {}).get(key)] for key in keys]
    return ["\n## The student before and after\n", table_md(["figure", "before", "after"], rows)]
