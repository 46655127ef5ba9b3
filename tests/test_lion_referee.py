import json
import math
import re

import pyarrow as pa
import pytest

from lion_distill.errors import ErrorKind
from lion_distill.judging.referee import (
    FAILED,
    JUDGMENT_SCHEMA,
    OK,
    judgment_rows,
    judgment_table,
    merge_retried,
    summarize,
    unparseable_ids,
)
from lion_distill.judging.reviews import logprob_scores
from lion_distill.judging.reviews import parse_scores_first as parse_review
from lion_distill.judging.rubrics import SCORES_FIRST_REGEX as REVIEW_REGEX
from lion_distill.llm.responses import error_row

# Review openings as gpt-3.5 / gpt-4 / llama-chat write them, explanation included.
READABLE = [
    ("8 7\nAssistant 1 gave a more detailed answer.", (8.0, 7.0)),
    ("9 6\n\nBoth answers are relevant, but Assistant 2 missed the second part.", (9.0, 6.0)),
    ("\n\n   8 7\nexplanation", (8.0, 7.0)),
    ("8/10 7/10\nAssistant 1 is better.", (8.0, 7.0)),
    ("9 / 10   8 / 10", (9.0, 8.0)),
    ("8 out of 10, 7 out of 10", (8.0, 7.0)),
    ("8.5, 7\nAssistant 1 was slightly more accurate.", (8.5, 7.0)),
    ("**8 7**\n\nAssistant 1 provides...", (8.0, 7.0)),
    ("Scores: 8 and 7\nThe first answer...", (8.0, 7.0)),
    ("Scores:\n9 6\nExplanation: ...", (9.0, 6.0)),
    ("Sure! Here are my scores:\n\n8 7\n\nAssistant 1 ...", (8.0, 7.0)),
    ("Assistant 1: 8\nAssistant 2: 7\n\nAssistant 1 explains the steps.", (8.0, 7.0)),
    ("**Assistant 1:** 9\n**Assistant 2:** 7\n\nexplanation", (9.0, 7.0)),
    ("Score for Assistant 1: 7\nScore for Assistant 2: 8", (7.0, 8.0)),
    ("Assistant 1: 8/10, Assistant 2: 6/10", (8.0, 6.0)),
    ("Assistant 1 receives a score of 8, and Assistant 2 receives 6.", (8.0, 6.0)),
    ("10 10\nBoth are perfect.", (10.0, 10.0)),
    ("1 10", (1.0, 10.0)),
    ("# 7 5", (7.0, 5.0)),
    ('{"assistant_1": 8, "assistant_2": 7, "explanation": "Assistant 1 is more detailed."}', (8.0, 7.0)),
    ('  {\n  "assistant_1" : 3 ,\n "assistant_2": 9.5, "explanation": "     "}', (3.0, 9.5)),
]

UNREADABLE = [
    "",
    "   \n  ",
    None,
    "8",  # a single number
    "8/10",
    "8 7 6",  # three numbers on the score line
    "11 7",
    "0 5",
    "8 -",
    "10.5 3",
    "Assistant 1's answer is better than Assistant 2's.\n8 7",  # prose first
    "Assistant 1 and Assistant 2 both scored 7",
    "Assistant 1: 8",  # the other score is missing
    "Assistant 1: 8 Assistant 1: 7",
    '{"assistant_1": 8, "explanation": "x"}',
    '{"assistant_1": 0, "assistant_2": 7}',
    '{"assistant_1": "8", ',
    '{"assistant_1": true, "assistant_2": 7}',
    "I think Assistant 1 did better, it listed 3 reasons.",
    "The answer from assistant one has 2 mistakes and 4 good points",
    # a random tiny model, unconstrained
    " keiff foll They 19 continiff foll system day companyPro\ufffd say #ournalag able",
    "lect hotfor\ufffdways ableoreorm\ufffd\x03 well You looking questions makes offer'dus 4",
]


@pytest.mark.parametrize("text,scores", READABLE)
def test_parse_review_reads_what_real_referees_write(text, scores):
    assert parse_review(text) == scores


