"""Hugging Face `datasets` in and out, without Ray: a `save_to_disk` folder and `load_dataset`
sources (json, parquet, csv) as seed pools with located rejects; a run directory exported as
one DatasetDict per iteration with its card, read back with `datasets.load_from_disk`."""

from __future__ import annotations

import json
import os

import datasets
import pyarrow as pa
import pytest

from lion_distill.cli import main as cli
from lion_distill.config import ConfigError, load_config
from lion_distill.data import RESPONSE_SCHEMA, PoolFileError, RunDir, load_pool, pool_table, write_pool
from lion_distill.data.rundir import FORMAT
from lion_distill.judging.referee import JUDGMENT_SCHEMA
from lion_distill.lion.export import export_run
from lion_distill.lion.iteration import rel
from lion_distill.llm.answers import write_responses
from lion_distill.llm.responses import response_row

ROWS = [
    {"instruction": "Name three primary colours.", "input": ""},
    {"instruction": "Summarise the text.", "input": "Ray runs tasks on a cluster."},
    {"instruction": "   ", "input": ""},  # row 2: empty_instruction
    {"instruction": "Name three primary colours.", "input": ""},  # row 3: duplicate_id
]
CHAT = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"}]}


def test_a_datasets_folder_is_a_pool_with_the_same_reject_accounting(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "plain"))
    pool, report = load_pool([tmp_path / "plain"])
    assert report.reconciles and (report.rows_in, report.rows_kept) == (4, 2)
    assert report.examples == {
        "empty_instruction": [f"{tmp_path / 'plain'}:row 2"],
        "duplicate_id": [f"{tmp_path / 'plain'}:row 3 (same instruction and input as {tmp_path / 'plain'}:row 0)"],
    }
    assert pool.column("input").to_pylist() == ["", "Ray runs tasks on a cluster."]
    # A DatasetDict's train split; conversations as in files.
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([CHAT]), "test": datasets.Dataset.from_list([CHAT])}
    ).save_to_disk(str(tmp_path / "dict"))
    pool, _ = load_pool([tmp_path / "dict"])
    assert pool.to_pylist()[0]["system"] == "Be terse." and pool.to_pylist()[0]["instruction"] == "Hi?"
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolFileError, match="not a Hugging Face datasets folder"):
        load_pool([tmp_path / "empty"])


