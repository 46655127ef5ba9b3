"""Lion's teacher, student and generator prompts, its candidate filters and its ROUGE-L rule,
against Lion's own code (tests/reference/lion/: src/chatgpt_inference.py, train.py,
generate_hard_instruction.py, prompt_hard.txt, prompt_easy.txt, utils.py)."""

import copy
import re
import string
from collections import Counter
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from lion_distill.config import load_config
from lion_distill.config.models import LionConfig
from lion_distill.errors import ErrorKind
from lion_distill.lion.generator import candidate_rows, clean_candidate, generator_messages, parse_candidate
from lion_distill.lion.imitation import sft_rows
from lion_distill.lion.prompts import teacher_messages
from lion_distill.lion.rouge import NoveltyFilter
from lion_distill.llm.prompts import alpaca_prompt, student_prompt
from lion_distill.llm.responses import error_row, response_row
from lion_distill.train.batches import load_tokenizer, tokenize_causal
from lion_distill.train.card import alpaca_chat_template
from tests.fixtures.generator_replies import REPLIES
from tests.reference_code import compiled

LION = Path(__file__).parent / "reference" / "lion"


def reference(path: Path, *names: str, source: str | None = None, **namespace) -> dict:
    """Named top-level functions and assignments of a reference file, compiled on their own."""
    return compiled(source or path.read_text(), str(path), names, namespace)


def test_teacher_is_asked_as_lions_chatgpt_inference():
    source = (LION / "chatgpt_inference.py.txt").read_text()
    generate_prompt = reference(LION / "chatgpt_inference.py.txt", "generate_prompt")["generate_prompt"]
    system = re.search(r"'role': 'system',\s*'content': \"([^\"]+)\"", source).group(1)
    row = {"instruction": "Give three tips for staying {healthy}.", "input": ""}
    assert teacher_messages(row) == [
        {"role": "system", "content": system},
        {"role": "user", "content": generate_prompt(row["instruction"])},
    ]
    # Lion's inference drops a row's input; here it is asked in Lion's training layout.
    with_input = teacher_messages({"instruction": "Summarize.", "input": "Bees pollinate crops."})[1]["content"]
    prompt_dict = reference(LION / "train.py.txt", "PROMPT_DICT")["PROMPT_DICT"]
    assert with_input == prompt_dict["prompt_input"].format_map(
        {"instruction": "Summarize.", "input": "Bees pollinate crops."}
    )


@pytest.mark.parametrize(
    "row", [{"instruction": "Name a {fruit}.", "input": ""}, {"instruction": "Translate.", "input": "Guten Tag"}]
)
def test_student_template_is_lions_train_py(row):
    prompt_dict = reference(LION / "train.py.txt", "PROMPT_DICT")["PROMPT_DICT"]
    key = "prompt_input" if row.get("input", "") != "" else "prompt_no_input"
    assert alpaca_prompt(row["instruction"], row["input"]) == prompt_dict[key].format_map(row)