@pytest.mark.parametrize("text", UNREADABLE)
def test_parse_review_never_makes_up_a_number(text):
    assert parse_review(text) is None


def test_review_regex_outputs_always_parse():
    pattern = re.compile(REVIEW_REGEX)
    for text in ["10 1\n", "3 9\nAssistant 1 is vague, Assistant 2 is precise.", "7 7\n(both fine; equal) - ok"]:
        assert pattern.fullmatch(text)
        assert parse_review(text) is not None
    assert not pattern.fullmatch("0 5\n") and not pattern.fullmatch("11 5\n") and not pattern.fullmatch("8 7")


def _steps(*maps):
    """lion_distill.llm's logprobs column: per token, {candidate text: logprob}, probabilities given here."""
    return [{token: math.log(p) for token, p in m.items()} for m in maps]


def test_logprob_scores_is_the_renormalised_expectation():
    steps = _steps({"8": 0.5, "9": 0.3, "x": 0.2}, {" ": 1.0}, {"6": 0.25, " 7": 0.25, "10": 0.5}, {"\n": 1.0})
    first, second = logprob_scores(steps, "8 6\nbecause")
    assert first == pytest.approx((8 * 0.5 + 9 * 0.3) / 0.8)
    assert second == pytest.approx(0.25 * 6 + 0.25 * 7 + 0.5 * 10)
    assert logprob_scores(json.dumps(steps), "8 6\nbecause") == (first, second)  # the column's JSON string


def test_logprob_scores_with_space_merged_into_the_score_token():
    steps = _steps({"7": 0.9, "6": 0.1}, {" 9": 0.6, " 8": 0.4}, {"\n": 1.0})
    first, second = logprob_scores(steps, "7 9\nok")
    assert first == pytest.approx(0.9 * 7 + 0.1 * 6) and second == pytest.approx(0.6 * 9 + 0.4 * 8)


def test_logprob_scores_on_the_tiny_tokenizers_pieces():
    # The tiny BPE spells "1 10\nok" as "1", " 10", "\n", "ok".
    steps = _steps({"1": 0.6, "2": 0.4}, {" 10": 0.5, " 9": 0.5}, {"\n": 1.0}, {"ok": 1.0})
    first, second = logprob_scores(steps, "1 10\nok")
    assert first == pytest.approx(1.4) and second == pytest.approx(9.5)


def test_logprob_scores_split_digit_ten():
    # "10 8" from a tokenizer that spells 10 as "1", "0": P("0" after "1") splits the "1" mass.
    steps = _steps({"1": 0.8, "9": 0.2}, {"0": 0.75, " ": 0.25}, {" ": 1.0}, {"8": 1.0}, {"\n": 1.0})
    first, second = logprob_scores(steps, "10 8\n")
    assert first == pytest.approx(0.8 * 0.25 * 1 + 0.8 * 0.75 * 10 + 0.2 * 9)
    assert second == 8.0


def test_logprob_scores_aligns_when_1_and_10_both_fit():
    # The sampled path was "1", "0" although "10" is a candidate too: the dead end is undone.
    steps = _steps({"10": 0.5, "1": 0.5}, {"0": 1.0}, {" 5": 1.0}, {"\n": 1.0})
    first, second = logprob_scores(steps, "10 5\n")
    assert first == pytest.approx(10.0) and second == 5.0


@pytest.mark.parametrize(
    "steps,text",
    [
        (None, "8 7\n"),
        ([], "8 7\n"),
        ("[]", "8 7\n"),
        (_steps({"8": 1.0}, {" 7": 1.0}, {"\n": 1.0}), "Assistant 1: 8"),  # not REVIEW_REGEX's shape
        (_steps({"8": 1.0}, {" 7": 1.0}, {"\n": 1.0}), "9 7\n"),  # steps do not spell the text
        (_steps({"8": 1.0}), "8 7\n"),  # too few steps
        (_steps({"8 7": 1.0}, {"\n": 1.0}), "8 7\n"),  # both scores in one token
    ],
)
def test_logprob_scores_none_when_it_cannot_tell(steps, text):
    assert logprob_scores(steps, text) is None


