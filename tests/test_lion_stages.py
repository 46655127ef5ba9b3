"""The three Lion stages' logic in milliseconds, without Ray: each stage's one Ray edge,
`lion_distill.llm.answers.answer`, is replaced by a scripted LLM.

The scripted LLM samples like a seeded engine: its reply is a function of (model,
prompt, the request's seed). Asking the same prompt with the same seed again replays
the same reply, which is exactly how a response cache or a fixed-seed vLLM behaves.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lion_distill.config import RunConfig
from lion_distill.data import RunDir, pool_table, read_pool, write_pool
from lion_distill.judging import judge as J
from lion_distill.judging.referee import JUDGMENT_SCHEMA
from lion_distill.lion import discrimination as D
from lion_distill.lion import generation as G
from lion_distill.lion import imitation as I
from lion_distill.lion.iteration import rel
from lion_distill.llm.cache import request_seed
from lion_distill.llm.responses import response_row
from lion_distill.metrics import StageRecord

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def _config(tmp_path, **lion) -> RunConfig:
    role = {"backend": "vllm", "model": "m", "sampling": {"seed": 0}}
    return RunConfig(
        run_dir=str(tmp_path),
        data={"pool_files": ["x.jsonl"]},
        teacher=role,
        student=role,
        referee=role,
        generator=role,
        lion={"generation_rounds": 3, **lion},
    )


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _words(h: str) -> str:
    """Six words no other digest shares: ROUGE-L sees nothing in common."""
    return " ".join(WORDS[int(h[i], 16)] + h[i : i + 6] for i in range(0, 36, 6))


class ScriptedLLM:
    """answer(role, rows, to_prompt, **kw) -> (replies aligned with rows, a table of the id and the
    response columns, as lion_distill.llm.answers.answer returns; StageRecord)."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def __call__(
        self,
        role,
        rows,
        to_prompt,
        *,
        stage,
        role_name,
        run_dir=None,
        structured_output=None,
        logprobs=None,
        draw=None,
        parts=None,
        in_rows_order=True,
        columns=None,
        stream=False,
    ):
        # A table, a list of rows, or tables made one at a time (the referee's requests).
        rows = (
            rows.to_pylist()
            if isinstance(rows, pa.Table)
            else rows
            if isinstance(rows, list)
            else [row for table in rows for row in table.to_pylist()]
        )
        self.calls.append({"stage": stage, "draw": draw, "ids": [r["id"] for r in rows]})
        out = []
        for row in rows:
            seed = request_seed(role.sampling.seed, None if draw is None else f"{draw}/{row['id']}")
            out.append({"id": row["id"], "role": role_name, **self.reply(role_name, row, to_prompt(row), seed)})
        table = pa.Table.from_pylist(out) if out else pa.table({"id": pa.array([], pa.string())})
        return as_answered(table, columns, stream), StageRecord(stage, rows=len(rows))


def as_answered(table: pa.Table, columns, stream: bool):
    """A scripted answer's table as answer returns it: all its columns, or the id and the `columns`
    asked for; `stream`: tables in another order than the rows', a few rows at a time, as the parts
    of a real call come back (the two reviews of a pair in different tables)."""
    table = table if columns is None else table.select([c for c in table.column_names if c == "id" or c in columns])
    if not stream:
        return table
    table = table.take(pa.array(range(table.num_rows - 1, -1, -1), pa.int64()))
    return iter([table.slice(start, 3) for start in range(0, table.num_rows, 3)])


def _candidate(role_name, row, prompt, seed, garbage=lambda row: False):
    if garbage(row):
        return response_row("??", "stop", 10, 1)
    # 12 completion tokens: under Lion's cap of 4 x the seed's 5 words.
    return response_row(
        f"### Instruction:\nDescribe {_words(_digest(prompt, seed))}.\n### Input:\n<noinput>", "stop", 10, 12
    )


