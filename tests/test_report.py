"""The run report over a synthetic two-iteration run, and over runs with parts missing."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lion_distill.data import RunDir
from lion_distill.lion.report import write_report
from lion_distill.metrics import Metrics, StageRecord

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("stage_throughput.png", "tokens_cost.png", "hard_fraction_gap.png", "score_distributions.png")


def iteration_metrics(k: int) -> dict:
    api = dict(api_requests=1200 + k, api_retries=7, api_cached=3)
    metrics = Metrics(
        [
            StageRecord(
                "imitation/teacher",
                300.0,
                rows=1200,
                prompt_tokens=96_000,
                completion_tokens=360_000,
                cost_usd=0.588 + k,
                **api,
            ),
            StageRecord("imitation/train", 1800.0, rows=1200, gpus=8, extra={"samples_per_s": 2.0, "mfu": 0.41}),
            StageRecord(
                "discrimination/student", 120.0, rows=600, prompt_tokens=48_000, completion_tokens=150_000, gpus=8
            ),
            StageRecord(
                "discrimination/referee",
                240.0,
                rows=1200,
                prompt_tokens=840_000,
                completion_tokens=72_000,
                failed_rows=2,
                failed_by_kind={"timeout": 2},
                cost_usd=0.528,
                **api,
            ),
            StageRecord(
                "generation/generator",
                60.0,
                rows=150,
                prompt_tokens=45_000,
                completion_tokens=9_000,
                cost_usd=0.0360,
                **api,
            ),
            StageRecord("generation/filter", 4.5, rows=150),
        ]
    ).as_dict()
    metrics.update(
        {
            "lion/hard_fraction": [0.4167, 0.3125][k],
            "lion/mean_gap": [1.25, 0.75][k],
            "lion/judged": 4,
            "lion/judge_failed": 2,
            "lion/new_instructions": 120,
            "lion/cache_pool_size": 600 + 120 * k,
            "lion/train_pool_size": 120,
            "generation_rejects/rouge_l": 25 + k,
            "generation_rejects/unparseable": 5,
            "lion/imitation_asked": 1200,
            "lion/imitation_trained": 1080 - 500 * k,
            "lion/imitation_truncated_answers": 100,
            "lion/imitation_failed_answers": 20,
        }
    )
    return metrics


def judgments(k: int) -> pa.Table:
    teacher = [9.0, 8.5, 7.0, 8.0, None, None]
    student = [6.0, 8.0, 7.5, 5.5 + k, None, None]
    gap = [None if t is None else t - s for t, s in zip(teacher, student)]
    return pa.table(
        {
            "id": [f"i{k}-{n}" for n in range(6)],
            "teacher_score": pa.array(teacher, pa.float64()),
            "student_score": pa.array(student, pa.float64()),
            "gap": pa.array(gap, pa.float64()),
            "hard": [g is not None and g >= 1.0 for g in gap],
            "status": ["ok"] * 4 + ["failed"] * 2,
            "failure_kind": [None] * 4 + ["unparseable", "server_error"],
            "failure": [None] * 4 + ["review: no scores in the rubric's layout", "review: HTTP 500: API error"],
        }
    )


def write_run(run: RunDir, iterations: int = 2) -> None:
    run.write_json("state.json", {"iteration": iterations - 1, "stage": "generation", "complete": True})
    for k in range(iterations):
        run.write_json(f"iter_{k}/metrics.json", iteration_metrics(k))
        run.write_table(f"iter_{k}/discrimination/judgments.parquet", judgments(k))


def test_full_report(tmp_path):
    run = RunDir(tmp_path / "run")
    write_run(run)
    path = write_report(run)
    assert path == run.path("report.md")
    report = run.read_bytes("report.md").decode()
    for name in PLOTS:
        data = run.read_bytes(f"plots/{name}")
        assert data.startswith(PNG) and len(data) > 5_000, name
        assert f"(plots/{name})" in report
    # Loop summary, straight from metrics.json.
    assert "| 0 | 0.4167 | 1.25 | 4 | 2 | 120 | 600 | 120 |" in report
    assert "| 1 | 0.3125 | 0.75 | 4 | 2 | 120 | 720 | 120 |" in report
    # Stage throughput: 1,200 rows in 300 s; tokens and cost per stage.
    assert "| 0 | imitation/teacher | 300 | 1,200 | 4 |" in report
    assert "| 1 | imitation/teacher | 96,000 | 360,000 | 1,201 | 7 | 3 | 1.588 |" in report
    assert "| 0 | imitation/train | samples_per_s | 2 |" in report and "mfu | 0.41 |" in report
    assert "Total API cost: **$3.3040**" in report  # (0.588 + 0.528 + 0.036) x 2 + 1
    # Scores from judgments.parquet: failed rows counted, never scored.
    assert "| 0 | 6 | 4 | 2 | 8.125 | 6.75 | 1.375 | 0.5 |" in report
    assert "| 1 | 6 | 4 | 2 | 8.125 | 7 | 1.125 | 0.5 |" in report
    assert "| 0 | unparseable | 1 | `review: no scores in the rubric's layout` |" in report
    assert "| 1 | server_error | 1 | `review: HTTP 500: API error` |" in report
    assert "| 0 | discrimination/referee | timeout | 2 |" in report  # failed requests by kind, from metrics.json
    assert "| 1 | rouge_l | 26 |" in report and "| 0 | unparseable | 5 |" in report
    assert "Nothing: every expected file was read." in report
    # Answers trained on out of those asked, per imitation; the run directory's size on disk.
    assert "| 0 | 1,200 | 1,080 | 100 | 20 | 90% |" in report and "| 1 | 1,200 | 580 | 100 | 20 | 48% |" in report
    size = sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "report.md")
    assert f"Run directory: `{run.uri}` ({size / 1000:.1f} kB on disk" in report


def test_partial_run_says_what_is_missing(tmp_path):
    run = RunDir(tmp_path / "run")
    # One iteration with stages but no API metrics, no summary and no judgments yet.
    run.write_json("iter_0/metrics.json", Metrics([StageRecord("imitation/train", 10.0, rows=5)]).as_dict())
    write_report(run)
    report = run.read_bytes("report.md").decode()
    assert run.read_bytes("plots/stage_throughput.png").startswith(PNG)
    assert not run.exists("plots/score_distributions.png") and not run.exists("plots/tokens_cost.png")
    assert "`state.json` is missing" in report
    assert "`iter_0/discrimination/judgments.parquet` is missing" in report
    assert "No judgments yet." in report and "No token or API metrics yet." in report
    assert "_No data for the score distributions plot._" in report


def test_bad_files_are_reported_not_raised(tmp_path):
    run = RunDir(tmp_path / "run")
    write_run(run)
    run.write_bytes("iter_0/metrics.json", b"{not json")
    run.write_json("iter_1/metrics.json", {**iteration_metrics(1), "note": "text", "lion/judge_failed": 3})
    run.write_table("iter_0/discrimination/judgments.parquet", judgments(0).drop(["status"]))
    run.write_bytes("iter_1/discrimination/judgments.parquet", b"not parquet")
    run.write_table("iter_2/discrimination/judgments.parquet", judgments(0).set_column(5, "status", pa.array([1] * 6)))
    write_report(run)
    report = run.read_bytes("report.md").decode()
    assert "`iter_0/metrics.json` is not valid JSON" in report
    assert "ignored 1 key(s) that are not `<metric>/<stage>` numbers: note" in report
    assert "`iter_0/discrimination/judgments.parquet` lacks columns ['status']" in report
    assert "`iter_1/discrimination/judgments.parquet` is unreadable" in report
    assert "`iter_2/discrimination/judgments.parquet` has columns of the wrong type: status (int64)" in report
    assert "`iter_2/metrics.json` is missing" in report
    assert "| 1 | 0.3125 | 0.75 |" in report


def test_judge_failure_count_mismatch_is_flagged(tmp_path):
    run = RunDir(tmp_path / "run")
    write_run(run, iterations=1)
    run.write_json("iter_0/metrics.json", {**iteration_metrics(0), "lion/judge_failed": 3})
    write_report(run)
    report = run.read_bytes("report.md").decode()
    assert "iteration 0: metrics say 3 judge failures, judgments.parquet holds 2" in report


@pytest.mark.parametrize("uri", ["mock:///run", "empty"])
def test_report_on_a_uri_and_on_an_empty_run(tmp_path, uri):
    run = RunDir(uri if "://" in uri else tmp_path / uri)
    if "://" in uri:
        write_run(run, iterations=1)
    write_report(run)
    report = run.read_bytes("report.md").decode()
    if "://" in uri:
        assert run.read_bytes("plots/score_distributions.png").startswith(PNG)
        assert "| 0 | 0.4167 | 1.25 |" in report
    else:
        assert "**No iterations yet**" in report and "No stage metrics yet." in report


def test_rows_per_s_is_on_a_log_axis(tmp_path):
    from lion_distill.lion.report import read_iteration, render_plots

    run = RunDir(tmp_path / "run")
    write_run(run, iterations=1)
    figure = render_plots([read_iteration(run, 0)])["stage_throughput.png"]
    assert [ax.get_yscale() for ax in figure.axes] == ["linear", "log"]  # time (s), rows / s


def test_a_finished_run_lists_no_phantom_iteration(tmp_path):
    """The last generation writes the next iteration's pools; a final imitation trains on them
    with no discrimination after it. Neither is a missing file."""
    run = RunDir(tmp_path / "run")
    write_run(run, iterations=2)
    stages = [f"iter_{k}/{s}" for k in range(2) for s in ("imitation", "discrimination", "generation")]
    state = {
        "version": 2,
        "job": "lion",
        "name": "r",
        "stages": stages,
        "completed": stages,
        "outputs": {},
        "counters": {},
        "summary": {},
        "done": True,
    }
    run.write_json("state.json", state)
    run.write_bytes("iter_2/train_pool.parquet", b"next pools")
    write_report(run)
    report = run.read_bytes("report.md").decode()
    assert "iter_2" not in report and "Nothing: every expected file was read." in report
    run.write_json(
        "state.json", {**state, "stages": [*stages, "iter_2/imitation"], "completed": [*stages, "iter_2/imitation"]}
    )
    run.write_json("iter_2/metrics.json", Metrics([StageRecord("imitation/train", 10.0, rows=5)]).as_dict())
    write_report(run)
    report = run.read_bytes("report.md").decode()
    assert "| 2 | imitation/train | 10 | 5 |" in report and "Nothing: every expected file was read." in report
