"""lion_distill.step_by_step without Ray: readers, prompts, reply parsing and its accounting, splits,
fractions, the config and its stage grid, accuracy. Milliseconds."""

import json
import os
from pathlib import Path

import pytest

from lion_distill.config import ConfigError, load_config
from lion_distill.config.step_by_step import StepByStepConfig
from lion_distill.errors import PromptError, TaskDataError
from lion_distill.runner import fresh_state, plan_stages
from lion_distill.step_by_step.data import fraction_split, parse_rows, released_completions, with_released_replies
from lion_distill.step_by_step.evaluate import accuracy, equation_value
from lion_distill.step_by_step.job import step_by_step_stages
from lion_distill.step_by_step.parse import Parsed, ParseFailure, parse_reply, words_to_number
from lion_distill.step_by_step.prompts import EXAMPLE, PROMPTS, default_prompt_file, load_prompt
from lion_distill.step_by_step.readers import REPO_DATA, read_examples, read_jsonl_task
from lion_distill.step_by_step.stages import method_rows, teacher_failed
from lion_distill.step_by_step.tasks import TASKS, user_task

# the full sets, where present ($SHARED_DATA for a checkout elsewhere)
SHARED_DATA = (
    Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "step-by-step"
)
CHOICES = ["ignore", "enforce", "authoritarian", "yell at", "avoid"]
CQA, SVAMP, ESNLI, ANLI = (TASKS[t] for t in ("cqa", "svamp", "esnli", "anli1"))


# --- parsing realistic replies ----------------------------------------------------------


def test_palm_run_on_completion_is_cut_before_the_invented_next_example():
    completion = (
        "The answer must be a place where a bum would live. Of the above choices, only a train station is a "
        "place where a bum would live. So the answer is (c) train station.\n\nQ: What is the name of the famous "
        "painting?\nAnswer Choices:\n(a) Mona Lisa\nA: The answer must be ... So the answer is (a) Mona Lisa."
    )
    parsed = parse_reply(completion, CQA, ["bridge", "church", "train station", "park", "zoo"])
    assert parsed.label == "train station"
    assert parsed.rationale.endswith("where a bum would live.") and "Mona Lisa" not in parsed.rationale