def _seed_generation(tmp_path, k=0, n_pool=4):
    run = RunDir(str(tmp_path))
    pool = pool_table([{"instruction": f"Task number {i} about {WORDS[i]}", "input": ""} for i in range(n_pool)])
    write_pool(run, rel(k, "train_pool.parquet"), pool)
    write_pool(run, rel(k, "cache_pool.parquet"), pool)
    judgments = [
        {**{f: None for f in JUDGMENT_SCHEMA.names}, "id": i, "status": "ok", "hard": n % 2 == 0}
        for n, i in enumerate(pool.column("id").to_pylist())
    ]
    run.write_table(
        rel(k, "discrimination", "judgments.parquet"), pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA)
    )
    return run


def test_a_seed_drawn_again_gets_a_new_draw_not_a_replay(tmp_path, monkeypatch):
    # 12 new instructions from 2 hard and 2 easy seeds: each seed is drawn three times.
    cfg = _config(tmp_path, new_instructions_per_iteration=12)
    llm = ScriptedLLM(_candidate)
    monkeypatch.setattr(G, "answer", llm)
    run = _seed_generation(tmp_path, k=0)
    _, _, summary = G.generation(cfg, run, 0, "student")
    assert summary["new_instructions"] == 12 and summary["generation_rejects"] == {}
    assert llm.calls[0]["draw"] == "iter_0/generation/generator_round0"
    # The next iteration draws from the same seeds again (iteration 0's judgments), against the cache
    # pool iteration 0 grew (its 12 new instructions in it): new draws, no duplicates of iteration 0.
    first = set(run.read_table(rel(0, "generation", "new_instructions.parquet")).column("id").to_pylist())
    assert first <= set(read_pool(run, rel(1, "cache_pool.parquet")).column("id").to_pylist())
    run.write_table(
        rel(1, "discrimination", "judgments.parquet"), run.read_table(rel(0, "discrimination", "judgments.parquet"))
    )
    _, _, summary = G.generation(cfg, run, 1, "student")
    assert summary["new_instructions"] == 12 and summary["generation_rejects"] == {}
    second = set(run.read_table(rel(1, "generation", "new_instructions.parquet")).column("id").to_pylist())
    assert len(second) == 12 and not first & second


def test_a_resumed_generation_repeats_exactly_the_same_requests(tmp_path, monkeypatch):
    cfg = _config(tmp_path, new_instructions_per_iteration=6)
    first, second = ScriptedLLM(_candidate), ScriptedLLM(_candidate)
    monkeypatch.setattr(G, "answer", first)
    G.generation(cfg, _seed_generation(tmp_path), 0, "student")
    monkeypatch.setattr(G, "answer", second)
    G.generation(cfg, _seed_generation(tmp_path), 0, "student")
    assert first.calls == second.calls  # same draws, so a response cache answers them all


def test_quotas_are_met_across_rounds_and_rejects_reconcile(tmp_path, monkeypatch):
    # Round 0 answers every other request with garbage: round 1 makes up the quota.
    cfg = _config(tmp_path, new_instructions_per_iteration=8, hard_easy_ratio=[3, 1])
    llm = ScriptedLLM(
        lambda *a: _candidate(
            *a, garbage=lambda row: row["id"].startswith("0-0-") and int(row["id"].rsplit("-", 1)[1]) % 2 == 0
        )
    )
    monkeypatch.setattr(G, "answer", llm)
    run = _seed_generation(tmp_path)
    _, _, summary = G.generation(cfg, run, 0, "student")
    assert [c["stage"] for c in llm.calls] == ["generation/generator_round0", "generation/generator_round1"]
    assert [len(c["ids"]) for c in llm.calls] == [8, 4]
    new = run.read_table(rel(0, "generation", "new_instructions.parquet")).to_pylist()
    assert sorted(r["origin"] for r in new) == ["easy", "easy", "hard", "hard", "hard", "hard", "hard", "hard"]
    assert summary["generation_rejects"] == {"too short": 4}
    replies = run.read_table(rel(0, "generation", "replies.parquet"))
    assert replies.num_rows == summary["candidates"] == len(new) + sum(summary["generation_rejects"].values())
    metrics = run.read_json(rel(0, "generation", "metrics.json"))
    assert metrics["generation_rejects/too short"] == 4 and metrics["lion/new_hard"] == 6