@pytest.mark.parametrize("config", ["lion-7b.yaml", "lion-7b-vllm.yaml"])
def test_the_paper_configs_train_and_ask_the_student_in_lions_layout_byte_for_byte(config, tiny_models):
    """The paper's configs set student.prompt_format alpaca: the student is asked (student_prompt),
    trained (the training rows' tokens) and exported (its chat template) in PROMPT_DICT's layout."""
    prompt_dict = reference(LION / "train.py.txt", "PROMPT_DICT")["PROMPT_DICT"]
    cfg = load_config(str(Path(__file__).parents[1] / "configs" / config), [])
    assert cfg.student.prompt_format == "alpaca"
    rows = [
        {"id": "a", "instruction": "Name a {fruit}.", "input": ""},
        {"id": "b", "instruction": "Sum.", "input": "2 3"},
    ]
    answers = {"a": {"text": "A pear.", "finish_reason": "stop"}, "b": {"text": "5", "finish_reason": "stop"}}
    sft, _ = sft_rows(rows, answers, prompt_format=cfg.student.prompt_format, reasoning=cfg.teacher.reasoning)
    tok = load_tokenizer(str(tiny_models.llama))
    out = tokenize_causal(
        {k: [r[k] for r in sft] for k in sft[0]}, tokenizer_path=str(tiny_models.llama), max_length=256
    )
    for row, ids, labels in zip(rows, out["input_ids"], out["labels"]):
        expected = prompt_dict["prompt_input" if row["input"] else "prompt_no_input"].format_map(row)
        assert student_prompt(row, cfg.student.prompt_format) == expected
        assert list(ids[labels == -100]) == tok(expected)["input_ids"]  # the prompt tokens, not learnt
    # The export's chat template asks a chat request (one user message) in the same layout.
    tok = copy.deepcopy(tok)
    tok.chat_template = alpaca_chat_template(bos=True)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Name a {fruit}."}], tokenize=False)
    assert rendered == tok.bos_token + prompt_dict["prompt_no_input"].format_map(rows[0])


@pytest.mark.parametrize("kind", ["hard", "easy"])
def test_generator_prompt_is_lions_encode_prompt(kind, monkeypatch):
    source = (LION / "generate_hard_instruction.py.txt").read_text().replace("prompt_hard.txt", f"prompt_{kind}.txt")
    encode_prompt = reference(LION / "generate_hard_instruction.py.txt", "encode_prompt", source=source)[
        "encode_prompt"
    ]
    monkeypatch.chdir(LION)  # Lion opens its prompt file from the working directory
    seed = {"id": "s", "instruction": "Write a limerick about a {cat}.", "input": ""}
    lion_prompt, _ = encode_prompt([{**seed, "output": "..."}])
    system = re.search(r"'content': \"([^\"]+)\"", (LION / "utils.py.txt").read_text()).group(1)
    assert generator_messages(seed, kind) == [
        {"role": "system", "content": system},
        {"role": "user", "content": lion_prompt},
    ]
    assert LionConfig().generator_prompt == "lion"


def _lion_keeps(text: str, finish_reason: str = "stop") -> bool:
    post = reference(LION / "generate_hard_instruction.py.txt", "post_process_gpt3_response", string=string)
    response = {"message": {"content": text}, "finish_reason": finish_reason}
    return bool(post["post_process_gpt3_response"](response, {"instruction": "seed", "output": "out"}))


@pytest.mark.parametrize(
    "text, finish",
    [
        ("Name three fruits.", "stop"),  # 3 words: too short for Lion
        ("Name three red fruits.", "stop"),  # 4 words: kept
        ("Write an instruction about baking bread.", "stop"),
        ("Describe instructional design in primary schools.", "stop"),  # "instruction" inside a word
        ("...and describe the sea at night.", "stop"),
        ("Describe the causes of the First World War in detail.", "length"),
        ("Compose a haiku about autumn leaves falling.", "stop"),
    ],
)
def test_candidate_filters_decide_as_lions_post_process(text, finish):
    parsed = parse_candidate(text)
    ours = parsed is not None and clean_candidate(*parsed, finish, max_chars=4096) is None
    assert ours == _lion_keeps(text, finish)


def _lion_post_process(text: str | None, finish_reason: str = "stop") -> list[dict]:
    """Lion's own post_process_gpt3_response on one reply (None: the request failed, Lion's `response is None`)."""
    post = reference(LION / "generate_hard_instruction.py.txt", "post_process_gpt3_response", string=string)
    response = None if text is None else {"message": {"content": text}, "finish_reason": finish_reason}
    return post["post_process_gpt3_response"](response, {"instruction": "seed", "output": "out"})


def _lion_mode(text: str | None, finish_reason: str) -> tuple[list[dict], Counter]:
    seed = {"id": "s", "kind": "hard", "instruction": "Write a limerick about a cat.", "input": ""}
    reply = error_row(ErrorKind.TIMEOUT, "timeout") if text is None else response_row(text, finish_reason, 10, 5)
    return candidate_rows([seed], [reply], 1, tokens_per_seed_word=None, candidate_filter="lion")