@pytest.mark.parametrize(
    "reply, task, choices, expected",
    [
        # PaLM's own, from the released completions
        (
            "Luke scored 84 points after 2 rounds. 84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are 120 students.",
            SVAMP,
            None,
            Parsed("Luke scored 84 points after 2 rounds. 84 / 2 = 42.", "(84 / 2)"),
        ),
        (
            "16 * 17 = 272 houses. 272 * 4 = 1088. The answer is (16 * 17) * 4.\n\nQ: There are 15 trees",
            SVAMP,
            None,
            Parsed("16 * 17 = 272 houses. 272 * 4 = 1088.", "(16 * 17) * 4"),
        ),
        (
            "The church choir is singing.\nAnswer: entailment\n\nPremise: This church choir sings.\nHypothesis: x\nReasonings: y",
            ESNLI,
            None,
            Parsed("The church choir is singing.", "entailment"),
        ),
        (
            "The premise mentions London. So the answer is contradiction.\n\nPremise: The 2016 season.",
            ANLI,
            None,
            Parsed("The premise mentions London.", "contradiction"),
        ),
        # a numeric answer in words or with units
        (
            "She had 20 and gave away 8. The answer is 12 apples.",
            SVAMP,
            None,
            Parsed("She had 20 and gave away 8.", "12"),
        ),
        ("Each costs 3 and she buys 5. The answer is $15.", SVAMP, None, Parsed("Each costs 3 and she buys 5.", "15")),
        (
            "He started with 50 and lost 8. The answer is forty-two.",
            SVAMP,
            None,
            Parsed("He started with 50 and lost 8.", "42"),
        ),
        (
            "The total is 1,250 people. The answer is 1,250 people.",
            SVAMP,
            None,
            Parsed("The total is 1,250 people.", "1250"),
        ),
        # letter only, text only, case
        (
            "A teacher enforces rules. So the answer is (b).",
            CQA,
            CHOICES,
            Parsed("A teacher enforces rules.", "enforce"),
        ),
        (
            "A teacher enforces rules. So the answer is Enforce.",
            CQA,
            CHOICES,
            Parsed("A teacher enforces rules.", "enforce"),
        ),
        # failures, by reason
        (None, CQA, CHOICES, ParseFailure.NO_REPLY),
        ("Jake has 8 fewer peaches than Steven. So Steven has", SVAMP, None, ParseFailure.NO_ANSWER_PHRASE),
        (
            "Teachers keep order.\n\nQ: What do people use to absorb ink?\nA: Blotters. So the answer is (e) blotter.",
            CQA,
            CHOICES,
            ParseFailure.RUN_ON,
        ),
        ("So the answer is (b) enforce.", CQA, CHOICES, ParseFailure.NO_RATIONALE),
        (
            "Only aquarium and pond fit. So the answer is either (a) aquarium or (e) pond.",
            CQA,
            CHOICES,
            ParseFailure.LABEL_OUTSIDE_SPACE,
        ),
        (
            "It must be a rule. So the answer is (b) authoritarian.",
            CQA,
            CHOICES,
            ParseFailure.LABEL_OUTSIDE_SPACE,
        ),  # letter and text disagree
        ("It must be a rule. So the answer is (g).", CQA, CHOICES, ParseFailure.LABEL_OUTSIDE_SPACE),
        (
            "They gave 15 and 13. The answer is ((28 - 13) and (28 - 15)).\n\nQ: x",
            SVAMP,
            None,
            ParseFailure.LABEL_OUTSIDE_SPACE,
        ),
        ("The premise is vague. So the answer is maybe.", ANLI, None, ParseFailure.LABEL_OUTSIDE_SPACE),
    ],
)
def test_parse_reply(reply, task, choices, expected):
    assert parse_reply(reply, task, choices) == expected


def test_words_to_number():
    assert words_to_number("one hundred and five") == 105 and words_to_number("two thousand three") == 2003
    assert words_to_number("twelve apples") is None and words_to_number("") is None


def test_parse_accounting_rows_in_equal_rows_out():
    rows = [
        {"id": str(i), "input": "q", "label": "enforce", "choices": CHOICES, "text": t}
        for i, t in enumerate(
            [
                "Rules. So the answer is (b) enforce.",
                None,
                "no phrase here",
                "Hm. So the answer is (z).",
                "Ok. So the answer is (e).",
            ]
        )
    ]
    parsed, failures = parse_rows(rows, CQA)
    assert len(parsed) == len(rows) and [r["id"] for r in parsed] == [r["id"] for r in rows]
    assert failures == {"no_reply": 1, "no_answer_phrase": 1, "label_outside_space": 1}
    assert [r["teacher_label"] for r in parsed] == ["enforce", "", "", "", "avoid"]
    # no label is guessed; the text before the answer stays as a rationale (for step_by_step with gold labels)
    assert [r["rationale"] for r in parsed] == ["Rules.", "", "no phrase here", "Hm.", "Ok."]


# --- the released PaLM path and the readers ----------------------------------------------


@pytest.mark.parametrize(
    "task, split, n, failures",
    [("cqa", "train", 40, 1), ("svamp", "train", 40, 1), ("esnli", "test", 20, 0), ("anli1", "test", 20, 0)],
)
def test_released_path_on_repo_slices(task, split, n, failures):
    rows = with_released_replies(read_examples(task, split), REPO_DATA, task, split)
    parsed, reasons = parse_rows(rows, TASKS[task])
    assert len(parsed) == n and sum(reasons.values()) == failures
    good = [r for r in parsed if not r["parse_failure"]]
    assert accuracy([r["teacher_label"] for r in good], [r["label"] for r in good], task) > 0.5
    if task == "cqa":
        assert rows[0]["input"].endswith("(d) math problem\n(e) gravity") and rows[0]["label"] == "math problem"
    if task in ("esnli", "anli1"):
        assert rows[0]["input"].startswith("Premise: ") and "\nHypothesis: " in rows[0]["input"]