def test_an_unmet_quota_moves_to_the_other_kind_after_a_round(tmp_path, monkeypatch):
    # Every easy seed gets garbage: after round 0 the unmet easy quota moves to hard, and the
    # iteration still reaches its 4 new instructions (it ended with 2 and a warning before).
    cfg = _config(tmp_path, new_instructions_per_iteration=4, generation_rounds=3)
    llm = ScriptedLLM(lambda *a: _candidate(*a, garbage=lambda row: row["kind"] == "easy"))
    monkeypatch.setattr(G, "answer", llm)
    run = _seed_generation(tmp_path)
    _, _, summary = G.generation(cfg, run, 0, "student")
    assert summary["new_instructions"] == 4
    assert [len(c["ids"]) for c in llm.calls] == [4, 2]  # round 1 asks hard seeds for the moved two
    metrics = run.read_json(rel(0, "generation", "metrics.json"))
    assert metrics["lion/quota_moved_easy_to_hard"] == 2 and metrics["lion/new_hard"] == 4
    assert summary["generation_rejects"] == {"too short": 2}


def test_rouge_l_compares_the_instruction_alone_by_default(tmp_path, monkeypatch):
    # Every reply repeats a pool instruction with a new input: novel only if the input counts.
    def reply(role_name, row, prompt, seed):
        context = _words(_digest(prompt, seed))
        return response_row(f"### Instruction:\n{row['instruction']}\n### Input:\n{context}", "stop", 1, 1)

    for field, kept in (("instruction", 0), ("instruction_input", 2)):
        monkeypatch.setattr(G, "answer", ScriptedLLM(reply))
        cfg = _config(tmp_path / field, new_instructions_per_iteration=2, rouge_l_field=field, generation_rounds=1)
        _, _, summary = G.generation(cfg, _seed_generation(tmp_path / field), 0, "student")
        assert summary["new_instructions"] == kept


def _answers(role_name, row, prompt, seed):
    if role_name == "teacher":
        return response_row(f"Teacher answer to {row['id']}", "stop", 5, 5)
    if role_name == "student":
        empty = "number 0 " in row["instruction"]
        return response_row("" if empty else f"student says {row['id']}", "stop", 5, 0 if empty else 3)
    # The referee scores by content: 9 for the teacher's answer, 3 for the student's, 5 for nothing.
    first, second = (8 if not a else 9 if a.startswith("Teacher") else 3 for a in (row["first"], row["second"]))
    # In Lion's layout (lion.referee_prompt: lion): the explanation, then the two score lines.
    return response_row(
        f"Evaluation evidence: fine\nScore of the Assistant 1: {first}\nScore of the Assistant 2: {second}",
        "stop",
        5,
        3,
    )


def test_discrimination_maps_both_orders_and_an_empty_student_answer_is_hard(tmp_path, monkeypatch):
    cfg = _config(tmp_path, tau=1.0)
    llm = ScriptedLLM(_answers)
    monkeypatch.setattr(D, "answer", llm)
    monkeypatch.setattr(J, "answer", llm)  # the referee's requests
    run = _seed_generation(tmp_path, n_pool=3)
    _, _, summary = D.discrimination(cfg, run, 0, "student")
    judgments = {j["id"]: j for j in run.read_table(rel(0, "discrimination", "judgments.parquet")).to_pylist()}
    pool = read_pool(run, rel(0, "cache_pool.parquet")).to_pylist()
    assert sum("number 0 " in row["instruction"] for row in pool) == 1
    for row in pool:
        j = judgments[row["id"]]
        empty = "number 0 " in row["instruction"]
        assert (j["teacher_score_1"], j["teacher_score_2"]) == (9, 9)
        assert (j["student_score_1"], j["student_score_2"]) == ((1, 1) if empty else (3, 3))
        assert j["status"] == "ok" and j["hard"] is True
    assert summary["judged"] == 3 and summary["hard"] == 3
    referee = [c for c in llm.calls if c["stage"] == "discrimination/referee"]
    assert referee[0]["draw"] is None and len(referee[0]["ids"]) == 6


