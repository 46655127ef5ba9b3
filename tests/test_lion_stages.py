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
from lion_distill.errors import ErrorKind, NothingToImitate
from lion_distill.judging import judge
from lion_distill.judging.referee import JUDGMENT_SCHEMA
from lion_distill.lion import discrimination, generation, imitation
from lion_distill.lion.iteration import rel
from lion_distill.llm.cache import request_seed
from lion_distill.llm.responses import error_row, response_row
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

    def stream(self, role, rows, to_prompt, **kwargs):
        """answer_stream's script: the same replies, as tables in another order than the rows'."""
        return self(role, rows, to_prompt, stream=True, **kwargs)


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
    monkeypatch.setattr(generation, "answer", llm)
    run = _seed_generation(tmp_path, k=0)
    summary = generation.generation(cfg, run, 0, "student").summary
    assert summary["new_instructions"] == 12 and summary["generation_rejects"] == {}
    assert llm.calls[0]["draw"] == "iter_0/generation/generator_round0"
    # The next iteration draws from the same seeds again (iteration 0's judgments), against the cache
    # pool iteration 0 grew (its 12 new instructions in it): new draws, no duplicates of iteration 0.
    first = set(run.read_table(rel(0, "generation", "new_instructions.parquet")).column("id").to_pylist())
    assert first <= set(read_pool(run, rel(1, "cache_pool.parquet")).column("id").to_pylist())
    run.write_table(
        rel(1, "discrimination", "judgments.parquet"), run.read_table(rel(0, "discrimination", "judgments.parquet"))
    )
    summary = generation.generation(cfg, run, 1, "student").summary
    assert summary["new_instructions"] == 12 and summary["generation_rejects"] == {}
    second = set(run.read_table(rel(1, "generation", "new_instructions.parquet")).column("id").to_pylist())
    assert len(second) == 12 and not first & second


def test_a_resumed_generation_repeats_exactly_the_same_requests(tmp_path, monkeypatch):
    cfg = _config(tmp_path, new_instructions_per_iteration=6)
    first, second = ScriptedLLM(_candidate), ScriptedLLM(_candidate)
    monkeypatch.setattr(generation, "answer", first)
    generation.generation(cfg, _seed_generation(tmp_path), 0, "student")
    monkeypatch.setattr(generation, "answer", second)
    generation.generation(cfg, _seed_generation(tmp_path), 0, "student")
    assert first.calls == second.calls  # same draws, so a response cache answers them all


def test_quotas_are_met_across_rounds_and_rejects_reconcile(tmp_path, monkeypatch):
    # Round 0 answers every other request with garbage: round 1 makes up the quota.
    cfg = _config(tmp_path, new_instructions_per_iteration=8, hard_easy_ratio=[3, 1])
    llm = ScriptedLLM(
        lambda *a: _candidate(
            *a, garbage=lambda row: row["id"].startswith("0-0-") and int(row["id"].rsplit("-", 1)[1]) % 2 == 0
        )
    )
    monkeypatch.setattr(generation, "answer", llm)
    run = _seed_generation(tmp_path)
    summary = generation.generation(cfg, run, 0, "student").summary
    assert [c["stage"] for c in llm.calls] == ["generation/generator_round0", "generation/generator_round1"]
    assert [len(c["ids"]) for c in llm.calls] == [8, 4]
    new = run.read_table(rel(0, "generation", "new_instructions.parquet")).to_pylist()
    assert sorted(r["origin"] for r in new) == ["easy", "easy", "hard", "hard", "hard", "hard", "hard", "hard"]
    assert summary["generation_rejects"] == {"too short": 4}
    replies = run.read_table(rel(0, "generation", "replies.parquet"))
    assert replies.num_rows == summary["candidates"] == len(new) + sum(summary["generation_rejects"].values())
    metrics = run.read_json(rel(0, "generation", "metrics.json"))
    assert metrics["generation_rejects/too short"] == 4 and metrics["lion/new_hard"] == 6


