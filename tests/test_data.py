import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lion_distill.data import (
    POOL_SCHEMA,
    REJECT_REASONS,
    PoolFileError,
    PoolSchemaError,
    RunDir,
    instruction_id,
    load_pool,
    pool_table,
    read_pool,
    write_pool,
)
from lion_distill.data.__main__ import main as inspect_main

REPO = Path(__file__).resolve().parent.parent
SEED_FILES = sorted((REPO / "data" / "self-instruct").glob("*.jsonl"))


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_demo_pool_loads_all_427_with_inputs():
    pool, report = load_pool(SEED_FILES)
    assert (report.rows_in, report.rows_kept, report.rows_rejected) == (427, 427, 0)
    assert pool.schema == POOL_SCHEMA
    inputs = pool.column("input").to_pylist()
    assert sum(1 for x in inputs if x) == 333  # the inputs self-instruct provides are kept
    assert set(pool.column("origin").to_pylist()) == {"seed"}


def test_every_reject_reason_is_counted_with_its_line(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            json.dumps({"instruction": "Name three primary colours.", "input": ""}),  # 1 kept
            '{"instruction": "broken",',  # 2 malformed_json
            json.dumps(["not", "an", "object"]),  # 3 not_an_object
            json.dumps({"input": "no instruction here"}),  # 4 missing_field
            json.dumps({"instruction": 42}),  # 5 non_string_field
            json.dumps({"instruction": "   \t "}),  # 6 empty_instruction
            json.dumps({"instruction": "x" * 50}),  # 7 instruction_too_long
            b'{"instruction": "bad \xff byte"}',  # 8 invalid_utf8
            json.dumps({"instruction": " Name three primary colours. ", "input": ""}),  # 9 duplicate_id (after strip)
            "",  # blank line: layout, not a record
            json.dumps({"instruction": "Translate to French.", "input": ["a list"]}),  # 11 non_string_field
            json.dumps({"instruction": "Summarise the text.", "input": None}),  # 12 kept, null input is empty
            json.dumps({"messages": [{"role": "bot", "content": "x"}]}),  # 13 bad_conversation
        ],
    )
    pool, report = load_pool([path], max_instruction_chars=40)
    assert report.reconciles and report.rows_in == 12 and report.rows_kept == 2
    assert set(report.rejects) == set(REJECT_REASONS)
    assert report.rejects["non_string_field"] == 2
    where = {reason: locs[0] for reason, locs in report.examples.items()}
    assert where["malformed_json"].startswith(f"{path}:2 ")
    assert where["instruction_too_long"] == f"{path}:7 (50 > 40 characters)"
    assert where["invalid_utf8"] == f"{path}:8"
    assert where["duplicate_id"] == f"{path}:9 (same instruction and input as {path}:1)"
    assert pool.column("instruction").to_pylist() == ["Name three primary colours.", "Summarise the text."]


def test_a_jsonl_line_is_split_at_newlines_only(tmp_path):
    # json.dumps(..., ensure_ascii=False) writes U+2028 / U+2029 raw inside strings: valid JSON, one record.
    text = "First line\u2028second line\u2029third\x0cfourth"
    path = tmp_path / "raw.jsonl"
    path.write_text(
        json.dumps({"instruction": text}, ensure_ascii=False) + "\r\n" + json.dumps({"instruction": "Next."}) + "\n",
        encoding="utf-8",
    )
    pool, report = load_pool([path])
    assert (report.rows_in, report.rows_kept) == (2, 2) and pool.column("instruction").to_pylist() == [text, "Next."]


