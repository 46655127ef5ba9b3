"""engine.step_by_step: rationale extraction on real PaLM completions, loaders, accuracy."""
import pytest

from engine.step_by_step import accuracy, equation_value, extract_rationale, load_split, train_valid_split
from engine.step_by_step.data import REPO_DATA, SHARED_DATA


def test_extract_cuts_the_invented_next_example_first():
    completion = ("The answer must be a place where a bum would live. Of the above choices, only a train station is a "
                  "place where a bum would live. So the answer is (c) train station.\n\nQ: What is the name of the famous "
                  "painting?\nAnswer Choices:\n(a) Mona Lisa\nA: The answer must be ... So the answer is (a) Mona Lisa.")
    rationale, label = extract_rationale(completion, "cqa")
    assert label == "train station"
    assert rationale.endswith("where a bum would live.") and "Mona Lisa" not in rationale


@pytest.mark.parametrize("completion, task, expected", [
    ("Luke scored 84 points after 2 rounds. 84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are 120 students.", "svamp",
     ("Luke scored 84 points after 2 rounds. 84 / 2 = 42.", "(84 / 2)")),
    ("16 * 17 = 272 houses. 272 * 4 = 1088. The answer is (16 * 17) * 4.\n\nQ: There are 15 trees", "svamp",
     ("16 * 17 = 272 houses. 272 * 4 = 1088.", "(16 * 17) * 4")),
    ("Only aquarium and pond fit. So the answer is either (a) aquarium or (e) pond.\n\nQ: What", "cqa", None),
    ("They gave 15 and 13. The answer is ((28 - 13) and (28 - 15)).\n\nQ: x", "svamp", None),
    ("Jake has 8 fewer peaches than Steven. So Steven has", "svamp", None),  # cut off by the token limit
])
def test_extract_parses_or_refuses(completion, task, expected):
    assert extract_rationale(completion, task) == expected


@pytest.mark.parametrize("task", ["cqa", "svamp"])
def test_repo_slice_loads_with_counted_failures(task):
    train = load_split(task, "train", REPO_DATA)
    assert len(train.rows) == 40 and train.parse_failures == 1  # the slice keeps one unparseable completion
    failed = [r for r in train.rows if not r["rationale"]]
    assert len(failed) == 1 and failed[0]["llm_label"] == "" and failed[0]["label"]  # gold label kept, nothing guessed
    good = [r for r in train.rows if r["rationale"]]
    assert accuracy([r["llm_label"] for r in good], [r["label"] for r in good], task) > 0.5
    if task == "cqa":
        assert train.rows[0]["input"].endswith("(d) math problem\n(e) gravity") and train.rows[0]["label"] == "math problem"


def test_validation_comes_from_train_only():
    rows = load_split("svamp", "train", REPO_DATA).rows
    train, valid = train_valid_split(rows, 0.25, seed=1)
    assert len(valid) == 10 and len(train) == 30
    assert {r["input"] for r in train}.isdisjoint(r["input"] for r in valid)
    assert train_valid_split(rows, 0.25, seed=1) == (train, valid)
    with pytest.raises(ValueError, match="valid_fraction"):
        train_valid_split(rows, 0.0)


def test_accuracy_by_task():
    assert equation_value("( 84.0 / 2.0 )") == 42.0 and equation_value("__import__('os')") is None
    assert accuracy(["(84 / 2)", "(7 * 30", "(2 + 2)"], ["( 84.0 / 2.0 )", "( 7.0 * 30.0 )", "( 3.0 + 1.0 )"], "svamp") == pytest.approx(2 / 3)
    assert accuracy(["Minnesota", "bridge"], ["minnesota", "train station"], "cqa") == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], [], "cqa")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the full step-by-step set (../shared/data/step-by-step) is absent")
def test_full_sets_align_and_mostly_parse():
    for task, split, n in [("cqa", "train", 9741), ("cqa", "test", 1221), ("svamp", "train", 800), ("svamp", "test", 200)]:
        loaded = load_split(task, split, SHARED_DATA)
        assert len(loaded.rows) == n and loaded.parse_failures < 0.05 * n