def test_pairs_whose_review_never_came_back_stop_the_stage_naming_them(tmp_path, monkeypatch):
    # A streamed call leaves the check that every request was answered to its caller: here, the judge.
    cfg = _config(tmp_path)
    llm = ScriptedLLM(_answers)

    def one_review_lost(role, rows, to_prompt, **kw):
        answers, record = llm(role, rows, to_prompt, **kw)
        if kw.get("stream"):
            answers = iter(
                [
                    table.filter(pc.invert(pc.ends_with(table.column("id"), "|student_first"))) if n == 0 else table
                    for n, table in enumerate(answers)
                ]
            )
        return answers, record

    monkeypatch.setattr(D, "answer", llm)
    monkeypatch.setattr(J, "answer", one_review_lost)
    run = _seed_generation(tmp_path, n_pool=3)
    with pytest.raises(KeyError, match="2 rows have no response"):  # the first table held 2 student-first reviews
        D.discrimination(cfg, run, 0, "student")
    assert not run.exists(rel(0, "discrimination", "judgments.parquet.first_pass"))  # nothing half-written left


def test_discrimination_reuses_teacher_answers_and_redraws_unreadable_reviews(tmp_path, monkeypatch):
    cfg = _config(tmp_path, referee_retries=1)
    run = _seed_generation(tmp_path, n_pool=2)
    paid = pa.Table.from_pylist(
        [
            {"id": i, "role": "teacher", "text": "Teacher answer", "finish_reason": "stop"}
            for i in read_pool(run, rel(0, "cache_pool.parquet")).column("id").to_pylist()[:1]
        ]
    )
    run.write_table(rel(0, "imitation", "teacher_responses.parquet"), paid)

    def unreadable_first(role_name, row, prompt, seed):
        if role_name == "referee" and seed == 0:
            return response_row("I cannot say.", "stop", 5, 3)
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(unreadable_first)
    monkeypatch.setattr(D, "answer", llm)
    monkeypatch.setattr(J, "answer", llm)  # the referee's requests
    _, _, summary = D.discrimination(cfg, run, 0, "student")
    teacher = [c for c in llm.calls if c["stage"] == "discrimination/teacher"]
    assert len(teacher) == 1 and len(teacher[0]["ids"]) == 1  # the paid answer was not asked again
    retry = [c for c in llm.calls if c["stage"] == "discrimination/referee_retry1"]
    assert retry[0]["draw"] == "iter_0/discrimination/referee_retry1"
    assert summary["judged"] == 2 and summary["failed"] == 0
    # judgments.parquet, written a chunk at a time on the first pass, holds the retried rows whole, one per pool row.
    written = run.read_table(rel(0, "discrimination", "judgments.parquet"))
    assert sorted(written.column("id").to_pylist()) == sorted(
        read_pool(run, rel(0, "cache_pool.parquet")).column("id").to_pylist()
    )
    assert written.column("status").to_pylist() == ["ok", "ok"]
    # The empty student answer lost on its unread reviews (no retry); the other row's reviews are the retry's.
    rows = written.to_pylist()
    assert [r["review_teacher_first"] for r in rows if r["teacher_score_1"] is None] == ["I cannot say."]
    redrawn = [r for r in rows if r["teacher_score_1"] is not None]
    assert len(redrawn) == 1 and redrawn[0]["review_student_first"].startswith("Evaluation evidence"), rows
    assert sorted(p.name for p in (tmp_path / "iter_0" / "discrimination").glob("judgments*")) == ["judgments.parquet"]