def test_each_kind_is_asked_for_its_own_quota_until_the_round_cap_binds(tmp_path, monkeypatch):
    # Lion's loop: every easy seed gets garbage, so the easy quota is asked again every round, from
    # easy seeds only, until the safety cap ends it; the metrics and the report say the cap bound.
    from lion_distill.lion.report import generation_notes

    cfg = _config(tmp_path, new_instructions_per_iteration=4, generation_rounds=3)
    assert cfg.lion.quota_rebalance is False
    llm = ScriptedLLM(lambda *a: _candidate(*a, garbage=lambda row: row["kind"] == "easy"))
    monkeypatch.setattr(generation, "answer", llm)
    run = _seed_generation(tmp_path)
    summary = generation.generation(cfg, run, 0, "student").summary
    assert summary["new_instructions"] == 2 and [len(c["ids"]) for c in llm.calls] == [4, 2, 2]
    metrics = run.read_json(rel(0, "generation", "metrics.json"))
    assert (metrics["lion/generation_rounds"], metrics["lion/generation_round_cap"]) == (3, 1)
    assert metrics["lion/new_instructions_missing"] == 2 and "lion/quota_moved_easy_to_hard" not in metrics
    (note,) = generation_notes(0, {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("lion/")})
    assert note == (
        "iteration 0: generation stopped at its cap of 3 rounds (lion.generation_rounds), "
        "2 new instructions short of the quota"
    )


def test_the_round_cap_is_not_reported_when_the_quotas_are_met_in_time(tmp_path, monkeypatch):
    cfg = _config(tmp_path, new_instructions_per_iteration=4, generation_rounds=1)
    monkeypatch.setattr(generation, "answer", ScriptedLLM(_candidate))
    run = _seed_generation(tmp_path)
    generation.generation(cfg, run, 0, "student")
    metrics = run.read_json(rel(0, "generation", "metrics.json"))
    assert (metrics["lion/generation_rounds"], metrics["lion/generation_round_cap"]) == (1, 0)
    assert metrics["lion/new_instructions_missing"] == 0


def test_a_kind_without_seeds_makes_none_unless_rebalanced(tmp_path, monkeypatch):
    from lion_distill.lion.report import generation_notes

    run = _seed_generation(tmp_path)
    judgments = run.read_table(rel(0, "discrimination", "judgments.parquet"))
    everything_easy = judgments.set_column(
        judgments.schema.get_field_index("hard"), "hard", pa.repeat(pa.scalar(False), judgments.num_rows)
    )
    run.write_table(rel(0, "discrimination", "judgments.parquet"), everything_easy)
    for rebalance, new_hard, new_easy in ((False, 0, 2), (True, 0, 4)):
        llm = ScriptedLLM(_candidate)
        monkeypatch.setattr(generation, "answer", llm)
        cfg = _config(tmp_path, new_instructions_per_iteration=4, quota_rebalance=rebalance)
        generation.generation(cfg, run, 0, "student")
        metrics = run.read_json(rel(0, "generation", "metrics.json"))
        assert (metrics["lion/new_hard"], metrics["lion/new_easy"]) == (new_hard, new_easy)
        assert [len(c["ids"]) for c in llm.calls] == [new_easy]  # nothing asked for the unseeded kind
        notes = generation_notes(0, {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("lion/")})
        assert bool(notes) is not rebalance
        assert not notes or "no hard instruction to seed the generator" in notes[0]