def test_the_reply_shape_corpus_is_decided_in_lion_mode_as_lions_post_process():
    assert len(REPLIES) >= 40
    decisions = Counter()
    for shape, text, finish in [*REPLIES, ("generator failed", None, "stop")]:
        lion = [r["instruction"] for r in _lion_post_process(text, finish)]
        rows, rejects = _lion_mode(text, finish)
        assert [r["instruction"] for r in rows] == lion, shape  # the same decision, the same text, byte for byte
        assert all(r["input"] == "" for r in rows) and len(rows) + sum(rejects.values()) == 1, shape
        decisions[bool(lion)] += 1
    assert decisions[True] >= 15 and decisions[False] >= 15, decisions  # both ways, many times
    # Lion keeps chatter and appended answers whole and drops headings and quotes the clean mode reads away.
    kept = {shape for shape, text, finish in REPLIES if _lion_post_process(text, finish)}
    assert {"Sure! before", "Output block after", "numbered", "leading newline", "refusal"} <= kept
    assert not {"heading #Created Instruction#", "double quotes", "Chinese", "cut mid-sentence"} & kept


def test_the_clean_mode_differs_from_lion_on_the_corpus_as_the_fidelity_page_says():
    differ = [
        shape
        for shape, text, finish in REPLIES
        if [
            r["instruction"]
            for r in candidate_rows(
                [{"id": "s", "kind": "hard", "instruction": "Write a limerick about a cat.", "input": ""}],
                [response_row(text, finish, 10, 5)],
                1,
            )[0]
        ]
        != [r["instruction"] for r in _lion_post_process(text, finish)]
    ]
    assert LionConfig().candidate_filter == "clean" and len(differ) >= 20, differ
    assert (
        f"{len(differ)} of the {len(REPLIES)} replies"
        in (Path(__file__).parents[1] / "docs" / "paper-fidelity.md").read_text()
    )
    for name in ("lion-7b.yaml", "lion-7b-vllm.yaml"):
        assert load_config(Path(__file__).parents[1] / "configs" / name).lion.candidate_filter == "lion"


def test_generator_reply_is_capped_at_four_times_the_seeds_words():
    # Lion: max_tokens = len(seed.split()) * 4, and a reply cut there is dropped.
    source = (LION / "generate_hard_instruction.py.txt").read_text()
    assert "max_tokens = len(inst_i_os[0]['instruction'].split()) * 4" in source
    seeds = [{"id": "s", "kind": "hard", "instruction": "Name five famous painters."}] * 2  # 4 words: cap 16
    replies = [
        {"text": "List five famous sculptors please.", "finish_reason": "stop", "completion_tokens": n}
        for n in (15, 16)
    ]
    rows, rejects = candidate_rows(seeds, replies, 1, tokens_per_seed_word=LionConfig().generator_tokens_per_seed_word)
    assert len(rows) == 1 and rejects == {"truncated": 1}


def test_rouge_l_rejects_above_the_threshold_as_lions_code():
    source = (LION / "generate_hard_instruction.py.txt").read_text()
    assert "if max(rouge_scores) > 0.7:" in source
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = "one two three four five six seven eight nine ten"
    at = "one two three four five six seven x y z"  # F1 exactly 0.7
    above = "one two three four five six seven eight y z"
    lion = [not scorer.score(pool, c)["rougeL"].fmeasure > 0.7 for c in (at, above)]
    cfg = LionConfig()
    ours = NoveltyFilter([pool], cfg.rouge_l_threshold, strict=cfg.rouge_l_reject == "above")
    assert [ours.filter([c])[0] for c in (at, above)] == lion == [True, False]
    # The paper's text ("below 0.7" is novel) is one setting away.
    assert NoveltyFilter([pool], 0.7, strict=False).filter([at]) == [False]