def test_a_failed_student_request_is_asked_again_then_excluded_never_hard(tmp_path, monkeypatch):
    cfg = _config(tmp_path, student_retries=2)
    run = _seed_generation(tmp_path, n_pool=3)

    def flaky_student(role_name, row, prompt, seed):
        if role_name == "student" and "number 1 " in row["instruction"] and seed == 0:  # the first draw only
            return response_row(None, "failed: EngineDeadError")
        if role_name == "student" and "number 2 " in row["instruction"]:  # every draw
            return response_row(None, "failed: VLLMValidationError: maximum context length is 1024")
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(flaky_student)
    monkeypatch.setattr(D, "answer", llm)
    monkeypatch.setattr(J, "answer", llm)
    _, _, summary = D.discrimination(cfg, run, 0, "student")
    student = [c for c in llm.calls if c["stage"].startswith("discrimination/student")]
    assert [(c["stage"], len(c["ids"])) for c in student] == [
        ("discrimination/student", 3),
        ("discrimination/student_retry1", 2),
        ("discrimination/student_retry2", 1),
    ]
    assert student[1]["draw"] == "iter_0/discrimination/student_retry1"
    judgments = run.read_table(rel(0, "discrimination", "judgments.parquet")).to_pylist()
    assert sorted(j["status"] for j in judgments) == [
        "failed: student answer failed: VLLMValidationError: maximum context length is 1024",
        "ok",
        "ok",
    ]
    assert summary["judged"] == 2 and summary["failed"] == 1 and summary["hard"] == 2
    referee = [c for c in llm.calls if c["stage"] == "discrimination/referee"]
    assert len(referee[0]["ids"]) == 4  # the failed pair is not sent to the referee


def test_a_referee_that_fails_for_a_passing_reason_stops_the_stage_after_judging_the_rest(tmp_path, monkeypatch):
    from lion_distill.llm.transient import TransientFailures

    cfg = _config(tmp_path)
    run = _seed_generation(tmp_path, n_pool=3)

    def overloaded(role_name, row, prompt, seed):
        if role_name == "referee" and "number 1 " in prompt[-1]["content"]:
            return response_row(None, "failed: HTTP 503")
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(overloaded)
    monkeypatch.setattr(D, "answer", llm)
    monkeypatch.setattr(J, "answer", llm)
    with pytest.raises(TransientFailures) as stop:
        D.discrimination(cfg, run, 0, "student")
    line = str(stop.value)
    assert (
        "iteration 0 discrimination: the referee: 1 of 3 pairs failed for a reason that passes (server_error 1)" in line
    )
    assert "run the same command again once the endpoint answers" in line and "\n" not in line
    assert not run.exists(rel(0, "discrimination", "metrics.json"))  # the stage is not complete


def test_an_imitation_whose_teacher_failed_for_a_passing_reason_stops_before_saving_or_training(tmp_path, monkeypatch):
    from lion_distill.llm.transient import TransientFailures

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        I,
        "answer",
        ScriptedLLM(
            lambda role_name, row, prompt, seed: (
                response_row(None, "failed: budget")
                if "number 2 " in row["instruction"]
                else response_row("Whole.", "stop", 5, 5)
            )
        ),
    )
    monkeypatch.setattr(I, "_train", lambda *a: pytest.fail("trained with an answer missing"))
    with pytest.raises(TransientFailures, match=r"1 of 4 requests failed .*\(budget 1\).*raise its budget_usd"):
        I.imitation(_config(tmp_path), run, 0, "student")
    assert not run.exists(rel(0, "imitation", "teacher_responses.parquet"))  # no failure saved as an answer