def test_an_unmet_quota_moves_to_the_other_kind_after_a_round(tmp_path, monkeypatch):
    # Every easy seed gets garbage: after round 0 the unmet easy quota moves to hard, and the
    # iteration still reaches its 4 new instructions (it ended with 2 and a warning before).
    cfg = _config(tmp_path, new_instructions_per_iteration=4, generation_rounds=3, quota_rebalance=True)
    llm = ScriptedLLM(lambda *a: _candidate(*a, garbage=lambda row: row["kind"] == "easy"))
    monkeypatch.setattr(generation, "answer", llm)
    run = _seed_generation(tmp_path)
    summary = generation.generation(cfg, run, 0, "student").summary
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
        monkeypatch.setattr(generation, "answer", ScriptedLLM(reply))
        cfg = _config(tmp_path / field, new_instructions_per_iteration=2, rouge_l_field=field, generation_rounds=1)
        summary = generation.generation(cfg, _seed_generation(tmp_path / field), 0, "student").summary
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
    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)  # the referee's requests
    run = _seed_generation(tmp_path, n_pool=3)
    summary = discrimination.discrimination(cfg, run, 0, "student").summary
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
        answers, record = llm.stream(role, rows, to_prompt, **kw)
        answers = iter(
            [
                table.filter(pc.invert(pc.ends_with(table.column("id"), "|student_first"))) if n == 0 else table
                for n, table in enumerate(answers)
            ]
        )
        return answers, record

    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", one_review_lost)
    run = _seed_generation(tmp_path, n_pool=3)
    with pytest.raises(KeyError, match="2 rows have no response"):  # the first table held 2 student-first reviews
        discrimination.discrimination(cfg, run, 0, "student")
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
    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)  # the referee's requests
    summary = discrimination.discrimination(cfg, run, 0, "student").summary
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
            return error_row(ErrorKind.ENGINE_LOST, "EngineDeadError")
        if role_name == "student" and "number 2 " in row["instruction"]:  # every draw
            return error_row(ErrorKind.CONTEXT_OVERFLOW, "VLLMValidationError: maximum context length is 1024")
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(flaky_student)
    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    summary = discrimination.discrimination(cfg, run, 0, "student").summary
    student = [c for c in llm.calls if c["stage"].startswith("discrimination/student")]
    assert [(c["stage"], len(c["ids"])) for c in student] == [
        ("discrimination/student", 3),
        ("discrimination/student_retry1", 2),
        ("discrimination/student_retry2", 1),
    ]
    assert student[1]["draw"] == "iter_0/discrimination/student_retry1"
    judgments = run.read_table(rel(0, "discrimination", "judgments.parquet")).to_pylist()
    assert sorted((j["status"], j["failure_kind"], j["failure"]) for j in judgments) == [
        ("failed", "context_overflow", "student answer: VLLMValidationError: maximum context length is 1024"),
        ("ok", None, None),
        ("ok", None, None),
    ]
    assert summary["judged"] == 2 and summary["failed"] == 1 and summary["hard"] == 2
    referee = [c for c in llm.calls if c["stage"] == "discrimination/referee"]
    assert len(referee[0]["ids"]) == 4  # the failed pair is not sent to the referee


def test_a_referee_that_fails_for_a_passing_reason_stops_the_stage_after_judging_the_rest(tmp_path, monkeypatch):
    from lion_distill.errors import TransientFailures

    cfg = _config(tmp_path)
    run = _seed_generation(tmp_path, n_pool=3)

    def overloaded(role_name, row, prompt, seed):
        if role_name == "referee" and "number 1 " in prompt[-1]["content"]:
            return error_row(ErrorKind.SERVER_ERROR, "HTTP 503")
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(overloaded)
    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    with pytest.raises(TransientFailures) as stop:
        discrimination.discrimination(cfg, run, 0, "student")
    line = str(stop.value)
    assert (
        "iteration 0 discrimination: the referee: 1 of 3 pairs failed for a reason that passes (server_error 1)" in line
    )
    assert "run the same command again once the endpoint answers" in line and "\n" not in line
    assert not run.exists(rel(0, "discrimination", "metrics.json"))  # the stage is not complete