def _pair(i, teacher="Paris is the capital of France.", student="Paris.", **extra):
    return {
        "id": f"p{i}",
        "instruction": "Capital of France?",
        "input": "",
        "teacher_text": teacher,
        "student_text": student,
        "teacher_finish_reason": "stop",
        "student_finish_reason": "stop",
        **extra,
    }


def _review(text, finish_reason="stop", **extra):
    return {"text": text, "finish_reason": finish_reason, **extra}


def _failed(kind: ErrorKind, message: str, role: str | None = None) -> dict:
    """A failed request's columns, as its backend writes them; under `<role>_` as a pair holds them."""
    row = {k: error_row(kind, message)[k] for k in ("text", "finish_reason", "error_kind", "error")}
    return row if role is None else {f"{role}_{k}": v for k, v in row.items()}


def _failure(j: dict) -> tuple:
    return j["status"], j["failure_kind"], j["failure"]


UNREAD = (FAILED, "unparseable", "review: no scores in the rubric's layout")


def test_judgment_swaps_positions_in_the_student_first_order():
    # teacher-first: teacher 9, student 6; student-first: student 7 (Assistant 1), teacher 8.
    [j] = judgment_rows([_pair(0)], [_review("9 6\nx")], [_review("7 8\ny")], tau=1.0)
    assert (j["teacher_score_1"], j["student_score_1"], j["teacher_score_2"], j["student_score_2"]) == (9, 6, 8, 7)
    assert (j["teacher_score"], j["student_score"], j["gap"]) == (8.5, 6.5, 2.0)
    assert j["hard"] is True and j["status"] == OK
    assert j["review_teacher_first"] == "9 6\nx" and j["review_student_first"] == "7 8\ny"


def test_hard_iff_gap_at_least_tau():
    pairs = [_pair(i) for i in range(3)]
    tf = [_review("8 7"), _review("8 8"), _review("7 9")]
    sf = [_review("7 8"), _review("8 8"), _review("9 7")]
    gaps = [j["gap"] for j in judgment_rows(pairs, tf, sf, tau=1.0)]
    assert gaps == [1.0, 0.0, -2.0]
    assert [j["hard"] for j in judgment_rows(pairs, tf, sf, tau=1.0)] == [True, False, False]
    assert [j["hard"] for j in judgment_rows(pairs, tf, sf, tau=0.0)] == [True, True, False]


def test_logprobs_refine_only_a_readable_review():
    lp = _steps({"8": 0.5, "9": 0.5}, {" ": 1.0}, {"7": 1.0}, {"\n": 1.0})
    [j] = judgment_rows([_pair(0)], [_review("8 7\n", logprobs=json.dumps(lp))], [_review("7 8\n")], tau=1.0)
    assert j["teacher_score_1"] == 8.5
    [j] = judgment_rows([_pair(0)], [_review("8 7\n", logprobs=lp)], [_review("7 8\n")], tau=1.0, use_logprobs=False)
    assert j["teacher_score_1"] == 8.0
    [j] = judgment_rows([_pair(0)], [_review("nonsense", logprobs=lp)], [_review("7 8\n")], tau=1.0)
    assert _failure(j) == UNREAD and j["teacher_score"] is None