def test_alpaca_json_rejects_carry_lines_and_broken_lists_stop_with_location(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(
        '[\n  {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1."},\n'
        '  {"instruction": "", "input": "", "output": ""},\n  "oops",\n'
        '  {"instruction": "Classify the sentiment.", "input": "I love it", "output": "positive"}\n]\n'
    )
    pool, report = load_pool([path])
    assert (report.rows_in, report.rows_kept) == (4, 2) and report.reconciles
    assert report.examples == {"empty_instruction": [f"{path}:3"], "not_an_object": [f"{path}:4 (got str)"]}
    assert pool.column("input").to_pylist() == ["", "I love it"]
    path.write_text('[\n {"instruction": "a"},\n {"instruction": "b" oops}\n]')
    with pytest.raises(PoolFileError, match=r"alpaca.json:3:22: malformed JSON"):
        load_pool([path])
    path.write_text('{"instruction": "a"}')
    with pytest.raises(PoolFileError, match="expected a JSON list"):
        load_pool([path])


def test_alpaca_json_lines_are_counted_in_one_pass_across_a_long_indented_file(tmp_path):
    """The reader counts newlines since the previous record, not from the top (quadratic on
    52K rows): every reject's line is still the line its element starts on, invalid bytes included."""
    rows = [{"instruction": f"Task {i}\nwith a newline inside", "input": "", "output": "o"} for i in range(300)]
    rows[5] = {"instruction": "", "output": "x"}
    rows[250] = {"instruction": 7}
    text = json.dumps(rows, indent=4).encode()
    bad = text.index(b"Task 280") + 2  # an invalid byte inside element 280
    path = tmp_path / "long.json"
    path.write_bytes(text[:bad] + b"\xff" + text[bad + 1 :])
    starts = [n for n, line in enumerate(text.decode().splitlines(), start=1) if line == "    {"]
    pool, report = load_pool([path])
    assert (report.rows_in, report.rows_kept) == (300, 297) and report.reconciles
    assert report.examples == {
        "empty_instruction": [f"{path}:{starts[5]}"],
        "non_string_field": [f"{path}:{starts[250]} (instruction is int)"],
        "invalid_utf8": [f"{path}:{starts[280]}"],
    }


def test_a_pool_is_parsed_once_per_job_while_its_files_are_unchanged(tmp_path, monkeypatch):
    from lion_distill.data import readers

    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"instruction": "One."})])
    parses, real = [], readers._read_pool
    monkeypatch.setattr(readers, "_read_pool", lambda *a, **k: parses.append(a) or real(*a, **k))
    first = load_pool([path])  # preflight
    monkeypatch.chdir(tmp_path)
    assert load_pool(["p.jsonl"]) is first and len(parses) == 1  # seeding reuses the parse (its paths made absolute)
    assert load_pool([path], max_instruction_chars=10) is not first and len(parses) == 2
    write_lines(path, [json.dumps({"instruction": "One."}), json.dumps({"instruction": "Two."})])
    assert load_pool([path])[1].rows_kept == 2 and len(parses) == 3  # a changed file is read again
    assert load_pool([path], reuse=False)[1].rows_kept == 2 and len(parses) == 3  # the seeding stage takes it
    assert load_pool([path])[1].rows_kept == 2 and len(parses) == 4  # and lets it go


def test_generic_jsonl_field_map_parquet_and_unknown_formats(tmp_path):
    jsonl = write_lines(tmp_path / "qa.jsonl", [json.dumps({"question": "Why is the sky blue?", "context": "physics"})])
    pool, _ = load_pool([jsonl], field_map={"instruction": "question", "input": "context"})
    assert pool.to_pylist()[0]["input"] == "physics"
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"instruction": ["Why is the sky blue?", None]}), parquet)
    pool2, report = load_pool([parquet])
    assert report.rejects == {"missing_field": 1} and report.examples["missing_field"] == [
        f"{parquet}:row 1 (instruction)"
    ]
    with pytest.raises(PoolFileError, match=r"unknown format '.txt'"):
        load_pool([tmp_path / "x.txt"] if (tmp_path / "x.txt").write_text("a") else [])
    with pytest.raises(PoolFileError, match="no such file"):
        load_pool([tmp_path / "missing.jsonl"])
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(PoolFileError, match="no 'instruction', 'messages' or 'conversations' column"):
        load_pool([tmp_path / "bad.parquet"])