def test_an_imitation_whose_teacher_failed_for_a_passing_reason_stops_before_saving_or_training(tmp_path, monkeypatch):
    from lion_distill.errors import TransientFailures

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        imitation,
        "answer",
        ScriptedLLM(
            lambda role_name, row, prompt, seed: (
                error_row(ErrorKind.BUDGET, "not sent: the role's budget_usd would be exceeded")
                if "number 2 " in row["instruction"]
                else response_row("Whole.", "stop", 5, 5)
            )
        ),
    )
    monkeypatch.setattr(imitation, "_train", lambda *a: pytest.fail("trained with an answer missing"))
    with pytest.raises(TransientFailures, match=r"1 of 4 requests failed .*\(budget 1\).*raise its budget_usd"):
        imitation.imitation(_config(tmp_path), run, 0, "student")
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

    monkeypatch.setattr(imitation, "answer", ScriptedLLM(teacher))
    monkeypatch.setattr(
        imitation, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or Result()
    )
    result = imitation.imitation(cfg, run, 0, "student")
    outputs, summary = result.outputs, result.summary
    assert outputs == {"student_model": "new-student"}
    assert len(trained) == 3 and all(r["response"] == "A whole answer." and r["complete"] for r in trained)
    assert summary["imitation_truncated"] == 1 and summary["imitation_answered"] == 4
    metrics = run.read_json(rel(0, "imitation", "metrics.json"))
    assert metrics["lion/imitation_truncated_answers"] == 1 and metrics["lion/imitation_failed_answers"] == 0
    # lion.train_on_truncated: the cut answer is trained on, marked incomplete (no eos).
    trained.clear()
    imitation.imitation(_config(tmp_path, train_on_truncated=True), run, 0, "student")
    assert sorted(r["complete"] for r in trained) == [False, True, True, True]


class _Trained:
    model_dir, record = "new-student", StageRecord("x")


def test_an_imitation_with_nothing_to_train_on_stops_naming_the_two_settings(tmp_path, monkeypatch):
    run = _seed_generation(tmp_path, n_pool=4)
    cut = ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Cut sho", "length", 5, 40))
    monkeypatch.setattr(imitation, "answer", cut)
    monkeypatch.setattr(imitation, "_train", lambda cfg, run, k, student, sft: pytest.fail("trained on nothing"))
    cfg = _config(tmp_path)
    cfg.teacher.sampling.max_tokens = 40
    with pytest.raises(NothingToImitate) as stopped:
        imitation.imitation(cfg, run, 0, "student")
    line = str(stopped.value)
    assert "\n" not in line and line.startswith("iteration 0 imitation: only 0 of 4 teacher answers are trainable")
    assert "lion.min_imitation_fraction (0.5)" in line and "4 answers were cut at the teacher's max_tokens (40)" in line
    assert "teacher.sampling.max_tokens" in line and "lion.train_on_truncated: true" in line
    # Either setting lets the same answers train; the teacher is not asked again for them.
    trained = []
    monkeypatch.setattr(
        imitation, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or _Trained()
    )
    allowed = _config(tmp_path, train_on_truncated=True)
    allowed.teacher.sampling.max_tokens = 40
    summary = imitation.imitation(allowed, run, 0, "student").summary
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
    monkeypatch.setattr(imitation, "answer", teacher)
    first, again = [], []

    def killed(cfg, run, k, student, sft):
        first.extend(sft.to_pylist())
        raise RuntimeError("training worker killed")

    monkeypatch.setattr(imitation, "_train", killed)
    cfg = _config(tmp_path, train_on_truncated=True)
    with pytest.raises(RuntimeError, match="killed"):
        imitation.imitation(cfg, run, 0, "student")
    assert len(teacher.calls) == 1 and len(first) == 4
    monkeypatch.setattr(
        imitation, "_train", lambda cfg, run, k, student, sft: again.extend(sft.to_pylist()) or _Trained()
    )
    result = imitation.imitation(cfg, run, 0, "student")
    outputs, counters = result.outputs, result.counters
    assert len(teacher.calls) == 1  # not asked again
    assert again == first and outputs == {"student_model": "new-student"}
    # The teacher's figures are those of the call that bought the answers, reported once, by the stage that completes.
    assert run.read_json(rel(0, "imitation", "metrics.json"))["rows/imitation/teacher"] == 4 and counters["rows"] == 4
    # A larger max_tokens: the one cut answer is asked again; the complete ones are kept.
    cfg.teacher.sampling.max_tokens = 1024
    imitation.imitation(cfg, run, 0, "student")
    assert len(teacher.calls) == 2 and len(teacher.calls[1]["ids"]) == 1