def test_imitation_leaves_truncated_teacher_answers_out_of_training(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    run = _seed_generation(tmp_path, n_pool=4)

    def teacher(role_name, row, prompt, seed):
        cut = "number 1 " in row["instruction"]
        return response_row("An answer cut" if cut else "A whole answer.", "length" if cut else "stop", 5, 5)

    trained = []

    class Result:
        model_dir, record = "new-student", StageRecord("x")

    monkeypatch.setattr(I, "answer", ScriptedLLM(teacher))
    monkeypatch.setattr(I, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or Result())
    outputs, _, summary = I.imitation(cfg, run, 0, "student")
    assert outputs == {"student_model": "new-student"}
    assert len(trained) == 3 and all(r["response"] == "A whole answer." and r["complete"] for r in trained)
    assert summary["imitation_truncated"] == 1 and summary["imitation_answered"] == 4
    metrics = run.read_json(rel(0, "imitation", "metrics.json"))
    assert metrics["lion/imitation_truncated_answers"] == 1 and metrics["lion/imitation_failed_answers"] == 0
    # lion.train_on_truncated: the cut answer is trained on, marked incomplete (no eos).
    trained.clear()
    I.imitation(_config(tmp_path, train_on_truncated=True), run, 0, "student")
    assert sorted(r["complete"] for r in trained) == [False, True, True, True]


class _Trained:
    model_dir, record = "new-student", StageRecord("x")


def test_an_imitation_with_nothing_to_train_on_stops_naming_the_two_settings(tmp_path, monkeypatch):
    run = _seed_generation(tmp_path, n_pool=4)
    cut = ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Cut sho", "length", 5, 40))
    monkeypatch.setattr(I, "answer", cut)
    monkeypatch.setattr(I, "_train", lambda cfg, run, k, student, sft: pytest.fail("trained on nothing"))
    cfg = _config(tmp_path)
    cfg.teacher.sampling.max_tokens = 40
    with pytest.raises(I.NothingToImitate) as stopped:
        I.imitation(cfg, run, 0, "student")
    line = str(stopped.value)
    assert "\n" not in line and line.startswith("iteration 0 imitation: only 0 of 4 teacher answers are trainable")
    assert "lion.min_imitation_fraction (0.5)" in line and "4 answers were cut at the teacher's max_tokens (40)" in line
    assert "teacher.sampling.max_tokens" in line and "lion.train_on_truncated: true" in line
    # Either setting lets the same answers train; the teacher is not asked again for them.
    trained = []
    monkeypatch.setattr(I, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or _Trained())
    allowed = _config(tmp_path, train_on_truncated=True)
    allowed.teacher.sampling.max_tokens = 40
    _, _, summary = I.imitation(allowed, run, 0, "student")
    assert len(trained) == 4 and len(cut.calls) == 1
    assert (summary["imitation_rows"], summary["imitation_trained"]) == (4, 4)
    metrics = run.read_json(rel(0, "imitation", "metrics.json"))
    assert (metrics["lion/imitation_asked"], metrics["lion/imitation_trained"]) == (4, 4)


def test_a_resumed_imitation_trains_on_the_saved_answers_without_asking_the_teacher(tmp_path, monkeypatch):
    """Training killed midway: the resumed stage reads the iteration's teacher_responses.parquet
    and trains on exactly the same rows; with the teacher's settings changed, only the answers
    it cut are asked again."""
    run = _seed_generation(tmp_path, n_pool=4)
    teacher = ScriptedLLM(
        lambda role_name, row, prompt, seed: response_row(
            f"Answer {seed} to {row['id']}.", "length" if "number 1 " in row["instruction"] else "stop", 5, 5
        )
    )
    monkeypatch.setattr(I, "answer", teacher)
    first, again = [], []

    def killed(cfg, run, k, student, sft):
        first.extend(sft.to_pylist())
        raise RuntimeError("training worker killed")

    monkeypatch.setattr(I, "_train", killed)
    cfg = _config(tmp_path, train_on_truncated=True)
    with pytest.raises(RuntimeError, match="killed"):
        I.imitation(cfg, run, 0, "student")
    assert len(teacher.calls) == 1 and len(first) == 4
    monkeypatch.setattr(I, "_train", lambda cfg, run, k, student, sft: again.extend(sft.to_pylist()) or _Trained())
    outputs, counters, _ = I.imitation(cfg, run, 0, "student")
    assert len(teacher.calls) == 1  # not asked again
    assert again == first and outputs == {"student_model": "new-student"}
    # The teacher's figures are those of the call that bought the answers, reported once, by the stage that completes.
    assert run.read_json(rel(0, "imitation", "metrics.json"))["rows/imitation/teacher"] == 4 and counters["rows"] == 4
    # A larger max_tokens: the one cut answer is asked again; the complete ones are kept.
    cfg.teacher.sampling.max_tokens = 1024
    I.imitation(cfg, run, 0, "student")
    assert len(teacher.calls) == 2 and len(teacher.calls[1]["ids"]) == 1


def test_an_exported_students_training_checkpoints_are_deleted_once_the_stage_is_recorded(tmp_path, monkeypatch):
    """The imitation keeps them; its stage's cleanup (run by lion_distill.runner after the stage is
    recorded, and again by later runs) deletes them, unless train.keep_checkpoints."""
    from lion_distill.lion.loop import lion_stages
    from lion_distill.train.loop import storage_path

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        I, "answer", ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Whole.", "stop", 5, 5))
    )
    student = run.path(rel(0, "imitation", "student"))
    checkpoint = tmp_path / storage_path(student) / "lion-iter0-imitation" / "checkpoint_000001"

    class Exported:
        model_dir, record = student, StageRecord("x")

    def train(cfg, run, k, student_model, sft):  # as Ray Train leaves it: checkpoints beside the export
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "__0_0.distcp").write_bytes(b"weights and optimizer state")
        return Exported()

    monkeypatch.setattr(I, "_train", train)
    cfg = _config(tmp_path)
    I.imitation(cfg, run, 0, "student")
    assert (checkpoint / "__0_0.distcp").exists()  # not before the stage is recorded: a kill would need them
    (stage,) = [s for s in lion_stages(cfg, run) if s.name == "iter_0/imitation"]
    stage.cleanup()
    assert not (tmp_path / storage_path(student)).exists()  # train.keep_checkpoints: false (the default)
    stage.cleanup()  # idempotent: a later run finishes a cleanup a kill cut short
    cfg.train.keep_checkpoints = True
    assert [s.cleanup for s in lion_stages(cfg, run) if s.name == "iter_0/imitation"] == [None]