def test_missing_nli_train_split_names_what_to_supply():
    with pytest.raises(
        TaskDataError, match=r"esnli/esnli_train.json: the esnli train split is missing; supply the e-SNLI"
    ):
        read_examples("esnli", "train")


def test_misaligned_completions_are_an_error(tmp_path):
    (tmp_path / "svamp" / "llm").mkdir(parents=True)
    (tmp_path / "svamp" / "svamp_test.json").write_text('{"input": "a", "label": "1"}\n{"input": "b", "label": "2"}\n')
    (tmp_path / "svamp" / "llm" / "test_CoT_0.json").write_text('["x"]')
    with pytest.raises(TaskDataError, match="2 test examples but 1 completions"):
        with_released_replies(read_examples("svamp", "test", tmp_path), tmp_path, "svamp", "test")
    (tmp_path / "svamp" / "svamp_test.json").write_text('{"input": "a", "label": "1"}\n{"inp": 1}\n')
    with pytest.raises(TaskDataError, match=r"svamp_test.json:2: not a svamp example \(KeyError"):
        read_examples("svamp", "test", tmp_path)
    assert released_completions(tmp_path, "svamp", "test") == ["x"]


def test_generic_jsonl_task_rejects_bad_rows_with_file_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"input": "Is water wet?", "label": "yes"}),
                "{broken",
                json.dumps({"input": "Is fire cold?", "label": "perhaps"}),
                json.dumps({"input": "", "label": "no"}),
                json.dumps(["not", "an", "object"]),
                json.dumps({"input": "Is ice cold?", "label": "yes", "choices": ["yes", 3]}),
                json.dumps({"input": "Is the sky green?", "label": "no"}),
            ]
        )
        + "\n"
    )
    rows, report = read_jsonl_task(path, user_task(["yes", "no"]), "train")
    assert [r["input"] for r in rows] == ["Is water wet?", "Is the sky green?"]
    assert report.reconciles and report.rows_in == 7
    assert dict(report.rejects) == {
        "malformed_json": 1,
        "label_outside_space": 1,
        "missing_field": 1,
        "not_an_object": 1,
        "bad_choices": 1,
    }
    assert report.examples["label_outside_space"][0].startswith(f"{path}:3: ")
    rows, report = read_jsonl_task(path, user_task(None), "train")  # no labels: each row names its choices
    assert rows == [] and report.rejects["missing_field"] == 4


def test_prompts_carry_provenance_and_one_slot():
    for task in TASKS:
        prompt = load_prompt(default_prompt_file(task))
        assert "Source:" in prompt.provenance and not prompt.template.startswith("#")
        rendered = prompt.render({"input": "THE INPUT"})
        assert rendered.count("THE INPUT") == 1 and TASKS[task].answer_phrase in rendered
    demo = load_prompt(REPO_DATA / "prompts" / "cqa-2shot.txt")
    assert demo.render({"input": "x"}).endswith("Q: x\nA:")
    assert len(list(PROMPTS.glob("*.txt"))) == 4


def test_a_prompt_needs_its_slot_and_no_provenance_header(tmp_path):
    (tmp_path / "a.txt").write_text("# mine\nQ: no slot\nA:")
    (tmp_path / "b.txt").write_text("Q: {input}\nA:")
    with pytest.raises(PromptError, match="exactly one"):
        load_prompt(tmp_path / "a.txt")
    with pytest.raises(PromptError, match="not found") as missing:
        load_prompt(tmp_path / "none.txt")
    # What to write there, and an example that exists and loads.
    assert "exactly one {input}" in str(missing.value) and EXAMPLE in str(missing.value)
    assert (
        load_prompt(REPO_DATA.parents[1] / EXAMPLE)
        .render({"input": "x"})
        .endswith("Review: x\nIs this review positive or negative?\nA:")
    )
    with pytest.raises(PromptError, match="no prompt ships for this task: set teacher.prompt_file"):
        load_prompt(default_prompt_file("jsonl"))
    # A user's prompt needs no `#` lines: they are this repository's convention for its own prompts.
    prompt = load_prompt(tmp_path / "b.txt")
    assert prompt.render({"input": "x"}) == "Q: x\nA:" and prompt.provenance == ""


