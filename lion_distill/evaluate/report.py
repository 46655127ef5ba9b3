"""The evaluation report: `eval/report.md` with its plots in `eval/plots/`, and the section
the Lion report adds for the relative score per iteration.

It reads what the evaluations wrote (`<out>/summary.json`, `<out>/metrics.json`) and
works with whatever is there: an evaluation not yet run is said, never raised.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.fs as pafs
from matplotlib.figure import Figure

from lion_distill.data import RunDir
from lion_distill.metrics.report import failure_rows, save_plots, state_section, table_md

EVAL_DIR = "eval"
SCORE_HEADER = [
    "category",
    "questions",
    "candidate score",
    "reference score",
    "relative",
    "95% CI",
    "win",
    "tie",
    "loss",
]
SPEND = ("timing_s", "rows", "prompt_tokens", "completion_tokens", "api_requests", "api_cached", "cost_usd")


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def interval(group: dict) -> str:
    return "–" if group["ci_low"] is None else f"{percent(group['ci_low'])} – {percent(group['ci_high'])}"


def score_rows(summary: dict) -> list[list]:
    groups = [*summary["by_category"].items(), ("**overall**", summary["overall"])]
    return [
        [
            name,
            g["questions"],
            g["candidate_score"],
            g["reference_score"],
            percent(g["relative_score"]),
            interval(g),
            g["win"],
            g["tie"],
            g["loss"],
        ]
        for name, g in groups
    ]


def headline_row(name, summary: dict) -> list:
    overall = summary["overall"]
    return [
        name,
        percent(overall["relative_score"]),
        interval(overall),
        overall["win"],
        overall["tie"],
        overall["loss"],
        summary["judged"],
        summary["failed"],
    ]


HEADLINE_HEADER = ["relative", "95% CI", "win", "tie", "loss", "judged", "judge failures"]


def failure_lines(summary: dict) -> list[str]:
    """The judge's failures by kind: never scored, only counted."""
    cut = summary.get("truncated") or 0
    truncated = f" {cut} candidate answers were cut to fit the judge's context, then judged." if cut else ""
    if not summary["failed"]:
        return [f"Judged {summary['judged']} of {summary['questions']} questions; no judge failures.{truncated}"]
    return [
        f"Judged {summary['judged']} of {summary['questions']} questions; {summary['failed']} failed "
        f"(excluded from every score).{truncated}\n",
        table_md(
            ["failure", "questions", "example"], failure_rows(summary["failed_by_kind"], summary["failure_examples"])
        ),
    ]


def spend_rows(metrics: dict) -> list[list]:
    stages = sorted({key.split("/", 1)[1] for key in metrics if key.split("/", 1)[0] in SPEND})
    return [[stage, *(metrics.get(f"{m}/{stage}") for m in SPEND)] for stage in stages]


