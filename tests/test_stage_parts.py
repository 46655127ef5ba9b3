"""A call's answers written block by block (lion_distill.llm.parts): a call killed midway resumes with
the blocks already written and asks only the rest."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lion_distill.config.models import RoleConfig, SamplingParams
from lion_distill.data import RunDir
from lion_distill.data.pools import RowFiles
from lion_distill.llm.answers import parts_folder
from lion_distill.llm.parts import (
    NOT_FINAL,
    Parts,
    iter_answers,
    part_files,
    part_ids,
    read_answers,
    written_ids,
)

REPO = Path(__file__).resolve().parent.parent


def test_a_block_is_written_whole_with_its_final_rows_and_no_internal_columns(tmp_path):
    run = RunDir(tmp_path)
    block = pa.table(
        {
            "id": ["a", "b", "c"],
            "text": ["x", None, "z"],
            "_api_cost_usd": [0.1, 0.2, 0.3],
            NOT_FINAL: [False, False, True],
        }
    )
    assert Parts(run.uri_of("calls/x"))(block) is block  # the block goes on unchanged
    (part,) = part_files(run, "calls/x")
    written = pq.read_table(part)
    assert written.column_names == ["id", "text"] and written.column("id").to_pylist() == ["a", "b"]
    # A temp file of a writer killed mid-write is not a part.
    (tmp_path / "calls" / "x" / "part-dead.parquet.tmp-1").write_bytes(b"half")
    Parts(run.uri_of("calls/x"))(pa.table({"id": ["d"], "text": ["w"]}))
    assert sorted(written_ids(run, "calls/x").to_pylist()) == ["a", "b", "d"]
    assert written_ids(run, "calls/none").to_pylist() == [] and part_files(run, "calls/none") == []


def test_the_answers_are_read_from_the_parts_column_by_column(tmp_path):
    run = RunDir(tmp_path)
    assert read_answers(run, "calls/x", ["id", "text"]) is None
    Parts(run.uri_of("calls/x"))(pa.table({"id": ["a"], "instruction": ["q"], "text": ["x"]}))
    Parts(run.uri_of("calls/x"))(pa.table({"id": ["b"], "instruction": ["q"], "text": ["y"], "logprobs": ["[]"]}))
    answers = read_answers(run, "calls/x", ["id", "text", "logprobs"])
    # Only the columns asked for, those a part lacks null; the rows' own columns are not read.
    assert answers.column_names == ["id", "text", "logprobs"]
    assert sorted(answers.to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "text": "x", "logprobs": None},
        {"id": "b", "text": "y", "logprobs": "[]"},
    ]
    # Streamed: the same rows, a few parts at a time (at least `rows` rows a table, the last fewer).
    Parts(run.uri_of("calls/x"))(pa.table({"id": ["c", "d"], "text": ["z", "w"]}))
    tables = list(iter_answers(run, "calls/x", ["id", "text"], rows=2))
    assert len(tables) == 2 and tables[0].num_rows >= 2 and all(t.column_names == ["id", "text"] for t in tables)
    assert sorted(r["id"] for t in tables for r in t.to_pylist()) == ["a", "b", "c", "d"]
    assert list(iter_answers(run, "calls/none", ["id"])) == []


def test_a_transient_failure_is_never_done_and_the_first_complete_row_is_the_answer(tmp_path):
    run = RunDir(tmp_path)
    parts = Parts(run.uri_of("calls/x"))
    # An outage: "b" and "c" failed for reasons that pass, "d" for one that does not (a bad request).
    parts(
        pa.table(
            {
                "id": ["a", "b", "c", "d"],
                "text": ["x", None, None, None],
                "finish_reason": ["stop", "error", "error", "error"],
                "error_kind": [None, "connection", "server_error", "bad_request"],
            }
        )
    )
    done, again = part_ids(run, "calls/x")
    assert sorted(done.to_pylist()) == ["a", "d"] and sorted(again.to_pylist()) == ["b", "c"]
    # The resumed call asks "b" and "c" again: "b" is answered, "c" fails again.
    parts(
        pa.table(
            {"id": ["b", "c"], "text": ["y", None], "finish_reason": ["stop", "error"], "error_kind": [None, "timeout"]}
        )
    )
    assert sorted(written_ids(run, "calls/x").to_pylist()) == ["a", "b", "d"]
    answers = read_answers(run, "calls/x", ["id", "text", "finish_reason"])
    by_id = {r["id"]: r for r in answers.to_pylist()}
    assert answers.num_rows == 4 and by_id["b"]["text"] == "y" and by_id["c"]["text"] is None
    streamed = [r["id"] for t in iter_answers(run, "calls/x", ["id"], rows=1) for r in t.to_pylist()]
    assert sorted(streamed) == ["a", "b", "c", "d"]  # each id once, whichever part holds its answer


def test_a_block_written_again_replaces_its_part(tmp_path):
    """A task Ray Data runs again (its worker was killed) writes the same block: one part, not two."""
    run = RunDir(tmp_path)
    parts = Parts(run.uri_of("calls/x"))
    parts(pa.table({"id": ["a", "b"], "text": ["x", "y"]}))
    parts(pa.table({"id": ["a", "b"], "text": ["x2", "y2"]}))
    assert len(part_files(run, "calls/x")) == 1
    parts(pa.table({"id": ["b", "c"], "text": ["y3", "z"]}))  # other rows around it: a part of its own
    assert len(part_files(run, "calls/x")) == 2
    answers = read_answers(run, "calls/x", ["id", "text"])
    assert sorted(answers.column("id").to_pylist()) == ["a", "b", "c"]  # "b" counted once


def test_rows_for_the_workers_are_files_that_a_new_attempt_replaces(tmp_path):
    run = RunDir(tmp_path)
    killed = RowFiles(run, "calls/x/requests")
    killed.add(pa.table({"id": ["a", "b"]}))
    killed.add(pa.table({"id": ["c"]}))
    assert [pq.read_table(f).column("id").to_pylist() for f in killed.files] == [["a", "b"], ["c"]]
    assert part_files(run, "calls/x") == []  # requests are not answers
    again = RowFiles(run, "calls/x/requests")  # the next attempt starts from no files
    assert not (tmp_path / "calls" / "x" / "requests").exists()
    again.add(pa.table({"id": ["c"]}))
    again.remove()
    assert not (tmp_path / "calls" / "x" / "requests").exists()


def test_a_call_asked_differently_keeps_its_parts_apart():
    role = RoleConfig(backend="hf", model="m", sampling=SamplingParams(max_tokens=8))
    longer = role.model_copy(update={"sampling": SamplingParams(max_tokens=16)})
    base = parts_folder("iter_0/imitation/parts", role, {"stage": "imitation/teacher"})
    assert base.startswith("iter_0/imitation/parts/imitation_teacher-")
    assert base == parts_folder("iter_0/imitation/parts", role, {"stage": "imitation/teacher"})
    assert base != parts_folder("iter_0/imitation/parts", longer, {"stage": "imitation/teacher"})
    assert base != parts_folder("iter_0/imitation/parts", role, {"stage": "imitation/teacher", "draw": "iter_0/x"})
    assert base != parts_folder(
        "iter_0/imitation/parts", role, {"stage": "imitation/teacher", "structured_output": {"regex": "a"}}
    )


CALL = """
import json, sys
import ray
from lion_distill.config.models import Parallelism, RoleConfig, SamplingParams
from lion_distill.data import RunDir
from lion_distill.llm.answers import answer
from lion_distill.llm.prompts import instruction_messages