def test_an_imitation_with_nothing_trainable_keeps_the_previous_student_and_says_so(tmp_path, monkeypatch):
    """lion.min_imitation_fraction 0.0 allows it; tokenisation leaving no row (every prompt longer
    than max_length) used to crash in the training loop ("0 usable rows cannot feed 1 workers")."""
    from lion_distill.train import TooFewRows

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        I, "answer", ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Whole.", "stop", 5, 5))
    )

    def no_usable_rows(cfg, run, k, student_model, sft):
        raise TooFewRows("lion-iter0-imitation: 0 usable rows cannot feed 1 workers")

    monkeypatch.setattr(I, "_train", no_usable_rows)
    cfg = _config(tmp_path, min_imitation_fraction=0.0)
    outputs, _, summary = I.imitation(cfg, run, 0, "previous-student")
    assert outputs == {"student_model": "previous-student"} and summary["imitation_kept_student"] is True
    assert run.read_json(rel(0, "imitation", "metrics.json"))["lion/imitation_kept_student"] == 1


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    """These tests must not start Ray: fail loudly if a stage reaches past its edge."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("a stage started Ray"))


def test_the_last_new_instructions_are_imitated_by_a_final_stage(tmp_path):
    from lion_distill.lion.loop import lion_stages

    run = RunDir(str(tmp_path))
    names = [s.name for s in lion_stages(_config(tmp_path, iterations=2), run)]
    assert names[-2:] == ["iter_1/generation", "iter_2/imitation"] and len(names) == 7
    names = [s.name for s in lion_stages(_config(tmp_path, iterations=2, final_imitation=False), run)]
    assert names[-1] == "iter_1/generation" and len(names) == 6
