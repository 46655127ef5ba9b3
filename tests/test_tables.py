"""lion_distill.data.tables and the column-wise twins of per-row rules (milliseconds, no Ray)."""

import itertools

import pyarrow as pa
import pytest

from lion_distill.data.tables import first_per_id, in_order, replaced_by_id
from lion_distill.judging.judge import _unjudgeable
from lion_distill.judging.referee import ROLES, unjudgeable
from lion_distill.llm.answers import answered, answered_mask


def test_in_order_aligns_rows_to_ids_and_names_what_is_missing():
    table = pa.table({"id": ["b", "a", "b", "c"], "x": [1, 2, 3, 4]})
    assert in_order(table, pa.array(["c", "b", "a"])).column("x").to_pylist() == [4, 1, 2]  # an id's first row
    with pytest.raises(KeyError, match=r"1 rows have no response, e.g. \['z'\]"):
        in_order(table, pa.array(["a", "z"]))
    aligned = pa.Table.from_batches(
        [pa.record_batch({"id": ["a"], "x": [1]}), pa.record_batch({"id": ["b"], "x": [2]})]
    )
    assert in_order(aligned, pa.array(["a", "b"])) is aligned  # already in order: not copied
    assert in_order(aligned, pa.chunked_array([["b"], ["a"]])).column("x").to_pylist() == [2, 1]


def test_first_per_id_and_replaced_by_id_keep_the_tables_order():
    table = pa.table({"id": ["b", "a", "b", "c"], "x": [1, 2, 3, 4]})
    assert first_per_id(table).to_pylist() == [{"id": "b", "x": 1}, {"id": "a", "x": 2}, {"id": "c", "x": 4}]
    base = pa.table({"id": ["a", "b", "c"], "x": [1, 2, 3]})
    better = pa.table({"x": [30, 10], "id": ["c", "a"]})  # its own column order, its own row order
    assert replaced_by_id(base, better).to_pylist() == [{"id": "a", "x": 10}, {"id": "b", "x": 2}, {"id": "c", "x": 30}]
    assert replaced_by_id(base, better.slice(0, 0)) is base


TEXTS = [None, "", "  \n", "An answer."]
REASONS = [None, "stop", "length", "error"]


def _kind(finish_reason: str | None) -> str | None:
    return "engine_lost" if finish_reason == "error" else None


def test_the_column_rules_agree_with_the_row_rules_on_every_case():
    responses = [{"text": t, "finish_reason": r, "error_kind": _kind(r)} for t, r in itertools.product(TEXTS, REASONS)]
    assert answered_mask(pa.Table.from_pylist(responses)).to_pylist() == [answered(r) for r in responses]
    pairs = [
        {
            "id": str(n),
            "teacher_text": a,
            "teacher_finish_reason": ar,
            "teacher_error_kind": _kind(ar),
            "student_text": b,
            "student_finish_reason": br,
            "student_error_kind": _kind(br),
        }
        for n, (a, ar, b, br) in enumerate(itertools.product(TEXTS, REASONS, TEXTS, REASONS))
    ]
    table = pa.Table.from_pylist(pairs)
    for loses in (False, True):
        assert _unjudgeable(table, ROLES, loses).to_pylist() == [
            unjudgeable(p, ROLES, loses) is not None for p in pairs
        ]


def test_the_referees_requests_put_both_orders_of_a_pair_side_by_side_across_chunks(monkeypatch):
    from lion_distill.judging import judge

    monkeypatch.setattr(judge, "CHUNK_ROWS", 2)  # 5 pairs: chunks of 2, 2 and 1
    sent = pa.table(
        {
            "id": [f"p{n}" for n in range(5)],
            "instruction": [f"q{n}" for n in range(5)],
            "input": [""] * 5,
            "rubric": ["general"] * 5,
            "teacher_text": [f"t{n}" for n in range(5)],
            "student_text": [None, "s1", "s2", "s3", "s4"],
        }
    )
    chunks = list(judge._requests(sent, ROLES, ["teacher_first", "student_first"]))
    assert [c.num_rows for c in chunks] == [4, 4, 2]  # made, and handed to answer, a chunk of pairs at a time
    requests = pa.concat_tables(chunks)
    assert requests.column("id").to_pylist() == [
        f"p{n}|{o}" for n in range(5) for o in ("teacher_first", "student_first")
    ]
    assert requests.column("first").to_pylist()[:4] == ["t0", "", "t1", "s1"]  # a missing answer is shown empty
    assert requests.column("second").to_pylist()[:4] == ["", "t0", "s1", "t1"]
    assert requests.column("instruction").to_pylist()[-2:] == ["q4", "q4"]
