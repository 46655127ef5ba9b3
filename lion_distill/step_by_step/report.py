"""The run report: `report.md` with the paper's figure (test accuracy against % of training data,
one line per method, mean ± sd over seeds as error bars, the teacher as a horizontal line; one
panel per student size) in `plots/accuracy.png`.

It reads only `state.json`, so it can be written after any stage: what is not there yet is said,
never raised.
"""

from __future__ import annotations

import json
import statistics

from matplotlib.figure import Figure

from lion_distill.data import RunDir
from lion_distill.metrics.report import failure_rows, fmt, save_plots, state_section, table_md

SPEND = ("prompt_tokens", "completion_tokens", "api_requests", "api_cached", "cost_usd")


def curves(cells: list[dict]) -> dict[str, dict[str, dict[float, tuple[float, float, int]]]]:
    """student -> series -> fraction -> (mean, sd, seeds) of test accuracy; sd 0 for one seed."""
    grouped: dict = {}
    for c in cells:
        grouped.setdefault(c["student"], {}).setdefault(c["series"], {}).setdefault(c["fraction"], []).append(
            c["accuracy"]
        )
    return {
        student: {
            series: {
                f: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                for f, v in sorted(by_fraction.items())
            }
            for series, by_fraction in by_series.items()
        }
        for student, by_series in grouped.items()
    }


def write_report(run_dir: RunDir) -> str:
    state = json.loads(run_dir.read_bytes("state.json")) if run_dir.exists("state.json") else {}
    summary = state.get("summary", {})
    cells = summary.get("evaluate", {}).get("cells", [])
    teacher = summary.get("rationales", {}).get("teacher_test_accuracy")
    plots = save_plots(run_dir, {"accuracy.png": accuracy_plot(curves(cells), teacher)}) if cells else {}
    run_dir.write_bytes("report.md", render(state, plots).encode())
    return run_dir.path("report.md")


def accuracy_plot(by_student: dict, teacher: float | None) -> Figure:
    fig = Figure(figsize=(6 * len(by_student), 4))
    for ax, (student, by_series) in zip(fig.subplots(1, len(by_student), squeeze=False)[0], by_student.items()):
        for series, points in by_series.items():
            fractions = list(points)
            ax.errorbar(
                [100 * f for f in fractions],
                [100 * points[f][0] for f in fractions],
                yerr=[100 * points[f][1] for f in fractions],
                fmt="o-",
                capsize=3,
                label=series,
            )
        if teacher is not None:
            ax.axhline(100 * teacher, color="grey", ls="--", label="teacher (few-shot CoT)")
        ax.set_title(student.rstrip("/").rsplit("/", 1)[-1], fontsize="small")
        ax.set_xlabel("% of training data")
        ax.set_ylabel("test accuracy (%, mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def accuracy_table(by_student: dict, teacher: float | None) -> str:
    fractions = sorted({f for s in by_student.values() for p in s.values() for f in p})
    several = len(by_student) > 1
    rows = []
    for student, by_series in by_student.items():
        for series, points in by_series.items():
            cells = [_mean_sd(points[f]) if f in points else None for f in fractions]
            rows.append([f"{series} ({student})" if several else series] + cells)
    rows.append(["teacher (reference)"] + [teacher] * len(fractions))
    return table_md(["method"] + [f"{100 * f:g}% of train" for f in fractions], rows)


def unparsed_note(counts: dict | None) -> str:
    """A cell's rows without the teacher's label (where it is the target) or without a rationale,
    and what became of them (data.row_counts): trained as blank targets, or left out."""
    if not counts:
        return "?"
    n = f"{counts['unparsed_label']} / {counts['empty_rationale']}"
    if not counts["unparsed_label"] and not counts["empty_rationale"]:
        return n
    return f"{n}, {'trained as blank targets' if counts['unparsed_rows'] == 'keep' else 'left out'}"


def _mean_sd(point: tuple[float, float, int]) -> str:
    mean, sd, n = point
    return fmt(mean) if n == 1 else f"{fmt(mean)} ± {fmt(sd)} (n={n})"


def render(state: dict, plots: dict[str, str]) -> str:
    summary = state.get("summary", {})
    rationales, train, evaluate = (summary.get(k, {}) for k in ("rationales", "train", "evaluate"))
    out = [f"# Distilling step-by-step: {state.get('name', '?')}\n"]
    out += ["## Test accuracy\n"]
    cells = evaluate.get("cells")
    if cells:
        out += [
            accuracy_table(curves(cells), rationales.get("teacher_test_accuracy")),
            "",
            f"On {fmt(evaluate.get('test_rows'))} test rows, label-only predictions; mean ± sd over seeds where "
            "there are several; the teacher's unparsed replies count as wrong. Most frequent gold labels: "
            + ", ".join(f"`{k}` {fmt(v)}" for k, v in evaluate.get("label_shares", {}).items())
            + ".\n",
        ]
        out += [f"![accuracy]({path})\n" for path in plots.values()]
    else:
        out += ["Not evaluated yet.\n"]
    out += ["## Rationales\n"]
    if rationales:
        failures = rationales.get("parse_failures", {})
        reasons = sorted({r for split in failures.values() for r in split})
        rows_by_split = rationales.get("rows", {})
        out += [
            f"Source: `{rationales.get('source')}`; rows: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in rows_by_split.items())
            + ".\n"
        ]
        out += [
            table_md(
                ["parse failure"] + list(failures), [[r] + [failures[s].get(r, 0) for s in failures] for r in reasons]
            )
            if reasons
            else "Every reply parsed.",
            "",
        ]
        by_kind = rationales.get("teacher_failed_by_kind") or {}
        if by_kind:
            examples = rationales.get("teacher_failure_examples") or {}
            out += [
                "Teacher requests that failed (each one's row is a `no_reply` above):\n",
                table_md(["failure", "rows", "example"], failure_rows(by_kind, examples)),
                "",
            ]
        spend = rationales.get("spend") or {}
        out += [
            table_md(["tokens and cost", ""], [[k, spend.get(k, 0)] for k in SPEND])
            if spend
            else "No teacher calls (released completions).",
            "",
        ]
    else:
        out += ["Not run yet.\n"]
    out += ["## Training\n"]
    if train:
        rows = []
        for key, v in train.items():
            scored = v["validations"]
            name = next((k for k in ("valid_accuracy", "test_accuracy") if scored and k in scored[0]), "valid_accuracy")
            rows.append(
                [
                    key,
                    v["rows"],
                    unparsed_note(v.get("row_counts")),
                    v.get("steps"),
                    ", ".join(f"{fmt(x[name])} ({x['step']})" for x in scored),
                    v["best_step"],
                ]
            )
        protocol = next(iter(train.values())).get("validation", "best")
        out += [
            table_md(
                ["cell", "rows", "no teacher label / no rationale", "steps", "accuracy at step", "kept step"], rows
            ),
            "",
            (
                "One training run per row; its best export on validation accuracy is what `evaluate` scores.\n"
                if protocol == "best"
                else "One training run per row, scored on test as it trains (the reference "
                "code's protocol, `validation: reference`); the last export is what `evaluate` scores.\n"
            ),
        ]
    else:
        out += ["Not run yet.\n"]
    out += ["## Time per stage\n"]
    times = [["rationales", rationales.get("seconds")]] if rationales else []
    times += [[f"train/{key}", v.get("seconds")] for key, v in train.items()]
    times += [["evaluate", evaluate.get("seconds")]] if evaluate else []
    out += [table_md(["stage", "seconds"], times) if times else "No stage complete yet.", ""]
    return "\n".join(out + state_section(state)) + "\n"
