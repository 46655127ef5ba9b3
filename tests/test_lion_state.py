import pytest

from engine.data import RunDir
from engine.lion.state import STAGES, LionDriver, fresh_state, next_step, record_stage


def test_loop_order_and_counters():
    state = fresh_state("r", "/models/s", iterations=2)
    seen = []
    while (step := next_step(state)) is not None:
        seen.append(step)
        k, stage = step
        state = record_stage(state, k, stage, {"student_model": f"/ckpt/{k}"} if stage == "imitation" else {},
                             {"rows": 10, "cost_usd": 0.5}, {f"{stage}_done": True})
    assert seen == [(k, s) for k in range(2) for s in STAGES]
    assert state["done"] and state["student_model"] == "/ckpt/1"
    assert state["counters"]["rows"] == 60 and state["counters"]["cost_usd"] == pytest.approx(3.0)
    assert state["iteration_summary"]["1"] == {"imitation_done": True, "discrimination_done": True, "generation_done": True}


def test_out_of_order_completion_is_refused():
    state = fresh_state("r", "/m", iterations=1)
    with pytest.raises(RuntimeError, match="completed out of order; next is \\(0, 'imitation'\\)"):
        record_stage(state, 0, "generation", {}, {}, {})


def test_driver_persists_and_reloads_state(tmp_path):
    run = RunDir(tmp_path / "run")
    first = LionDriver(run.uri, fresh_state("r", "/m", iterations=1))
    first.complete(0, "imitation", {"student_model": "/ckpt/0"}, {"rows": 3}, {})
    # A new driver (a restarted cluster) picks up where state.json says, not from scratch.
    second = LionDriver(run.uri, fresh_state("r", "/m", iterations=1))
    assert next_step(second.get()) == (0, "discrimination") and second.get()["student_model"] == "/ckpt/0"
    assert second.set_iterations(2)["iterations"] == 2 and run.read_json("state.json")["iterations"] == 2
    run.write_json("state.json", fresh_state("r", "/m", iterations=1))  # changed on disk behind the actor's back
    assert next_step(second.reload()) == (0, "imitation")
