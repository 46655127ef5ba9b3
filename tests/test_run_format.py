"""A run directory records its format (lion_distill.data.rundir.FORMAT) in state.json when it is made;
one of another format is refused in one line (resume, export) or read as far as it reads (the
reports). Milliseconds, no Ray: the check comes before the driver actor."""

import pytest

from lion_distill.cli import main as cli
from lion_distill.data import RunDir
from lion_distill.data.rundir import FORMAT, format_problem
from lion_distill.errors import RunDirFormatError
from lion_distill.lion.report import write_report
from lion_distill.runner import Stage, StageResult, check_format, fresh_state, run_stages


def _old_run(tmp_path, version: int | None = 2) -> RunDir:
    """A run directory as format 2 left it: failures as strings in its judgments and responses."""
    run = RunDir(tmp_path / "old")
    state = {**fresh_state("lion", "old"), "stages": ["iter_0/imitation"], "completed": ["iter_0/imitation"]}
    if version is None:
        del state["version"]
    else:
        state["version"] = version
    run.write_json("state.json", state)
    return run


def test_a_new_run_directory_records_this_format():
    assert fresh_state("lion", "x")["version"] == FORMAT == 3
    assert format_problem(None, "x") is None and format_problem(fresh_state("lion", "x"), "x") is None


def test_an_older_run_directory_is_refused_in_one_line_saying_its_format_and_what_to_do(tmp_path):
    run = _old_run(tmp_path)
    with pytest.raises(RunDirFormatError) as refused:
        check_format(run)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"{run.path('state.json')}: run directory format 2 (")
    assert "this lion-distill reads format 3" in line and "start a new run directory" in line
    # The runner refuses before any stage runs or any actor starts: nothing of the old run is touched.
    ran = []
    with pytest.raises(RunDirFormatError):
        run_stages(run, job="lion", name="old", stages=[Stage("iter_0/x", lambda s: ran.append(1) or StageResult())])
    assert not ran and run.read_json("state.json")["version"] == 2
    assert "format 1 (" in format_problem(_old_run(tmp_path / "older", version=None).read_json("state.json"), "s")
    assert "newer than this lion-distill's 3: upgrade" in format_problem({"version": 4}, "s")


def test_the_cli_refuses_to_export_an_older_run_directory(tmp_path, capsys):
    run = _old_run(tmp_path)
    assert cli(["export", run.uri, "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "run directory format 2" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_the_report_of_an_older_run_directory_says_its_format(tmp_path):
    run = _old_run(tmp_path)
    report = open(write_report(run)).read()
    assert "run directory format 2 (failures as `failed: <reason>` strings)" in report