def test_load_dataset_sources_json_parquet_csv_are_pools(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(ROWS).to_csv(str(tmp_path / "p.csv"), index=False)
    for builder, name in (("json", "p.jsonl"), ("parquet", "p.parquet"), ("csv", "p.csv")):
        source = {"path": builder, "data_files": [str(tmp_path / name)], "split": "train", "name": None}
        pool, report = load_pool([], sources=[source])
        assert (report.rows_in, report.rows_kept) == (4, 2) and report.reconciles, builder
        assert pool.column("instruction").to_pylist() == ["Name three primary colours.", "Summarise the text."]
        assert report.examples["empty_instruction"] == [f"{builder}:{tmp_path / name}:row 2"]
    with pytest.raises(PoolFileError, match="no such data file"):
        load_pool([], sources=[{"path": "csv", "data_files": [str(tmp_path / "none.csv")]}])
    # The config section: load_dataset sources, and a pool needs files or sources.
    cfg = tmp_path / "c.yaml"
    role = "{backend: vllm, model: m}"
    body = f"run_dir: r\nteacher: {role}\nstudent: {role}\nreferee: {role}\ngenerator: {role}\n"
    cfg.write_text(body + f"data: {{datasets: [{{path: csv, data_files: [{tmp_path / 'p.csv'}]}}]}}\n")
    assert load_config(str(cfg), []).data.sources()[0]["path"] == "csv"
    cfg.write_text(body + "data: {}\n")
    with pytest.raises(ConfigError, match="pool_files"):
        load_config(str(cfg), [])


def _run_dir(tmp_path, key_value: str) -> RunDir:
    """A finished one-iteration Lion run directory, written by hand."""
    run = RunDir(str(tmp_path / "run"))
    pool = pool_table(
        [
            {"instruction": "Name a colour."},
            {
                "instruction": "Another?",
                "system": "Be terse.",
                "history": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
            },
        ]
    )
    ids = pool.column("id").to_pylist()
    write_pool(run, rel(0, "train_pool.parquet"), pool)
    write_pool(run, rel(0, "cache_pool.parquet"), pool)
    first_turn = pool_table([{"instruction": "Name a colour.", "system": "Be terse."}]).column("id")[0].as_py()
    write_responses(
        run,
        rel(0, "imitation", "teacher_responses.parquet"),
        [{"id": i, "role": "teacher", **response_row(t, "stop", 1, 1)} for i, t in zip(ids, ["Blue.", "Green."])],
    )
    write_responses(
        run,
        rel(0, "imitation", "teacher_turns.parquet"),
        [{"id": first_turn, "role": "teacher", **response_row("Red!", "stop", 1, 1)}],
    )
    for role, texts in (("teacher", ["Blue.", "Green."]), ("student", ["b", ""])):
        write_responses(
            run,
            rel(0, "discrimination", f"{role}_responses.parquet"),
            [{"id": i, "role": role, **response_row(t, "stop", 1, 1)} for i, t in zip(ids, texts)],
        )
    judgments = [
        {
            **dict.fromkeys(JUDGMENT_SCHEMA.names),
            "id": ids[0],
            "teacher_score": 8.0,
            "student_score": 3.0,
            "gap": 5.0,
            "hard": True,
            "status": "ok",
        },
        {
            **dict.fromkeys(JUDGMENT_SCHEMA.names),
            "id": ids[1],
            "status": "failed",
            "failure_kind": "unparseable",
            "failure": "review: no scores in the rubric's layout",
        },
    ]
    run.write_table(
        rel(0, "discrimination", "judgments.parquet"), pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA)
    )
    new = pool_table([{"instruction": "Name a rare colour.", "origin": "hard", "parent_id": ids[0], "iteration": 1}])
    write_pool(run, rel(0, "generation", "new_instructions.parquet"), new)
    run.write_json(rel(0, "metrics.json"), {"generation_rejects/too similar": 2})
    write_pool(run, rel(1, "train_pool.parquet"), new)
    run.write_json(
        "data_report.json", {"rows_in": 3, "rows_kept": 2, "rows_rejected": 1, "rejects": {"empty_instruction": 1}}
    )
    run.write_json("state.json", {"version": FORMAT, "done": True})
    run.write_json(
        "config.json",
        {
            "name": "card-test",
            "teacher": {
                "backend": "openai",
                "model": "gpt-x",
                "openai": {"api_key_env": "MY_KEY", "api_key": key_value},
            },
            "referee": {"backend": "vllm", "model": "r"},
            "generator": {"backend": "vllm", "model": "g"},
            "student": {"backend": "hf", "model": "s"},
        },
    )
    assert RESPONSE_SCHEMA.names[0] == "id"
    return run


def test_a_run_exports_as_datasets_folders_with_a_card(tmp_path, capsys):
    secret = "sk-never-in-an-export-5e1f"
    _run_dir(tmp_path, secret)
    assert cli(["export", str(tmp_path / "run"), "--to", str(tmp_path / "out")]) == 0
    assert "iter_0: imitation 2, discrimination 2, generation 1, hard 1" in capsys.readouterr().out
    it0 = datasets.load_from_disk(str(tmp_path / "out" / "iter_0"))
    assert sorted(it0) == ["discrimination", "generation", "imitation"]
    imitation = it0["imitation"].to_list()
    assert [r["teacher_answer"] for r in imitation] == ["Blue.", "Green."]
    assert imitation[0]["messages"] == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    assert [m["content"] for m in imitation[1]["messages"]] == [
        "Be terse.",
        "Name a colour.",
        "Red!",
        "Another?",
        "Green.",
    ]
    judged = it0["discrimination"].to_list()
    assert [(r["gap"], r["hard"]) for r in judged] == [(5.0, True), (None, None)]  # a failed review is no number
    assert judged[1]["student_answer"] == "" and (judged[1]["status"], judged[1]["failure_kind"]) == (
        "failed",
        "unparseable",
    )
    new = it0["generation"].to_list()[0]
    assert (new["origin"], new["seed_instruction"]) == ("hard", "Name a colour.")
    assert not (tmp_path / "out" / "iter_1").exists()  # its pool was never answered: nothing to export
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: other" in card and "| teacher | openai | gpt-x |" in card and "| generator | vllm | g |" in card
    assert '"api_key_env": "MY_KEY"' in card and '"too similar": 2' in card and '"empty_instruction": 1' in card
    assert secret not in card and "<redacted>" in card
    assert cli(["export", str(tmp_path / "nowhere"), "--to", str(tmp_path / "x")]) == 2