def test_constraint_regex_accepts_what_the_parser_accepts():
    import re

    replies = {
        "cqa": " A teacher enforces rules. So the answer is (b).",
        "svamp": " She has 12 left. The answer is 12.",
        "esnli": " The choir sings.\nAnswer: entailment.",
        "anli1": " The premise says so. So the answer is neutral.",
    }
    for name, reply in replies.items():
        task = TASKS[name]
        assert re.fullmatch(task.constraint(), reply), name
        assert isinstance(parse_reply(reply, task, CHOICES), Parsed), name
    assert re.fullmatch(user_task(["yes", "no"]).constraint(), " Water is wet. So the answer is yes.")


def test_a_teacher_that_answered_nothing_stops_the_stage():
    failed = [
        {
            "id": str(i),
            "text": None,
            "finish_reason": "error",
            "error_kind": "bad_request",
            "error": "HTTP 400: grammar",
        }
        for i in range(3)
    ]
    line = teacher_failed(failed)
    assert line.startswith("rationales/teacher: all 3 requests failed; the first: bad_request: HTTP 400: grammar")
    assert teacher_failed([*failed, {"id": "3", "text": " So the answer is (a).", "finish_reason": "stop"}]) is None
    assert teacher_failed([]) is None


def test_constraint_regexes_compile_in_vllms_structured_output_backend():
    """xgrammar (vLLM's default backend) refuses what Python's `re` accepts: a raw newline in a
    character class failed every constrained teacher request on a real vLLM server."""
    xgrammar = pytest.importorskip("xgrammar")
    from lion_distill.judging.rubrics import RUBRICS

    regexes = {name: task.constraint(600) for name, task in TASKS.items()}
    regexes["user"] = user_task(["yes", "no"]).constraint()
    regexes.update({f"rubric/{name}": rubric.regex(512) for name, rubric in RUBRICS.items()})
    for name, regex in regexes.items():
        assert "\n" not in regex, name  # a newline is spelled as the escape, never a raw newline
        xgrammar.Grammar.from_regex(regex)  # raises on a pattern the server would refuse


# --- splits, fractions, the method's rows --------------------------------------------------


def test_validation_comes_from_the_fraction_never_test():
    rows = [{"id": str(i)} for i in range(200)]
    train, valid = fraction_split(rows, 0.5, 0.1, seed=1)
    assert len(valid) == 10 and len(train) == 90  # 10% of the fraction, as the reference's 10% of its subsample
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in valid)
    assert fraction_split(rows, 0.5, 0.1, seed=1) == (train, valid)
    with pytest.raises(ValueError, match="valid_fraction"):
        fraction_split(rows, 0.5, 0.0)
    dev = [{"id": f"d{i}"} for i in range(40)]
    train, valid = fraction_split(rows, 0.25, 0.1, seed=1, dev=dev)  # an official dev split: sized by the fraction
    assert len(train) == 50 and len(valid) == 10 and {r["id"][0] for r in valid} == {"d"}


