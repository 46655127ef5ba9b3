"""What every job's report shares: number formatting, markdown tables, plots saved into the run
directory, and the run's state as a readable table. A job's report module composes these with
its own sections (lion_distill/lion/report.py, ...)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI

from lion_distill.data import RunDir
from lion_distill.data.rundir import format_problem
from lion_distill.metrics import tracking


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def table_md(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


MESSAGE_CHARS = 120  # of a failure's message in a report


def short_message(message: str | None) -> str:
    """A failure's message as every report shows it: its first line, cut at MESSAGE_CHARS."""
    lines = (message or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def failure_rows(counts: dict[str, int], examples: dict[str, str], lead: list | None = None) -> list[list]:
    """Failures grouped by kind, the most frequent first: [*lead, kind, rows, `example message`]."""
    return [
        [*(lead or []), kind, n, f"`{short_message(examples.get(kind))}`" if examples.get(kind) else "–"]
        for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def save_plots(run_dir: RunDir, figures: dict[str, Figure], folder: str = "plots") -> dict[str, str]:
    """PNG files under run_dir/folder; -> {name: path relative to the run directory}."""
    saved = {}
    for name, figure in figures.items():
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        run_dir.write_bytes(f"{folder}/{name}", buf.getvalue())
        tracking.store(f"{folder}/{name}", buf.getvalue())  # the job's tracker, if it has one
        saved[name] = f"{folder}/{name}"
    return saved


def state_section(state) -> list[str]:
    """The runner's state.json as a reader wants it: progress, outputs, counters."""
    out = ["## State\n"]
    if not isinstance(state, dict) or "stages" not in state:
        return out + ["No readable `state.json`."]
    stages, done = state["stages"], state["completed"]
    upcoming = [s for s in stages if s not in done]
    rows = [
        ["job", f"{state.get('job')} `{state.get('name')}`"],
        ["progress", f"{len(done)} of {len(stages)} stages complete" + (" (finished)" if state.get("done") else "")],
        ["completed", ", ".join(done) or "none"],
        ["next", upcoming[0] if upcoming else "nothing: the run is finished"],
    ]
    rows += [[f"output: {key}", f"`{value}`"] for key, value in sorted(state.get("outputs", {}).items())]
    rows += [[f"total {key}", value] for key, value in sorted(state.get("counters", {}).items())]
    problem = format_problem(state, "state.json")  # an older run directory is read as far as it reads
    return out + [table_md(["", ""], rows)] + ([f"\n**{problem}**"] if problem else [])