def category_bars(summaries: dict[str, dict]) -> Figure:
    """Relative score per category, one bar per candidate, with the bootstrap 95% interval."""
    categories = sorted({c for s in summaries.values() for c in s["by_category"]}) + ["overall"]
    fig = Figure(figsize=(max(6, 1.1 * len(categories) * max(1, len(summaries)) / 2 + 3), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(summaries))
    x = np.arange(len(categories))
    for i, (name, summary) in enumerate(summaries.items()):
        groups = [summary["overall"] if c == "overall" else summary["by_category"].get(c, {}) for c in categories]
        value = np.array([100 * (g.get("relative_score") or np.nan) for g in groups])
        low = np.array([100 * (g.get("ci_low") or np.nan) for g in groups])
        high = np.array([100 * (g.get("ci_high") or np.nan) for g in groups])
        ax.bar(x + i * width, value, width, label=name, yerr=np.nan_to_num([value - low, high - value]), capsize=3)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(x + width * (len(summaries) - 1) / 2, categories, rotation=30, ha="right")
    ax.set_ylabel("relative score (% of reference)")
    ax.legend()
    return fig


def write_report(run: RunDir) -> str:
    """eval/report.md and eval/plots/*.png of the evaluation job; -> report.md's path."""
    config = run.read_json("config.json") or {}
    reference = config.get("eval", {}).get("reference", {}).get("name", "reference")
    state = run.read_json("state.json")
    out = [
        f"# Evaluation: `{run.uri}`\n",
        f"Each candidate's answers and the reference's (**{reference}**) are reviewed by the judge in both "
        "orders and averaged; the relative score is the candidate's total over the reference's, with a "
        "bootstrap 95% interval over questions.\n",
    ]
    questions = run.read_json(f"{EVAL_DIR}/questions_report.json")
    if questions:
        rejects = ", ".join(f"{r} {n}" for r, n in questions["rejects"].items()) or "none"
        out.append(
            f"Questions: {questions['rows_in']} read, {questions['rows_kept']} kept"
            + (f", {questions['sampled']} sampled" if "sampled" in questions else "")
            + f"; rejects: {rejects}.\n"
        )
    summaries, sections = {}, []
    for c in config.get("eval", {}).get("candidates", []):
        name = c["name"]
        summary = run.read_json(f"{EVAL_DIR}/{name}/summary.json")
        sections.append(f"\n## {name}\n")
        if summary is None:
            sections.append("Not evaluated yet.")
            continue
        summaries[name] = summary
        sections += [table_md(SCORE_HEADER, score_rows(summary)), "", *failure_lines(summary)]
        metrics = run.read_json(f"{EVAL_DIR}/{name}/metrics.json", {})
        sections += ["", table_md(["stage", *SPEND], spend_rows(metrics))]
    if summaries:
        save_plots(run, {"relative_score_by_category.png": category_bars(summaries)}, folder=f"{EVAL_DIR}/plots")
        out += [
            "## Relative score by category\n",
            "![relative score by category](plots/relative_score_by_category.png)\n",
            table_md(["candidate", *HEADLINE_HEADER], [headline_row(n, s) for n, s in summaries.items()]),
        ]
    out += sections + ["\n"] + state_section(state)
    run.write_bytes(f"{EVAL_DIR}/report.md", ("\n".join(out) + "\n").encode())
    return run.path(EVAL_DIR, "report.md")


# --- inside Lion: the relative score per iteration -------------------------------


def lion_eval_summaries(run: RunDir) -> dict[int, dict]:
    """Iteration (-1: the base student) -> its evaluation summary, for those evaluated so far."""
    infos = run.fs.get_file_info(pafs.FileSelector(run.root, allow_not_found=True))
    found = {}
    for info in infos:
        name = info.base_name
        if name.startswith("iter_") and name[5:].lstrip("-").isdigit() and run.exists(name, EVAL_DIR, "summary.json"):
            found[int(name[5:])] = json.loads(run.read_bytes(f"{name}/{EVAL_DIR}/summary.json"))
    return dict(sorted(found.items()))


def relative_score_trend(summaries: dict[int, dict]) -> Figure:
    ks = list(summaries)
    value = np.array([100 * (s["overall"]["relative_score"] or np.nan) for s in summaries.values()])
    low = np.array([100 * (s["overall"]["ci_low"] or np.nan) for s in summaries.values()])
    high = np.array([100 * (s["overall"]["ci_high"] or np.nan) for s in summaries.values()])
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.errorbar(ks, value, yerr=np.nan_to_num([value - low, high - value]), marker="o", capsize=3)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(ks, ["base" if k < 0 else str(k) for k in ks])
    ax.set_xlabel("iteration (base: before training)")
    ax.set_ylabel("relative score (% of reference)")
    return fig


NLL_HEADER = ["student NLL", "teacher NLL"]


def nll_cells(summary: dict) -> list[str]:
    """The judge-free gap (lion_distill.evaluate.nll) of an evaluation, n/a where it was not measured."""
    nll = summary.get("nll") or {}
    return [f"{nll[k]:.3f}" if nll.get(k) is not None else "n/a" for k in ("student_nll", "teacher_nll")]


def lion_eval_section(run: RunDir) -> list[str]:
    """The Lion report's section: the student's relative score before training and after each
    imitation stage (the outcome of the min-max game), with its plot in plots/."""
    summaries = lion_eval_summaries(run)
    out = ["\n## Student vs reference per iteration\n"]
    if not summaries:
        return out + [
            "No evaluation yet (configure `eval` to score the student before training and after every imitation)."
        ]
    plots = save_plots(run, {"relative_score.png": relative_score_trend(summaries)})
    rows = [headline_row("base" if k < 0 else k, s) + nll_cells(s) for k, s in summaries.items()]
    out += [
        f"![relative score per iteration]({plots['relative_score.png']})\n",
        table_md(["iteration", *HEADLINE_HEADER, *NLL_HEADER], rows),
    ]
    if any("nll" in s for s in summaries.values()):
        out.append(
            "\nStudent NLL: the student's mean negative log-likelihood per token of the teacher's answers to "
            "these questions (asked as it is trained); teacher NLL, the teacher's own on the same answers, is "
            "the floor. No judge takes part: lower is closer to the teacher. The relative score is only as good "
            "as its judge: a small one is near chance (benchmarks/RESULTS.md: SmolLM2-135M-Instruct's "
            'preference for a real answer over "I don\'t know.").'
        )
    return out