def test_fractions_and_their_validation_are_seeded_and_nested():
    rows = [{"id": str(i)} for i in range(1000)]
    splits = {f: fraction_split(rows, f, 0.1, seed=3) for f in (0.125, 0.25, 0.5, 1.0)}
    ids = {f: ({r["id"] for r in t}, {r["id"] for r in v}) for f, (t, v) in splits.items()}
    assert [len(t) + len(v) for t, v in ids.values()] == [125, 250, 500, 1000]
    assert [len(v) for _, v in ids.values()] == [12, 25, 50, 100]
    for small, large in ((0.125, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert ids[small][0] < ids[large][0] and ids[small][1] <= ids[large][1]
    assert {r["id"] for r in fraction_split(rows, 0.25, 0.1, seed=4)[0]} != ids[0.25][0]
    with pytest.raises(ValueError):
        fraction_split(rows, 0.0, 0.1)


def test_method_rows():
    rows = [
        {"id": "1", "input": "q1", "label": "a", "teacher_label": "b", "rationale": "r1", "parse_failure": ""},
        {"id": "2", "input": "q2", "label": "c", "teacher_label": "", "rationale": "", "parse_failure": "run_on"},
    ]
    assert method_rows(rows, "standard_finetune", "gold") == [
        {"id": "1", "input": "q1", "label": "a"},
        {"id": "2", "input": "q2", "label": "c"},
    ]
    assert method_rows(rows, "standard_distill", "gold") == [{"id": "1", "input": "q1", "label": "b"}]
    assert method_rows(rows, "step_by_step", "gold") == [{"id": "1", "input": "q1", "label": "a", "rationale": "r1"}]
    assert method_rows(rows, "step_by_step", "teacher")[0]["label"] == "b"


# --- accuracy -------------------------------------------------------------------------------


def test_accuracy_by_task():
    assert equation_value("( 84.0 / 2.0 )") == 42.0 and equation_value("__import__('os')") is None
    assert accuracy(
        ["(84 / 2)", "(7 * 30", "(2 + 2)"], ["( 84.0 / 2.0 )", "( 7.0 * 30.0 )", "( 3.0 + 1.0 )"], "svamp"
    ) == pytest.approx(2 / 3)
    assert accuracy(["42", "12"], ["( 84.0 / 2.0 )", "( 3.0 * 3.0 )"], "svamp") == 0.5  # a number against an equation
    assert accuracy(["Minnesota", "bridge"], ["minnesota", "train station"], "cqa") == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], [], "cqa")


@pytest.mark.parametrize("task", ["cqa", "esnli", "anli1"])
def test_a_model_that_always_predicts_one_label_scores_that_labels_share(task):
    gold = [r["label"] for r in read_examples(task, "test")]
    for label in set(gold):
        assert accuracy([label] * len(gold), gold, task) == gold.count(label) / len(gold)
    assert accuracy(["not a label"] * len(gold), gold, task) == 0.0


# --- config and the stage grid ---------------------------------------------------------------


def test_configs_in_repo_load():
    for path in sorted(Path("configs").glob("step-by-step-*.yaml")):
        cfg = load_config(path, model=StepByStepConfig)
        assert cfg.train.architecture == "seq2seq" and cfg.train.lr_schedule == "linear", path


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\ndata: {task: cqa}\nteacher: {source: generate}\n")
    with pytest.raises(ConfigError, match="teacher: Value error, source generate needs a role"):
        load_config(path, model=StepByStepConfig)
    path.write_text("run_dir: r\ndata: {task: jsonl}\n")
    with pytest.raises(ConfigError, match="needs train_file and test_file"):
        load_config(path, model=StepByStepConfig)
    path.write_text("run_dir: r\ndata: {task: cqa}\nfractions: [0.5, 1.5]\n")
    with pytest.raises(ConfigError, match=r"fractions must be in \(0, 1\]"):
        load_config(path, model=StepByStepConfig)
    path.write_text("run_dir: r\ndata: {task: cqa}\nmethod: [step_by_step]\n")
    with pytest.raises(ConfigError, match="method: unknown field"):
        load_config(path, model=StepByStepConfig)