def test_an_exported_students_training_checkpoints_are_deleted_once_the_stage_is_recorded(tmp_path, monkeypatch):
    """The imitation keeps them; its stage's cleanup (run by lion_distill.runner after the stage is
    recorded, and again by later runs) deletes them, unless train.keep_checkpoints."""
    from lion_distill.lion.loop import lion_stages
    from lion_distill.train.loop import storage_path

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        imitation, "answer", ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Whole.", "stop", 5, 5))
    )
    student = run.path(rel(0, "imitation", "student"))
    checkpoint = tmp_path / storage_path(student) / "lion-iter0-imitation" / "checkpoint_000001"

    class Exported:
        model_dir, record = student, StageRecord("x")

    def train(cfg, run, k, student_model, sft):  # as Ray Train leaves it: checkpoints beside the export
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "__0_0.distcp").write_bytes(b"weights and optimizer state")
        return Exported()

    monkeypatch.setattr(imitation, "_train", train)
    cfg = _config(tmp_path)
    imitation.imitation(cfg, run, 0, "student")
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
    from lion_distill.errors import TooFewRows

    run = _seed_generation(tmp_path, n_pool=4)
    monkeypatch.setattr(
        imitation, "answer", ScriptedLLM(lambda role_name, row, prompt, seed: response_row("Whole.", "stop", 5, 5))
    )

    def no_usable_rows(cfg, run, k, student_model, sft):
        raise TooFewRows("lion-iter0-imitation: 0 usable rows cannot feed 1 workers")

    monkeypatch.setattr(imitation, "_train", no_usable_rows)
    cfg = _config(tmp_path, min_imitation_fraction=0.0)
    result = imitation.imitation(cfg, run, 0, "previous-student")
    assert result.outputs == {"student_model": "previous-student"} and result.summary["imitation_kept_student"] is True
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


def test_lions_recheck_asks_again_at_its_temperature_until_a_pass_reads_no_more(tmp_path, monkeypatch):
    # Lion's chatgpt_referee.py: unreadable reviews are sent again (same request, temperature 0.2)
    # while a pass reads some of them. Here one pair's reviews read on the first retry, the
    # other's never: retry 1 reads one, retry 2 reads none, and asking stops there.
    cfg = _config(tmp_path, referee_retries=None, referee_retry_temperature=0.2)
    run = _seed_generation(tmp_path, n_pool=3)  # "number 0": the student answers nothing, judged as lost
    (never,) = [
        r["id"] for r in read_pool(run, rel(0, "cache_pool.parquet")).to_pylist() if "number 1 " in r["instruction"]
    ]
    temperatures = []

    def flaky_referee(role_name, row, prompt, seed):
        pair = row["id"].rsplit("|", 1)[0]
        if role_name == "referee" and (seed == 0 or pair == never):
            return response_row("I cannot say.", "stop", 5, 3)
        return _answers(role_name, row, prompt, seed)

    llm = ScriptedLLM(flaky_referee)

    def referee(role, rows, to_prompt, **kw):
        temperatures.append((kw["stage"], role.sampling.temperature))
        return llm.stream(role, rows, to_prompt, **kw)

    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", referee)
    summary = discrimination.discrimination(cfg, run, 0, "student").summary
    assert temperatures == [
        ("discrimination/referee", cfg.referee.sampling.temperature),
        ("discrimination/referee_retry1", 0.2),
        ("discrimination/referee_retry2", 0.2),
    ]
    assert (summary["judged"], summary["failed"]) == (2, 1)
    # The default: at most referee_retries (2) re-asks, sampling raised to at least 0.5.
    assert (
        judge.asking_again([2, 1, 1], None),
        judge.asking_again([2, 1, 1], 2),
        judge.asking_again([2, 1, 1, 1], 2),
    ) == (
        False,
        True,
        False,
    )
    near_greedy = cfg.referee.model_copy(
        update={"sampling": cfg.referee.sampling.model_copy(update={"temperature": 0.2})}
    )
    assert judge.resampled(near_greedy).sampling.temperature == 0.5 and judge.resampled(near_greedy, 0.2) == near_greedy


