"""The run report: `report.md` at the top of a run directory, with PNG plots in `plots/`.

It reads what the loop wrote (`state.json`, per iteration `iter_<k>/metrics.json` and
`iter_<k>/discrimination/judgments.parquet`) and works with whatever is there: a run
cut short, stages without API metrics, an iteration not yet judged. What is missing or
unreadable is said in the report, never raised, so a report can be written at any
point of a run. Everything goes through RunDir, so a run on s3:// reports in place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI

from lion_distill.data import RunDir
from lion_distill.errors import ErrorKind, count_by_kind
from lion_distill.evaluate.report import lion_eval_section
from lion_distill.lion.report_examples import examples_section
from lion_distill.llm.ledger import read_spend
from lion_distill.metrics import FAILED_PREFIX
from lion_distill.metrics.report import failure_rows, fmt, save_plots, state_section, table_md
from lion_distill.train.card import student_line

ITER_DIR = re.compile(r"^iter_(\d+)$")
JUDGMENTS = "discrimination/judgments.parquet"
JUDGMENT_COLUMNS = ("id", "teacher_score", "student_score", "gap", "hard", "status", "failure_kind", "failure")
LOOP_KEYS = (
    "hard_fraction",
    "mean_gap",
    "judged",
    "judge_failed",
    "new_instructions",
    "cache_pool_size",
    "train_pool_size",
)
THROUGHPUT = (
    "timing_s",
    "rows",
    "rows_per_s",
    "prompt_tokens_per_s",
    "completion_tokens_per_s",
    "tokens_per_s_per_gpu",
    "failed_rows",
    "asked_again_after_failure",  # rows an earlier attempt got only a failure that passes for (lion_distill.llm.transient)
)
SPEND = ("prompt_tokens", "completion_tokens", "api_requests", "api_retries", "api_cached", "cost_usd")
KNOWN = set(THROUGHPUT) | set(SPEND)
KINDS = {kind.value for kind in ErrorKind}  # `failed_<kind>/<stage>`: lion_distill.metrics.StageRecord.failed_by_kind
# Rates that span decades (the ROUGE-L filter's thousands of rows/s, an LLM stage's tens).
LOG_SCALE = ("rows_per_s",)
# The loop's own order; stages it does not know follow, alphabetically.
STAGE_ORDER = (
    "imitation/teacher",
    "imitation/train",
    "discrimination/teacher",
    "discrimination/student",
    "discrimination/referee",
    "generation/generator",
    "generation/filter",
)


@dataclass
class Iteration:
    k: int
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> metric -> value
    loop: dict[str, float] = field(default_factory=dict)  # lion/<key>
    rejects: dict[str, float] = field(default_factory=dict)  # generation_rejects/<reason>
    engines: dict[str, float] = field(default_factory=dict)  # engine_starts, engine_start_s/<role>
    failed: dict[tuple[str, str], float] = field(default_factory=dict)  # (stage, error kind) -> failed requests
    judgments: pa.Table | None = None
    notes: list[str] = field(default_factory=list)  # what is missing, and why


def write_report(run_dir: RunDir) -> str:
    """Write report.md and plots/*.png into the run directory; return report.md's path."""
    notes: list[str] = []
    state = _read_json(run_dir, "state.json", notes)
    completed = _completed(state)
    iterations = [
        read_iteration(run_dir, k, completed)
        for k in list_iterations(run_dir)
        if completed is None or any(s.startswith(f"iter_{k}/") for s in completed)
    ]
    plots = save_plots(run_dir, render_plots(iterations))
    spend = read_spend(run_dir)
    markdown = render_markdown(
        run_dir.uri,
        state,
        iterations,
        plots,
        notes,
        spend,
        size_bytes=run_dir.size_bytes(),
        student=student_line(run_dir.read_json("config.json")),
    )
    markdown += "\n".join(examples_section(run_dir, [it.k for it in iterations])) + "\n"
    markdown += (
        "\n".join(lion_eval_section(run_dir)) + "\n"
    )  # lion_distill.evaluate's: the relative score per iteration
    run_dir.write_bytes("report.md", markdown.encode())
    return run_dir.path("report.md")


# --- reading ---------------------------------------------------------------------


def list_iterations(run_dir: RunDir) -> list[int]:
    infos = run_dir.fs.get_file_info(pafs.FileSelector(run_dir.root, allow_not_found=True))
    found = (ITER_DIR.match(i.base_name) for i in infos if i.type == pafs.FileType.Directory)
    return sorted(int(m.group(1)) for m in found if m)


def _completed(state) -> set[str] | None:
    """The runner's completed stages; None when state.json is not a runner's (then every
    iteration folder is expected to hold everything)."""
    if isinstance(state, dict) and isinstance(state.get("completed"), list):
        return set(state["completed"])
    return None


def _read_json(run_dir: RunDir, rel: str, notes: list[str]):
    if not run_dir.exists(rel):
        notes.append(f"`{rel}` is missing")
        return None
    try:
        return json.loads(run_dir.read_bytes(rel))
    except (ValueError, UnicodeDecodeError) as e:
        notes.append(f"`{rel}` is not valid JSON ({e})")
        return None


def read_iteration(run_dir: RunDir, k: int, completed: set[str] | None = None) -> Iteration:
    """An iteration's figures; with the runner's `completed` stages, only files those
    stages wrote are expected (the next iteration's pools, or a final imitation with no
    discrimination after it, are not a run cut short)."""
    it = Iteration(k)
    metrics = _read_json(run_dir, f"iter_{k}/metrics.json", it.notes)
    if metrics is not None and not isinstance(metrics, dict):
        it.notes.append(f"`iter_{k}/metrics.json` is a {type(metrics).__name__}, not a mapping of metrics")
    elif metrics is not None:
        split_metrics(metrics, it)
        it.notes += generation_notes(k, it.loop)
    rel = f"iter_{k}/{JUDGMENTS}"
    if not run_dir.exists(rel):
        if completed is None or f"iter_{k}/discrimination" in completed:
            it.notes.append(f"`{rel}` is missing (not judged yet?)")
        return it
    try:
        # The figures' columns only: the referee's reviews are most of the file's bytes.
        names = pq.read_schema(run_dir.path(rel), filesystem=run_dir.fs).names
        table = run_dir.read_table(rel, columns=[c for c in JUDGMENT_COLUMNS if c in names])
    except (pa.ArrowException, OSError) as e:
        it.notes.append(f"`{rel}` is unreadable ({e})")
        return it
    problem = judgment_problem(table)
    if problem:
        it.notes.append(f"`{rel}` {problem}")
    else:
        it.judgments = table
    return it


def generation_notes(k: int, loop: dict[str, float]) -> list[str]:
    """What the report says where an iteration's generation fell short: the safety cap on rounds
    bound (Lion's loop would have asked on), or a kind had no instruction to seed it."""
    missing, notes = loop.get("new_instructions_missing", 0), []
    if loop.get("generation_round_cap"):
        notes.append(
            f"iteration {k}: generation stopped at its cap of {fmt(loop.get('generation_rounds'))} rounds "
            f"(lion.generation_rounds), {fmt(missing)} new instructions short of the quota"
        )
    for kind in ("hard", "easy"):
        if loop.get(f"seeds_{kind}_unseeded"):
            notes.append(
                f"iteration {k}: no {kind} instruction to seed the generator, so its "
                f"{fmt(loop[f'seeds_{kind}_unseeded'])} {kind} new instructions were not made "
                "(lion.quota_rebalance: true fills them from the other kind)"
            )
    return notes


def judgment_problem(table: pa.Table) -> str | None:
    absent = [c for c in JUDGMENT_COLUMNS if c not in table.column_names]
    if absent:
        return f"lacks columns {absent}"
    numeric = lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)  # noqa: E731
    expected = {
        "teacher_score": numeric,
        "student_score": numeric,
        "gap": numeric,
        "hard": pa.types.is_boolean,
        "status": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    }
    wrong = [f"{c} ({table.schema.field(c).type})" for c, ok in expected.items() if not ok(table.schema.field(c).type)]
    return f"has columns of the wrong type: {', '.join(wrong)}" if wrong else None


def split_metrics(metrics: dict, it: Iteration) -> None:
    """Sort flat `<metric>/<stage>` keys into stages, loop summary and rejects."""
    skipped = []
    for key, value in metrics.items():
        if key == "engine_starts" or key.startswith("engine_start_s/"):
            it.engines[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or "/" not in key:
            skipped.append(key)
            continue
        metric, stage = key.split("/", 1)
        if metric.removeprefix(FAILED_PREFIX) in KINDS:
            it.failed[(stage, metric.removeprefix(FAILED_PREFIX))] = value
        elif metric == "lion":
            it.loop[stage] = value
        elif metric == "generation_rejects":
            it.rejects[stage] = value
        else:
            it.stages.setdefault(stage, {})[metric] = value
    it.stages = {s: it.stages[s] for s in sorted(it.stages, key=stage_rank)}
    if skipped:
        it.notes.append(
            f"`iter_{it.k}/metrics.json`: ignored {len(skipped)} key(s) that are not "
            f"`<metric>/<stage>` numbers: {', '.join(sorted(skipped)[:5])}"
        )


# --- numbers ---------------------------------------------------------------------


def judgment_summary(table: pa.Table) -> dict[str, float]:
    """Counts and means over the judged rows; failed rows are counted, never scored."""
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    out = {"rows": table.num_rows, "ok": ok.num_rows, "failed": table.num_rows - ok.num_rows}
    if ok.num_rows:
        out.update(
            {
                "teacher_mean": pc.mean(ok.column("teacher_score")).as_py(),
                "student_mean": pc.mean(ok.column("student_score")).as_py(),
                "mean_gap": pc.mean(ok.column("gap")).as_py(),
                "hard_fraction": pc.sum(ok.column("hard").cast(pa.int64())).as_py() / ok.num_rows,
            }
        )
    return out


def failure_kinds(table: pa.Table) -> tuple[dict[str, int], dict[str, str]]:
    """The failed judgments by kind, with the first message of each (a chunk of Python rows: the
    failures only)."""
    failed = table.filter(pc.fill_null(pc.not_equal(table.column("status"), "ok"), True))
    rows = failed.select(["failure_kind", "failure"]).to_pylist()
    return count_by_kind((r["failure_kind"] or "(no kind)", r["failure"]) for r in rows)


def scores(table: pa.Table, column: str) -> np.ndarray:
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    values = ok.column(column).to_numpy(zero_copy_only=False)
    return values[~np.isnan(values.astype(float))]


def stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def all_stages(iterations: list[Iteration]) -> list[str]:
    return sorted({s for it in iterations for s in it.stages}, key=stage_rank)


# --- plots -----------------------------------------------------------------------


def render_plots(iterations: list[Iteration]) -> dict[str, Figure]:
    """Only the plots there is data for; render_markdown says which are absent."""
    plots = {}
    stages = all_stages(iterations)
    if stages:
        plots["stage_throughput.png"] = _bars_per_stage(
            iterations, stages, ("timing_s", "rows_per_s"), ("time (s)", "rows / s")
        )
    spend_stages = [
        s
        for s in stages
        if any(
            it.stages.get(s, {}).get(m) for it in iterations for m in ("prompt_tokens", "completion_tokens", "cost_usd")
        )
    ]
    if spend_stages:
        plots["tokens_cost.png"] = _bars_per_stage(
            iterations, spend_stages, ("total_tokens", "cost_usd"), ("prompt + completion tokens", "cost (USD)")
        )
    if any("hard_fraction" in it.loop or "mean_gap" in it.loop for it in iterations):
        plots["hard_fraction_gap.png"] = _loop_trend(iterations)
    judged = [it for it in iterations if it.judgments is not None and judgment_summary(it.judgments)["ok"]]
    if judged:
        plots["score_distributions.png"] = _score_histograms(judged)
    return plots


def _stage_value(it: Iteration, stage: str, metric: str) -> float:
    m = it.stages.get(stage, {})
    if metric == "total_tokens":
        return m.get("prompt_tokens", 0) + m.get("completion_tokens", 0)
    return m.get(metric, 0)


def _bars_per_stage(iterations, stages, metrics, labels) -> Figure:
    fig = Figure(figsize=(max(6, 1.1 * len(stages)), 7))
    axes = fig.subplots(len(metrics), 1, sharex=True)
    x, width = np.arange(len(stages)), 0.8 / max(len(iterations), 1)
    for ax, metric, label in zip(axes, metrics, labels):
        for i, it in enumerate(iterations):
            ax.bar(x + i * width, [_stage_value(it, s, metric) for s in stages], width, label=f"iteration {it.k}")
        ax.set_ylabel(label)
        if metric in LOG_SCALE:
            ax.set_yscale("log", nonpositive="mask")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    axes[-1].set_xticks(x + width * (len(iterations) - 1) / 2, stages, rotation=30, ha="right")
    return fig


def _loop_trend(iterations: list[Iteration]) -> Figure:
    fig = Figure(figsize=(6, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    ks = [it.k for it in iterations]
    top.plot(ks, [it.loop.get("hard_fraction", np.nan) for it in iterations], "o-", color="tab:red")
    top.set_ylabel("hard fraction")
    top.set_ylim(0, 1)
    bottom.plot(ks, [it.loop.get("mean_gap", np.nan) for it in iterations], "s-", color="tab:blue")
    bottom.axhline(0, color="grey", lw=0.8)
    bottom.set_ylabel("mean gap (teacher - student)")
    bottom.set_xlabel("iteration")
    bottom.set_xticks(ks)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return fig


def _score_histograms(judged: list[Iteration]) -> Figure:
    fig = Figure(figsize=(4 * len(judged), 3.5))
    axes = np.atleast_1d(fig.subplots(1, len(judged), sharey=True))
    for ax, it in zip(axes, judged):
        teacher, student = scores(it.judgments, "teacher_score"), scores(it.judgments, "student_score")
        lo = min(1.0, teacher.min(initial=1.0), student.min(initial=1.0))
        hi = max(10.0, teacher.max(initial=10.0), student.max(initial=10.0))
        bins = np.arange(lo - 0.25, hi + 0.5, 0.5)  # scores average two reviews: half points
        ax.hist(teacher, bins=bins, alpha=0.6, label=f"teacher (mean {teacher.mean():.2f})")
        ax.hist(student, bins=bins, alpha=0.6, label=f"student (mean {student.mean():.2f})")
        ax.set_title(f"iteration {it.k}")
        ax.set_xlabel("referee score")
        ax.legend(fontsize="small")
    axes[0].set_ylabel("instructions")
    return fig


# --- markdown --------------------------------------------------------------------


def render_markdown(
    uri: str,
    state,
    iterations: list[Iteration],
    plots: dict[str, str],
    notes: list[str],
    spend: list[dict] = (),
    size_bytes: int | None = None,
    student: str = "",
) -> str:
    size = "" if size_bytes is None else f" ({_bytes(size_bytes)} on disk, checkpoints and exports included)"
    out = [f"# Lion run report\n\nRun directory: `{uri}`{size}\n" + (f"\n{student}\n" if student else "")]
    out += state_section(state)
    if not iterations:
        out.append("\n**No iterations yet** (no `iter_<k>/` folder).")
    out += _section_loop(iterations, plots)
    out += _section_divergence(iterations)
    out += _section_imitation(iterations)
    out += _section_stages(iterations, plots)
    out += _section_engines(iterations)
    out += _section_spend(iterations, plots, spend)
    out += _section_scores(iterations, plots)
    out += _section_rejects(iterations)
    missing = notes + [n for it in iterations for n in it.notes]
    out.append("\n## Missing or unreadable\n")
    out.append("\n".join(f"- {n}" for n in missing) if missing else "Nothing: every expected file was read.")
    return "\n".join(out) + "\n"


def _bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "bytes" else f"{n:.0f} bytes"
        n /= 1000
    return f"{n:,.1f} TB"


def _plot(plots: dict[str, str], name: str, title: str) -> list[str]:
    return [f"\n![{title}]({plots[name]})"] if name in plots else [f"\n_No data for the {title} plot._"]


def _section_loop(iterations, plots) -> list[str]:
    out = ["\n## Hard instructions per iteration\n"]
    rows = [[it.k] + [it.loop.get(key) for key in LOOP_KEYS] for it in iterations if it.loop]
    out.append(table_md(["iteration", *LOOP_KEYS], rows) if rows else "No `lion/*` summary metrics yet.")
    return out + _plot(plots, "hard_fraction_gap.png", "hard fraction and mean gap")


def _section_divergence(iterations) -> list[str]:
    """lion.discriminator: divergence: the student's mean divergence from the teacher (nats a token) on
    the instructions it called hard and on the easy ones (lion_distill.distill.divergence)."""
    keys = ("divergence_hard_mean", "divergence_easy_mean", "hard", "easy")
    rows = [[it.k] + [it.loop.get(key) for key in keys] for it in iterations if "divergence_hard_mean" in it.loop]
    if not rows:
        return []
    return [
        "\n## Judge-free discrimination: divergence of hard and easy instructions\n",
        table_md(["iteration", "hard: mean divergence", "easy: mean divergence", "hard", "easy"], rows),
    ]


def _section_imitation(iterations) -> list[str]:
    """Teacher answers trained on out of those asked: answers cut at max_tokens are left out
    unless lion.train_on_truncated, failed ones always."""
    rows = [
        [
            it.k,
            it.loop["imitation_asked"],
            it.loop.get("imitation_trained"),
            it.loop.get("imitation_truncated_answers"),
            it.loop.get("imitation_failed_answers"),
            f"{it.loop.get('imitation_trained', 0) / it.loop['imitation_asked']:.0%}"
            if it.loop["imitation_asked"]
            else "-",
        ]
        for it in iterations
        if "imitation_asked" in it.loop
    ]
    if not rows:
        return []
    return [
        "\n## Imitation: answers trained on\n",
        table_md(["iteration", "asked", "trained", "truncated", "failed", "trained / asked"], rows),
    ]


def _section_stages(iterations, plots) -> list[str]:
    out = ["\n## Time and throughput per stage\n"]
    rows = [[it.k, stage] + [m.get(key) for key in THROUGHPUT] for it in iterations for stage, m in it.stages.items()]
    out.append(table_md(["iteration", "stage", *THROUGHPUT], rows) if rows else "No stage metrics yet.")
    out += _plot(plots, "stage_throughput.png", "time and throughput")
    failed = [
        [it.k, stage, kind, n]
        for it in iterations
        for (stage, kind), n in sorted(it.failed.items(), key=lambda kv: (stage_rank(kv[0][0]), -kv[1]))
    ]
    if failed:
        out += [
            "\nFailed requests by kind (`failed_rows` above):\n",
            table_md(["iteration", "stage", "failure", "rows"], failed),
        ]
    extra = [
        [it.k, stage, metric, v]
        for it in iterations
        for stage, m in it.stages.items()
        for metric, v in m.items()
        if metric not in KNOWN
    ]
    if extra:
        out += ["\nOther stage metrics:\n", table_md(["iteration", "stage", "metric", "value"], extra)]
    return out


def _section_engines(iterations) -> list[str]:
    """Engines started per iteration (lion_distill.llm.serving): with shared serving, frozen roles
    start in the first iteration only and the student once per iteration."""
    roles = sorted({key.split("/", 1)[1] for it in iterations for key in it.engines if "/" in key})
    rows = [
        [it.k, it.engines.get("engine_starts")] + [it.engines.get(f"engine_start_s/{r}") for r in roles]
        for it in iterations
        if it.engines
    ]
    if not rows:
        return []
    return [
        "\n## Engine starts per iteration\n",
        table_md(["iteration", "engine_starts", *(f"start s: {r}" for r in roles)], rows),
    ]


def _spent_line(spend: list[dict]) -> str:
    """The spend log's total: every request sent, a stage killed midway and earlier jobs included."""
    by_role: dict[str, float] = {}
    for line in spend:
        by_role[line["role"]] = by_role.get(line["role"], 0.0) + line["cost_usd"]
    roles = ", ".join(f"{role} ${usd:.4f}" for role, usd in sorted(by_role.items()))
    return (
        f"\nSpent by this run (the spend log: every API request sent, stages killed midway and resumed jobs "
        f"included): **${sum(by_role.values()):.4f}** over {sum(ln['requests'] for ln in spend):,} requests ({roles})."
    )


def _section_spend(iterations, plots, spend: list[dict] = ()) -> list[str]:
    out = ["\n## Tokens and cost per stage\n"]
    rows = [
        [it.k, stage] + [m.get(key) for key in SPEND]
        for it in iterations
        for stage, m in it.stages.items()
        if any(m.get(key) for key in SPEND)
    ]
    if rows:
        out.append(table_md(["iteration", "stage", *SPEND], rows))
        total = sum(r[-1] or 0 for r in rows)
        out.append(f"\nTotal API cost: **${total:.4f}**; stages without API metrics cost nothing here.")
    else:
        out.append("No token or API metrics yet.")
    if spend:
        out.append(_spent_line(spend))
    return out + _plot(plots, "tokens_cost.png", "tokens and cost")


def _section_scores(iterations, plots) -> list[str]:
    out = ["\n## Referee scores and judge failures\n"]
    keys = ("rows", "ok", "failed", "teacher_mean", "student_mean", "mean_gap", "hard_fraction")
    rows, failures = [], []
    for it in iterations:
        if it.judgments is None:
            continue
        s = judgment_summary(it.judgments)
        rows.append([it.k] + [s.get(key) for key in keys])
        reported = it.loop.get("judge_failed")
        if reported is not None and reported != s["failed"]:
            it.notes.append(
                f"iteration {it.k}: metrics say {fmt(reported)} judge failures, judgments.parquet holds {s['failed']}"
            )
        failures += failure_rows(*failure_kinds(it.judgments), lead=[it.k])
    if not rows:
        return out + ["No judgments yet."] + _plot(plots, "score_distributions.png", "score distributions")
    out.append(table_md(["iteration", *keys], rows))
    out += _plot(plots, "score_distributions.png", "score distributions")
    out.append("\nJudge failures (excluded from every score above):\n")
    out.append(table_md(["iteration", "failure", "rows", "example"], failures) if failures else "None.")
    return out


def _section_rejects(iterations) -> list[str]:
    out = ["\n## Generation rejects by reason\n"]
    rows = [[it.k, reason, n] for it in iterations for reason, n in sorted(it.rejects.items())]
    return out + [table_md(["iteration", "reason", "rows"], rows) if rows else "No generation rejects recorded."]