def test_stage_grid_and_resume_plan(tmp_path):
    from lion_distill.data import RunDir

    cfg = StepByStepConfig(
        run_dir=str(tmp_path),
        data={"task": "cqa"},
        methods=["step_by_step", "standard_finetune"],
        fractions=[1.0, 0.25],
    )  # no grid: the plain method/fraction keys
    names = [s.name for s in step_by_step_stages(cfg, RunDir(tmp_path))]
    assert names == [
        "rationales",
        "train/step_by_step/0.25",
        "train/step_by_step/1",
        "train/standard_finetune/0.25",
        "train/standard_finetune/1",
        "evaluate",
    ]
    state = {**fresh_state("step_by_step", "x"), "completed": ["rationales"]}
    from lion_distill.runner import next_stage

    assert next_stage(plan_stages(state, names)) == "train/step_by_step/0.25"


def test_report_from_any_state(tmp_path):
    from lion_distill.data import RunDir
    from lion_distill.step_by_step.report import write_report

    run = RunDir(tmp_path)
    assert "Not evaluated yet" in Path(write_report(run)).read_text()  # no state.json yet: said, not raised
    state = {
        **fresh_state("step_by_step", "t"),
        "stages": ["rationales", "train/step_by_step/1", "evaluate"],
        "completed": ["rationales", "train/step_by_step/1", "evaluate"],
        "done": True,
        "summary": {
            "rationales": {
                "teacher_test_accuracy": 0.6,
                "parse_failures": {"train": {"run_on": 2}, "test": {}},
                "rows": {"train": 8},
                "source": "generate",
                "seconds": 3.0,
                "spend": {"prompt_tokens": 10, "cost_usd": 0.5},
            },
            "train": {
                "step_by_step/1": {
                    "rows": 8,
                    "row_counts": {
                        "rows_in": 9,
                        "rows_trained": 8,
                        "unparsed_label": 0,
                        "empty_rationale": 1,
                        "unparsed_rows": "drop",
                    },
                    "steps": 4,
                    "seconds": 9.0,
                    "best_step": 2,
                    "validations": [{"step": 2, "valid_accuracy": 0.5}, {"step": 4, "valid_accuracy": 0.25}],
                }
            },
            "evaluate": {
                "cells": [
                    {
                        "key": "step_by_step/0.5",
                        "series": "step_by_step",
                        "fraction": 0.5,
                        "seed": 0,
                        "student": "t5",
                        "accuracy": 0.5,
                    },
                    {
                        "key": "step_by_step/1/seed0",
                        "series": "step_by_step",
                        "fraction": 1.0,
                        "seed": 0,
                        "student": "t5",
                        "accuracy": 0.75,
                    },
                    {
                        "key": "step_by_step/1/seed1",
                        "series": "step_by_step",
                        "fraction": 1.0,
                        "seed": 1,
                        "student": "t5",
                        "accuracy": 0.25,
                    },
                ],
                "test_rows": 4,
                "label_shares": {"a": 3},
                "seconds": 1.0,
            },
        },
    }
    run.write_json("state.json", state)
    report = Path(write_report(run)).read_text()
    assert "| step_by_step | 0.5 | 0.5 ± 0.3536 (n=2) |" in report and "| teacher (reference) | 0.6 | 0.6 |" in report
    assert (
        "| parse failure | test | train |" in report
        and "| run_on | 0 | 2 |" in report
        and "| train/step_by_step/1 | 9 |" in report
    )
    assert "| step_by_step/1 | 8 | 0 / 1, left out | 4 | 0.5 (2), 0.25 (4) | 2 |" in report
    assert "| cost_usd | 0.5 |" in report
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 0


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="the full step-by-step sets (../shared/data/step-by-step) are absent"
)
@pytest.mark.parametrize(
    "task, split, n",
    [
        ("cqa", "train", 9741),
        ("cqa", "test", 1221),
        ("svamp", "train", 800),
        ("svamp", "test", 200),
        ("esnli", "test", 9824),
        ("anli1", "test", 1000),
    ],
)
def test_full_sets_align_and_mostly_parse(task, split, n):
    rows = with_released_replies(read_examples(task, split, SHARED_DATA), SHARED_DATA, task, split)
    parsed, failures = parse_rows(rows, TASKS[task])
    assert len(parsed) == n and sum(failures.values()) < 0.05 * n