def _with_input(run: RunDir, given: str) -> None:
    """The pools of `run`'s iteration 0 with `given` as every row's input (ids unchanged)."""
    for name in ("train_pool.parquet", "cache_pool.parquet"):
        table = read_pool(run, rel(0, name))
        at = table.schema.get_field_index("input")
        write_pool(run, rel(0, name), table.set_column(at, table.schema.field(at), pa.repeat(given, table.num_rows)))


@pytest.mark.parametrize("show_input", [True, False])
def test_show_input_off_asks_every_role_the_instruction_alone_as_lions_scripts(tmp_path, monkeypatch, show_input):
    run = _seed_generation(tmp_path, n_pool=4)
    _with_input(run, "Guten Tag zusammen")
    cfg = _config(tmp_path, show_input=show_input, new_instructions_per_iteration=2)
    prompts, trained, max_tokens = [], [], []

    def recorded(reply):
        def answer(role_name, row, prompt, seed):
            prompts.append((role_name, json.dumps(prompt)))
            return reply(role_name, row, prompt, seed)

        return answer

    llm = ScriptedLLM(recorded(_answers))
    monkeypatch.setattr(imitation, "answer", llm)
    monkeypatch.setattr(
        imitation, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or _Trained()
    )
    imitation.imitation(cfg, run, 0, "student")
    monkeypatch.setattr(discrimination, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    discrimination.discrimination(cfg, run, 0, "student")
    generator = ScriptedLLM(recorded(_candidate))

    def generate(role, rows, to_prompt, **kw):
        max_tokens.append(role.sampling.max_tokens)
        return generator(role, rows, to_prompt, **kw)

    monkeypatch.setattr(generation, "answer", generate)
    generation.generation(cfg, run, 0, "student")
    roles = {role for role, _ in prompts}
    assert roles == {"teacher", "student", "referee", "generator"}
    assert all(("Guten Tag" in prompt) is show_input for _, prompt in prompts), prompts
    assert all(r["input"] == ("Guten Tag zusammen" if show_input else "") for r in trained)
    # Lion's generator max_tokens: 4 x the words the prompt shows of the seed (5, and 3 of input).
    assert max_tokens == [4 * (8 if show_input else 5)]
    assert read_pool(run, rel(1, "cache_pool.parquet")).column("input").to_pylist()[:4] == ["Guten Tag zusammen"] * 4


def test_discrimination_asks_the_teacher_again_on_the_cache_pool_as_lions_step_2_1(tmp_path, monkeypatch):
    run = _seed_generation(tmp_path, n_pool=3)
    ids = read_pool(run, rel(0, "cache_pool.parquet")).column("id").to_pylist()
    paid = [{"id": i, "role": "teacher", "text": "Imitation's answer", "finish_reason": "stop"} for i in ids]
    run.write_table(rel(0, "imitation", "teacher_responses.parquet"), pa.Table.from_pylist(paid))
    for setting, asked, draw in (("reuse", [], None), ("ask_again", ids, "iter_0/discrimination/teacher")):
        llm = ScriptedLLM(_answers)
        monkeypatch.setattr(discrimination, "answer", llm)
        monkeypatch.setattr(judge, "answer_stream", llm.stream)
        discrimination.discrimination(_config(tmp_path, discrimination_teacher=setting), run, 0, "student")
        teacher = [c for c in llm.calls if c["stage"] == "discrimination/teacher"]
        assert [i for c in teacher for i in c["ids"]] == asked and all(c["draw"] == draw for c in teacher)
        texts = run.read_table(rel(0, "discrimination", "teacher_responses.parquet")).column("text").to_pylist()
        assert all(t.startswith("Imitation" if setting == "reuse" else "Teacher answer") for t in texts)