def test_a_push_to_the_hub_is_private_unless_asked(tmp_path, monkeypatch, capsys):
    """No hub is reachable here: the hub client's two calls are recorded, not sent (scripted)."""
    import huggingface_hub

    _run_dir(tmp_path, "sk-x")
    calls = []

    class Api:
        def create_repo(self, name, **kw):
            calls.append(("create_repo", kw["private"]))

        def upload_file(self, **kw):
            calls.append(("upload_file", None))

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(
        datasets.DatasetDict, "push_to_hub", lambda self, name, **kw: calls.append(("push", kw["private"]))
    )
    args = ["export", str(tmp_path / "run"), "--to", str(tmp_path / "out"), "--push-to-hub", "me/lion"]
    assert cli(args) == 0 and "pushed to me/lion (private)" in capsys.readouterr().out
    assert calls == [("create_repo", True), ("upload_file", None), ("push", True)]
    calls.clear()
    assert cli([*args, "--public"]) == 0 and calls[0] == ("create_repo", False) and calls[-1] == ("push", False)
    assert cli(["export", str(tmp_path / "run"), "--to", str(tmp_path / "o2"), "--public"]) == 2


def test_a_run_without_conversations_exports_its_imitation(tmp_path):
    run = _run_dir(tmp_path, "sk-x")
    (tmp_path / "run" / "iter_0" / "imitation" / "teacher_turns.parquet").unlink()  # a pool of plain instructions
    export_run(run.uri, str(tmp_path / "out"))
    imitation = datasets.load_from_disk(str(tmp_path / "out" / "iter_0"))["imitation"].to_list()
    assert imitation[0]["messages"] == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    assert (
        imitation[1]["teacher_answer"] == "Green." and imitation[1]["messages"] is None
    )  # its first turn's answer is gone


def test_a_split_written_a_slice_at_a_time_is_the_split_written_whole(tmp_path, monkeypatch):
    from lion_distill.lion import export

    run = _run_dir(tmp_path, "sk-x")
    whole = export_run(run.uri, str(tmp_path / "whole"))
    monkeypatch.setattr(export, "ROWS", 1)  # every row a slice of its own
    assert export_run(run.uri, str(tmp_path / "sliced")) == whole
    for split in ("imitation", "discrimination", "generation"):
        one, sliced = (datasets.load_from_disk(str(tmp_path / out / "iter_0"))[split] for out in ("whole", "sliced"))
        assert sliced.features == one.features and sliced.to_list() == one.to_list() and len(one) == whole[0][split]
    # A generation that kept nothing: its split is empty, and loads (datasets' own save_to_disk
    # writes no data file for an empty table, and load_from_disk then fails on the folder).
    write_pool(run, rel(0, "generation", "new_instructions.parquet"), pool_table([]))
    assert export_run(run.uri, str(tmp_path / "none"))[0]["generation"] == 0
    generation = datasets.load_from_disk(str(tmp_path / "none" / "iter_0"))["generation"]
    assert len(generation) == 0 and generation.features == sliced.features


def test_answers_in_any_order_export_as_answers_in_the_pools_order(tmp_path):
    from lion_distill.lion.export import _exact_slices

    run = _run_dir(tmp_path, "sk-x")
    in_order = export_run(run.uri, str(tmp_path / "in_order"))  # the files in the pool's order: read alongside it
    path = rel(0, "discrimination", "student_responses.parquet")
    run.write_table(path, run.read_table(path).take([1, 0]))  # another order: looked up by id
    assert export_run(run.uri, str(tmp_path / "reversed")) == in_order
    one, other = (
        datasets.load_from_disk(str(tmp_path / out / "iter_0"))["discrimination"] for out in ("in_order", "reversed")
    )
    assert other.to_list() == one.to_list() and [r["student_answer"] for r in one] == ["b", ""]
    # A file's batches end at its row groups: the slices are the pool's all the same.
    batches = [pa.array(range(n)) for n in (3, 1, 4)]
    assert [len(a) for a in _exact_slices(iter(batches), 3)] == [3, 3, 2]
    assert pa.concat_arrays(list(_exact_slices(iter(batches), 3))).to_pylist() == [0, 1, 2, 0, 0, 1, 2, 3]


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (as `make test` sets it)")
def test_a_hub_id_offline_is_one_line_naming_it():
    with pytest.raises(PoolFileError) as failed:
        load_pool([], sources=[{"path": "my-org/instructions-not-here", "split": "train"}])
    assert str(failed.value).startswith("my-org/instructions-not-here: load_dataset failed: ") and "\n" not in str(
        failed.value
    )