ray.init(log_to_driver=False)
role = RoleConfig(backend="hf", model=sys.argv[2], sampling=SamplingParams(temperature=0.0, max_tokens=16),
                  parallelism=Parallelism(batch_size=2, replicas=1))
rows = [{"id": f"r{i:02d}", "instruction": f"Name {i} colours.", "input": ""} for i in range(int(sys.argv[3]))]
columns = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
out, rec = answer(role, rows, instruction_messages, stage="discrimination/student", role_name="student",
                  run_dir=RunDir(sys.argv[1]), parts="iter_0/discrimination/parts", columns=columns)
names, out = out.column_names, out.to_pylist()
print(json.dumps({"ids": [r["id"] for r in out], "asked": rec.rows, "from_parts": rec.extra["rows_from_parts"], "columns": names,
                  "answered": sum(r["text"] is not None for r in out)}))
"""


def test_a_call_killed_midway_resumes_from_the_blocks_it_wrote(ray_cluster, tiny_models, tmp_path):
    run, n = tmp_path / "run", 16
    cmd = [sys.executable, "-c", CALL, str(run), str(tiny_models.llama), str(n)]
    env = {**ray_cluster.env, "PYTHONPATH": str(REPO)}
    folder = run / "iter_0" / "discrimination" / "parts"
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(folder.glob("*/*.parquet"))) < 2:  # two blocks answered and written: kill it
        assert first.poll() is None, "the call ended before the kill point"
        assert time.monotonic() < deadline, "no block was written"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = written_ids(RunDir(run), str(next(folder.iterdir()).relative_to(run))).to_pylist()
    assert 2 <= len(before) < n and len(set(before)) == len(before)

    # The resumed call reads only the columns it is asked for (the referee's reviews: no token counts).
    again = subprocess.run([*cmd, "text,finish_reason"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    result = __import__("json").loads(again.stdout.strip().splitlines()[-1])
    # Only the rows not written were asked; every row has its answer, once.
    assert result["ids"] == [f"r{i:02d}" for i in range(n)] and result["answered"] == n
    assert result["columns"] == ["id", "text", "finish_reason"], result["columns"]
    assert result["from_parts"] >= len(before) and result["asked"] == n - result["from_parts"]
    after = written_ids(RunDir(run), str(next(folder.iterdir()).relative_to(run))).to_pylist()
    assert sorted(after) == sorted(set(after)) == result["ids"]
    assert not (next(folder.iterdir()) / "requests").exists()  # the rows the workers read are gone
