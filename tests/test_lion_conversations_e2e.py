"""One Lion iteration of the demo config on a pool that users bring: a ShareGPT file of
multi-turn conversations and a Hugging Face `datasets` folder of instructions, on the
session's Ray cluster and vLLM server. The run exports itself as `datasets` folders,
read back with `datasets.load_from_disk`, and is tracked in TensorBoard event files, read back with
TensorBoard's reader (the MLflow backend: test_lion_e2e.py)."""

import json

import datasets
import pytest

from lion_distill.lion import loop
from tests.test_lion_e2e import DEMO, KEY, KEY_ENV, check_run_dir, files_containing, overrides, table

CONVERSATIONS = [
    {
        "conversations": [
            {"from": "system", "value": "You are a patient science teacher."},
            {"from": "human", "value": "Why is the sky blue?"},
            {"from": "gpt", "value": "Scattering."},
            {"from": "human", "value": "Why not violet, then?"},
            {"from": "gpt", "value": "Our eyes."},
            {"from": "human", "value": "Explain it to a child in two sentences."},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "Suggest a name for a bakery."},
            {"from": "gpt", "value": "Crumbs."},
            {"from": "human", "value": "Make it sound French."},
            {"from": "gpt", "value": "Les Miettes."},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "Answer in one word."},
            {"from": "human", "value": "What colour is grass?"},
            {"from": "gpt", "value": "Green."},
        ]
    },
    {"conversations": [{"from": "human", "value": "Write a haiku about rain."}]},
    {"conversations": [{"from": "gpt", "value": "An assistant speaking first is rejected."}]},
]
INSTRUCTIONS = [{"instruction": f"Give {n} tips for learning to cook.", "input": ""} for n in range(2, 8)]


def test_sharegpt_and_a_datasets_folder_through_one_lion_iteration_exported_as_datasets(
    ray_cluster, vllm_server, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(KEY_ENV, KEY)
    (tmp_path / "chats.json").write_text(json.dumps(CONVERSATIONS, indent=1))
    datasets.Dataset.from_list(INSTRUCTIONS).save_to_disk(str(tmp_path / "instructions"))
    run = tmp_path / "run"
    sets = overrides(run, vllm_server, iterations=1, sample=100, new=4)
    state = loop.run(
        loop.load(
            DEMO,
            sets
            + [
                f"data.pool_files=[{tmp_path / 'chats.json'},{tmp_path / 'instructions'}]",
                "lion.final_imitation=false",
                "tracking.backend=tensorboard",
                # In this process (Ray Train's local mode, the same loop): the curve
                # from Ray Train's rank-0 worker is test_lion_e2e.py's (MLflow).
                "train.num_workers=0",
                "tracking.run_name=demo",
                "tracking.project=lion-e2e",
            ],
        )
    )
    assert state["done"]
    check_run_dir(run, iterations=1, final_imitation=False)
    report = json.loads((run / "data_report.json").read_text())
    assert (report["rows_in"], report["rows_kept"], report["rejects"]) == (11, 10, {"bad_conversation": 1})
    assert report["examples"]["bad_conversation"][0].startswith(f"{tmp_path / 'chats.json'}:")
    # The teacher answered every user turn: 10 pool rows and the 3 earlier turns of the two multi-turn chats.
    turns = table(run, "iter_0/imitation/teacher_turns.parquet")
    assert len(turns) == 3 and all(r["text"] for r in turns)
    metrics = json.loads((run / "iter_0" / "metrics.json").read_text())
    assert metrics["rows/imitation/teacher"] == 13 and metrics["lion/imitation_trained"] >= 5
    # The tiny student has a chat template: it is trained and asked in it (student.prompt_format chat),
    # conversations and instructions alike, one kind of request.
    assert metrics["rows/discrimination/student"] == 10 and "rows/discrimination/student_chat" not in metrics
    assert json.loads((run / "config.json").read_text())["student"]["prompt_format"] == "chat"
    assert "Student format: **chat**" in (run / "report.md").read_text()

    exported = datasets.load_from_disk(str(run / "datasets" / "iter_0"))
    assert {name: len(split) for name, split in exported.items()} == {
        "imitation": 10,
        "discrimination": 10,
        "generation": len(table(run, "iter_0/generation/new_instructions.parquet")),
    }
    sky = next(r for r in exported["imitation"] if r["instruction"].startswith("Explain it to a child"))
    assert [m["role"] for m in sky["messages"]] == ["system"] + ["user", "assistant"] * 3
    assert sky["messages"][2]["content"] != "Scattering."  # the teacher's answer, not the file's
    assert all(r["hard"] == (r["gap"] >= 1.0) for r in exported["discrimination"] if r["gap"] is not None)
    assert all(r["seed_instruction"] for r in exported["generation"])
    assert "| teacher | openai |" in (run / "datasets" / "README.md").read_text()
    assert files_containing(tmp_path, KEY) == []  # the key is read from the environment, never written

    # Tracked: the iteration's summary at step 1, the training loop's loss at every optimizer step, the plots.
    events = EventAccumulator(str(run / "tensorboard" / "demo"), size_guidance={"images": 0}).Reload()
    steps = lambda scalars: {p.step: p.value for p in scalars}  # noqa: E731
    assert steps(events.Scalars("summary/hard_fraction")) == {
        1: pytest.approx(state["summary"]["iter_0"]["hard_fraction"])
    }
    assert steps(events.Scalars("summary/new_instructions")) == {1: state["summary"]["iter_0"]["new_instructions"]}
    assert {"plots/hard_fraction_gap.png", "plots/stage_throughput.png"} <= set(events.Tags()["images"])
    curve = EventAccumulator(str(run / "tensorboard" / "demo" / "train" / "lion-demo-iter0-imitation")).Reload()
    assert sorted(steps(curve.Scalars("train/loss"))) == list(range(1, int(metrics["steps/imitation/train"]) + 1))
