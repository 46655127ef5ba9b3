"""The run report: `report.md` with the paper's plot (test accuracy against % of training data,
one line per method, the teacher as a horizontal line) in `plots/accuracy.png`.

It reads only `state.json`, so it can be written after any stage: what is not there yet is said,
never raised.
"""
from __future__ import annotations

import json

from matplotlib.figure import Figure

from engine.data import RunDir
from engine.metrics.report import fmt, save_plots, state_section, table_md

SPEND = ("prompt_tokens", "completion_tokens", "api_requests", "api_cached", "cost_usd")


def write_report(run_dir: RunDir) -> str:
    state = json.loads(run_dir.read_bytes("state.json")) if run_dir.exists("state.json") else {}
    summary = state.get("summary", {})
    accuracy = summary.get("evaluate", {}).get("accuracy", {})
    teacher = summary.get("rationales", {}).get("teacher_test_accuracy")
    plots = save_plots(run_dir, {"accuracy.png": accuracy_plot(accuracy, teacher)}) if accuracy else {}
    run_dir.write_bytes("report.md", render(state, plots).encode())
    return run_dir.path("report.md")


def accuracy_plot(accuracy: dict[str, dict[str, float]], teacher: float | None) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, by_fraction in accuracy.items():
        fractions = sorted(by_fraction, key=float)
        ax.plot([100 * float(f) for f in fractions], [100 * by_fraction[f] for f in fractions], "o-", label=method)
    if teacher is not None:
        ax.axhline(100 * teacher, color="grey", ls="--", label="teacher (few-shot CoT)")
    ax.set_xlabel("% of training data")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def render(state: dict, plots: dict[str, str]) -> str:
    summary = state.get("summary", {})
    rationales, train, evaluate = (summary.get(k, {}) for k in ("rationales", "train", "evaluate"))
    out = [f"# Distilling step-by-step: {state.get('name', '?')}\n"]
    out += ["## Test accuracy\n"]
    accuracy = evaluate.get("accuracy")
    if accuracy:
        fractions = sorted({f for row in accuracy.values() for f in row}, key=float)
        rows = [[m] + [accuracy[m].get(f) for f in fractions] for m in accuracy]
        teacher = rationales.get("teacher_test_accuracy")
        rows.append(["teacher (reference)"] + [teacher] * len(fractions))
        out += [table_md(["method"] + [f"{100 * float(f):g}% of train" for f in fractions], rows), "",
                f"On {fmt(evaluate.get('test_rows'))} test rows, label-only predictions; the teacher's unparsed "
                "replies count as wrong. Most frequent gold labels: "
                + ", ".join(f"`{k}` {fmt(v)}" for k, v in evaluate.get("label_shares", {}).items()) + ".\n"]
        out += [f"![accuracy]({path})\n" for path in plots.values()]
    else:
        out += ["Not evaluated yet.\n"]
    out += ["## Rationales\n"]
    if rationales:
        failures = rationales.get("parse_failures", {})
        reasons = sorted({r for split in failures.values() for r in split})
        rows_by_split = rationales.get("rows", {})
        out += [f"Source: `{rationales.get('source')}`; rows: " + ", ".join(f"{k} {fmt(v)}" for k, v in rows_by_split.items()) + ".\n"]
        out += [table_md(["parse failure"] + list(failures), [[r] + [failures[s].get(r, 0) for s in failures] for r in reasons])
                if reasons else "Every reply parsed.", ""]
        spend = rationales.get("spend") or {}
        out += [table_md(["tokens and cost", ""], [[k, spend.get(k, 0)] for k in SPEND]) if spend
                else "No teacher calls (released completions).", ""]
    else:
        out += ["Not run yet.\n"]
    out += ["## Training\n"]
    if train:
        rows = [[key, v["rows"], v["epochs"], ", ".join(f"{fmt(x['valid_accuracy'])} ({x['step']})" for x in v["validations"]),
                 v["best_step"]] for key, v in train.items()]
        out += [table_md(["method / fraction", "rows", "epochs", "valid accuracy (at step)", "kept step"], rows), "",
                "One training run per row; its best export on validation accuracy is what `evaluate` scores.\n"]
    else:
        out += ["Not run yet.\n"]
    out += ["## Time per stage\n"]
    times = [["rationales", rationales.get("seconds")]] if rationales else []
    times += [[f"train/{key}", v.get("seconds")] for key, v in train.items()]
    times += [["evaluate", evaluate.get("seconds")]] if evaluate else []
    out += [table_md(["stage", "seconds"], times) if times else "No stage complete yet.", ""]
    return "\n".join(out + state_section(state)) + "\n"
