"""The stage runner's state, without Ray: planning, order, counters, resume from disk."""

import pytest

from lion_distill.data import RunDir
from lion_distill.errors import RunDirFormatError, StateFileError
from lion_distill.runner import (
    Driver,
    StageResult,
    check_format,
    checked,
    fresh_state,
    next_stage,
    plan_stages,
    record_stage,
)


def test_stages_complete_in_order_with_counters_outputs_and_summaries():
    state = plan_stages(
        fresh_state("lion", "r", {"student_model": "/base"}),
        ["iter_0/imitation", "iter_0/discrimination", "iter_1/imitation"],
    )
    for stage, bucket in (
        ("iter_0/imitation", "iter_0"),
        ("iter_0/discrimination", "iter_0"),
        ("iter_1/imitation", "iter_1"),
    ):
        assert next_stage(state) == stage and not state["done"]
        state = record_stage(
            state,
            stage,
            bucket,
            StageResult(
                {"student_model": f"/ckpt/{stage}"} if stage.endswith("imitation") else {},
                {"rows": 10, "cost_usd": 0.5},
                {stage.split("/")[1]: True},
            ),
        )
    assert state["done"] and next_stage(state) is None
    assert state["outputs"]["student_model"] == "/ckpt/iter_1/imitation"
    assert state["counters"] == {"rows": 30, "cost_usd": pytest.approx(1.5)}
    assert state["summary"] == {"iter_0": {"imitation": True, "discrimination": True}, "iter_1": {"imitation": True}}


def test_a_stage_returns_a_stage_result_and_nothing_else():
    result = StageResult({"student_model": "/m"})
    assert checked("iter_0/imitation", result) is result
    with pytest.raises(TypeError, match="stage iter_0/imitation returned tuple: a stage returns"):
        checked("iter_0/imitation", ({"student_model": "/m"}, {}, {}))  # Lion's stages before issue 34


def test_out_of_order_completion_is_refused():
    state = plan_stages(fresh_state("j", "r"), ["a", "b"])
    with pytest.raises(RuntimeError, match="'b' completed out of order; next is 'a'"):
        record_stage(state, "b", "b", StageResult())


def test_a_replan_keeps_the_completed_prefix_and_refuses_another_config():
    state = record_stage(plan_stages(fresh_state("j", "r"), ["a", "b"]), "a", "a", StageResult())
    longer = plan_stages(state, ["a", "b", "c"])  # more iterations on a re-run
    assert next_stage(longer) == "b" and not longer["done"]
    assert plan_stages(state, ["a"])["done"]  # fewer: what is done is done
    with pytest.raises(RuntimeError, match="not the start of the planned"):
        plan_stages(state, ["x", "a"])
    with pytest.raises(ValueError, match="unique"):
        plan_stages(state, ["a", "a"])


def test_driver_persists_and_reloads_state(tmp_path):
    run = RunDir(tmp_path / "run")
    first = Driver(run.uri, fresh_state("lion", "r", {"student_model": "/m"}))
    first.plan(["a", "b"])
    first.complete("a", "a", StageResult({"student_model": "/ckpt/0"}, {"rows": 3}, {}))
    # A new driver of the same run (a restarted cluster) picks up where state.json says, not from scratch.
    run_id = check_format(run)["run_id"]
    second = Driver(run.uri, {**fresh_state("lion", "r", {"student_model": "/m"}), "run_id": run_id})
    assert next_stage(second.reload()) == "b" and second.state["outputs"]["student_model"] == "/ckpt/0"
    # Its memory never goes over the directory's own state: another run's there is refused, as is none.
    run.write_json("state.json", plan_stages(fresh_state("lion", "r"), ["a", "b"]))
    with pytest.raises(StateFileError, match="deleted or replaced"):
        second.reload()
    run.local_path("state.json").unlink()
    with pytest.raises(StateFileError, match="holds no state"):
        second.complete("b", "b", StageResult())
    assert not run.exists("state.json")


def test_a_state_file_from_an_older_engine_or_unreadable_is_one_line(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("state.json", {"completed": {"0": ["imitation"]}})
    with pytest.raises(RunDirFormatError, match="run directory format 1 .*start a new run directory"):
        Driver(run.uri, fresh_state("lion", "r"))
    run.local_path("state.json").write_text('{"version": 2, "comple')  # a disk that filled up, an editor
    with pytest.raises(StateFileError) as error:
        check_format(run)
    assert "\n" not in str(error.value) and "state.json: not readable as a run's state" in str(error.value)