def test_failures_are_null_counted_and_excluded():
    pairs = [
        _pair(0),
        _pair(1),
        _pair(2),
        _pair(3, teacher=""),
        _pair(4, **_failed(ErrorKind.TIMEOUT, "timeout", "teacher")),
        _pair(5),
    ]
    tf = [
        _review("9 5"),
        _review("I cannot judge."),
        _failed(ErrorKind.RATE_LIMIT, "HTTP 429: rate limited"),
        _review("9 5"),
        _review("9 5"),
        _review("6 6"),
    ]
    sf = [_review("5 9"), _review("5 9"), _review("5 9"), _review("5 9"), _review("5 9"), _review("8")]
    judgments = judgment_rows(pairs, tf, sf, tau=1.0)
    assert [_failure(j) for j in judgments] == [
        (OK, None, None),
        UNREAD,
        (FAILED, "rate_limit", "review: HTTP 429: rate limited"),
        (FAILED, "unparseable", "teacher answer: empty"),
        (FAILED, "timeout", "teacher answer: timeout"),
        UNREAD,
    ]
    for j in judgments[1:]:
        assert j["hard"] is None and j["gap"] is None and j["teacher_score"] is None
    summary = summarize(judgment_table(judgments))
    assert summary == {
        "rows": 6,
        "judged": 1,
        "failed": 5,
        "failed_by_kind": {"unparseable": 3, "rate_limit": 1, "timeout": 1},
        "hard": 1,
        "easy": 0,
        "hard_fraction": 1.0,
        "mean_gap": 4.0,
        "mean_teacher_score": 9.0,
        "mean_student_score": 5.0,
        "truncated": 0,
    }
    assert summary["judged"] + sum(summary["failed_by_kind"].values()) == summary["rows"]
    assert pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA).num_rows == 6


@pytest.mark.parametrize("student", [{"student": ""}, {"student": "  \n"}])
def test_a_student_that_answers_nothing_scores_lowest_and_is_hard(student):
    # The referee was shown the empty answer and scored it 5: it still counts as the lowest.
    [j] = judgment_rows([_pair(0, **student)], [_review("7 5")], [_review("5 7")], tau=1.0)
    assert j["status"] == OK and (j["student_score_1"], j["student_score_2"]) == (1.0, 1.0)
    assert (j["teacher_score"], j["student_score"], j["gap"], j["hard"]) == (7.0, 1.0, 6.0, True)
    # Lost, but not hard when the teacher's own answer scores no better than 1 + tau.
    [j] = judgment_rows([_pair(0, **student)], [_review("1 1")], [_review("1 1")], tau=1.0)
    assert j["status"] == OK and j["gap"] == 0.0 and j["hard"] is False
    # A review of the empty answer that cannot be read: the pair is still hard, with no teacher score or gap.
    [j] = judgment_rows([_pair(0, **student)], [_review("no scores")], [_review("5 7")], tau=1.0)
    assert (j["status"], j["hard"], j["student_score"], j["teacher_score"], j["gap"]) == (OK, True, 1.0, None, None)
    assert summarize(judgment_table([j]))["mean_gap"] is None and summarize(judgment_table([j]))["hard"] == 1


def test_a_failed_student_request_is_excluded_and_counted_not_hard():
    # An engine error or a context overflow is the infrastructure's, not the student's answer.
    student = _failed(ErrorKind.CONTEXT_OVERFLOW, "VLLMValidationError: maximum context length", "student")
    [j] = judgment_rows([_pair(0, **student)], [_review("7 5")], [_review("5 7")], tau=1.0)
    assert _failure(j) == (FAILED, "context_overflow", "student answer: VLLMValidationError: maximum context length")
    assert j["hard"] is None and summarize(judgment_table([j]))["judged"] == 0
    # The evaluation's candidate that cannot answer has lost.
    [j] = judgment_rows([_pair(0, **student)], [_review("7 5")], [_review("5 7")], tau=1.0, failed_answer_loses=True)
    assert j["status"] == OK and j["student_score"] == 1.0


def test_retry_of_unparseable_reviews_merges_back():
    pairs = [_pair(0), _pair(1), _pair(2)]
    judgments = judgment_table(
        judgment_rows(pairs, [_review("8 8"), _review("??"), _review("hmm")], [_review("8 8")] * 3, tau=1.0)
    )
    assert unparseable_ids(judgments).to_pylist() == ["p1", "p2"]
    again = judgment_table(
        judgment_rows(pairs[1:], [_review("9 4"), _review("still ??")], [_review("4 9")] * 2, tau=1.0)
    )
    merged = merge_retried(judgments, again)
    assert merged.column("status").to_pylist() == [OK, OK, FAILED]
    assert merged.to_pylist()[1]["gap"] == 5.0 and unparseable_ids(merged).to_pylist() == ["p2"]


