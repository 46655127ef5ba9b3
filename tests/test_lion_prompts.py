import pytest

from lion_distill.judging.prompts import REFEREE_SYSTEM
from lion_distill.judging.referee import referee_messages
from lion_distill.judging.rubrics import RUBRICS
from lion_distill.lion.generator import generator_messages
from lion_distill.lion.prompts import GENERATOR_GOALS, NO_INPUT, generator_user

ROW = {"id": "a", "instruction": "Summarize the text in one sentence.", "input": "Bees pollinate most crops."}


@pytest.mark.parametrize("rubric", ["general", "lion"])
def test_referee_sees_the_input_and_both_answers_in_order(rubric):
    system, user = referee_messages(ROW, "TEACHER ANSWER", "STUDENT ANSWER", RUBRICS[rubric])
    assert system == {"role": "system", "content": REFEREE_SYSTEM}
    text = user["content"]
    heading = "[Instruction]" if rubric == "lion" else "[Question]"
    assert f"{heading}\nSummarize the text in one sentence.\n\nBees pollinate most crops." in text
    assert text.index("[The Start of Assistant 1's Answer]\nTEACHER ANSWER") < text.index(
        "[The Start of Assistant 2's Answer]\nSTUDENT ANSWER"
    )
    assert "helpfulness, relevance, accuracy, level of details" in text
    assert "scale of 1 to 10" in text


def test_referee_question_without_input_has_no_dangling_blank():
    _, user = referee_messages({"instruction": "Name a fruit.", "input": ""}, "x", "y", RUBRICS["general"])
    assert "[Question]\nName a fruit.\n\n[The Start" in user["content"]


@pytest.mark.parametrize("kind", ["hard", "easy"])
def test_generator_prompt_carries_seed_instruction_input_and_format(kind):
    _, user = generator_messages(ROW, kind, "structured")
    text = user["content"]
    assert GENERATOR_GOALS[kind] in text
    assert "### Instruction:\nSummarize the text in one sentence.\n### Input:\nBees pollinate most crops." in text
    assert "exactly one new instruction" in text


def test_generator_prompts_differ_by_kind_and_mark_missing_input():
    hard = generator_user("hard", "Name a fruit.", "")
    easy = generator_user("easy", "Name a fruit.", "")
    assert "same task type" in hard and "rare" in easy and "rare" not in hard
    assert f"### Input:\n{NO_INPUT}\n" in hard


def test_generator_prompt_keeps_braces_in_seed_text():
    assert "Format {name} as JSON" in generator_user("hard", "Format {name} as JSON", "{}")


def test_unknown_generator_kind_is_reported():
    with pytest.raises(ValueError, match="kind must be one of"):
        generator_user("medium", "x", "")