def test_ids_are_stable_across_runs_and_readers(tmp_path):
    rows = [
        {"instruction": "Summarise the text.", "input": "Ray is a framework."},
        {"instruction": "Tell a joke.", "input": ""},
    ]
    jsonl = write_lines(tmp_path / "a.jsonl", [json.dumps(r) for r in rows])
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{**r, "output": "..."} for r in rows]))
    selfinstruct = write_lines(
        tmp_path / "s.jsonl",
        [
            json.dumps({"id": "t", "instruction": r["instruction"], "instances": [{"input": r["input"], "output": ""}]})
            for r in rows
        ],
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    ids = [load_pool([f])[0].column("id").to_pylist() for f in (jsonl, alpaca, selfinstruct, tmp_path / "a.parquet")]
    assert all(x == ids[0] for x in ids)
    assert ids[0] == [instruction_id(**rows[0]), instruction_id(**rows[1])]
    # A known value pins the hash: changing it would orphan every cached response and pool.
    assert instruction_id("Tell a joke.", "") == "3b58d90f89fddb9f"
    assert instruction_id("a", "b") != instruction_id("a\x1fb", "") != instruction_id("ab", "")


def test_self_instruct_expands_each_instance(tmp_path):
    path = write_lines(
        tmp_path / "si.jsonl",
        [
            json.dumps(
                {
                    "id": "t1",
                    "instruction": "Sort the numbers.",
                    "instances": [{"input": "3 1 2", "output": "1 2 3"}, {"input": "9 8", "output": ""}, 7],
                }
            )
        ],
    )
    pool, report = load_pool([path])
    assert pool.column("input").to_pylist() == ["3 1 2", "9 8"]
    assert report.examples["non_string_field"] == [f"{path}:1 instance 2 (input is int)"]


def test_pool_parquet_round_trip_and_schema_errors(tmp_path):
    pool, _ = load_pool(SEED_FILES[:1])
    run = RunDir(tmp_path / "run")
    write_pool(run, "iter_0/cache_pool.parquet", pool)
    assert read_pool(run, "iter_0/cache_pool.parquet").equals(pool)
    assert not list((tmp_path / "run" / "iter_0").glob("*.tmp-*"))  # atomic write left no temporary
    with pytest.raises(PoolSchemaError, match=r"missing pool column\(s\) \['origin', 'parent_id', 'iteration'\]"):
        write_pool(run, "bad.parquet", pool.select(["id", "instruction", "input"]))


def test_run_dir_json_and_uri(tmp_path):
    run = RunDir(f"file://{tmp_path}/r")
    run.write_json("state.json", {"iteration": 1})
    assert run.read_json("state.json") == {"iteration": 1} and run.read_json("absent.json", {}) == {}
    assert (tmp_path / "r" / "state.json").is_file()


def test_pool_table_defaults():
    table = pool_table([{"instruction": "Write a haiku.", "origin": "hard", "parent_id": "abc", "iteration": 2}])
    row = table.to_pylist()[0]
    assert row["id"] == instruction_id("Write a haiku.") and row["input"] == "" and row["iteration"] == 2


def test_a_datasets_rows_come_back_as_one_table_in_its_order(ray_cluster):
    import ray.data

    from lion_distill.data.pools import dataset_to_table

    pool, _ = load_pool(SEED_FILES)
    ds = ray.data.from_arrow(pool).repartition(4)
    assert dataset_to_table(ds).equals(pool)
    assert dataset_to_table(ds.filter(lambda r: False)) is None


def test_inspect_cli(tmp_path, capsys):
    bad = write_lines(tmp_path / "bad.jsonl", ['{"instruction": ""}', "{oops"])
    assert inspect_main(["inspect", *map(str, SEED_FILES), str(bad)]) == 0
    out = capsys.readouterr().out
    assert "rows in: 429  kept: 427  rejected: 2" in out and f"{bad}:1" in out and f"{bad}:2" in out
    assert inspect_main(["inspect", str(tmp_path / "nope.json")]) == 2