def test_summary_of_nothing_judged_has_no_means():
    summary = summarize(judgment_table(judgment_rows([_pair(0)], [_review("x")], [_review("y")], tau=1.0)))
    assert summary["judged"] == 0 and summary["hard_fraction"] is None and summary["mean_gap"] is None


def test_misaligned_inputs_are_reported():
    with pytest.raises(ValueError, match="one review per pair"):
        judgment_rows([_pair(0)], [], [], tau=1.0)
    with pytest.raises(ValueError, match="aligned"):
        judgment_rows([_pair(0)], [_review("8 7", id="other")], [_review("7 8")], tau=1.0)


def test_a_pairs_two_reviews_are_matched_across_the_tables_they_come_in():
    from lion_distill.judging.judge import matched_orders

    def reviews(*ids):
        return pa.table({"id": [f"{i}" for i in ids], "text": [f"review {i}" for i in ids]})

    orders = ["teacher_first", "student_first"]
    # p1's two reviews in one table; p2's split over two; p|3 (a "|" in its id) in reverse order;
    # p4's other order never comes (a stray of an earlier call): left out.
    come = [
        reviews("p1|teacher_first", "p2|student_first", "p1|student_first", "p4|student_first"),
        reviews("p|3|student_first"),
        reviews("p2|teacher_first", "p|3|teacher_first"),
    ]
    got = list(matched_orders(iter(come), orders))
    first = pa.concat_tables([f for f, _ in got]).to_pylist()
    second = pa.concat_tables([s for _, s in got]).to_pylist()
    assert [r["id"] for r in first] == [r["id"] for r in second] == ["p1", "p2", "p|3"]
    assert [r["text"] for r in first] == [
        "review p1|teacher_first",
        "review p2|teacher_first",
        "review p|3|teacher_first",
    ]
    assert [r["text"] for r in second] == [
        "review p1|student_first",
        "review p2|student_first",
        "review p|3|student_first",
    ]


def test_a_review_cut_at_max_tokens_where_its_scores_are_is_not_read():
    """'Score of the Assistant 2: 10' cut to '...: 1' parses as a score of 1: such a review is not read
    but asked again (unparseable_ids); a scores-first review cut after its first line holds both."""
    from lion_distill.judging.referee import REVIEW_CUT, unparseable_ids
    from lion_distill.judging.rubrics import RUBRICS

    lion_cut = "Evaluation evidence: both fine.\nScore of the Assistant 1: 9\nScore of the Assistant 2: 1"
    whole = "Evaluation evidence: both fine.\nScore of the Assistant 1: 9\nScore of the Assistant 2: 6"
    [cut] = judgment_rows([_pair(0)], [_review(lion_cut, "length")], [_review(whole)], tau=1.0, rubrics=RUBRICS["lion"])
    assert cut["status"] == FAILED and cut["failure"] == REVIEW_CUT.message and cut["gap"] is None
    assert cut["failure_kind"] == ErrorKind.UNPARSEABLE  # asked again as an unparseable review is
    judged = judgment_rows([_pair(0)], [_review(whole)], [_review(whole)], tau=1.0, rubrics=RUBRICS["lion"])
    assert judged[0]["status"] == OK  # the same text, not cut: read
    table = pa.Table.from_pylist([cut, *judged], schema=JUDGMENT_SCHEMA)
    assert unparseable_ids(table).to_pylist() == ["p0"]
    # Scores first: a review cut in its explanation is read; one cut on its first line is not.
    [first] = judgment_rows([_pair(1)], [_review("9 6\nThe first is bet", "length")], [_review("7 8\ny")], tau=1.0)
    assert first["status"] == OK and first["teacher_score_1"] == 9
    [line] = judgment_rows([_pair(2)], [_review("9 1", "length")], [_review("7 8\ny")], tau=1.0)
    assert line["failure"] == REVIEW_CUT.message
