"""student.prompt_format (docs/chat-students.md) without Ray: which format a student gets, the
training rows of each layout, the export's card and an `alpaca` export's chat template, the report;
and each export served by a vLLM server."""

import json
import shutil

import pytest

from lion_distill.config.models import StudentRoleConfig
from lion_distill.lion.imitation import sft_rows, sft_table
from lion_distill.lion.loop import with_prompt_format
from lion_distill.lion.report import render_markdown
from lion_distill.llm.prompts import prompt_format
from lion_distill.train.batches import load_tokenizer, tokenize_causal
from lion_distill.train.card import CARD, TEMPLATE_FILE, label_export, student_line
from tests.test_lion_stages import _config

ROWS = [{"id": "a", "instruction": "Name a colour.", "input": ""}, {"id": "b", "instruction": "Sum.", "input": "2 3"}]
ANSWERS = {
    "a": {"text": "Red.", "finish_reason": "stop", "reasoning": "Colours: red."},
    "b": {"text": "5 and", "finish_reason": "length"},
}


def test_the_format_is_chat_where_the_tokenizer_has_a_template_else_alpaca(tiny_models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text("{}")
    assert prompt_format(StudentRoleConfig(backend="hf", model=str(tiny_models.llama))) == "chat"
    assert prompt_format(StudentRoleConfig(backend="hf", model=str(bare))) == "alpaca"
    assert prompt_format(StudentRoleConfig(backend="hf", model=str(bare), prompt_format="chat")) == "chat"
    cfg = _config(tmp_path)
    cfg.student.model = str(tiny_models.llama)
    assert with_prompt_format(cfg).student.prompt_format == "chat"  # fixed once, on the base student


def test_training_rows_of_each_layout():
    chat, cut = sft_rows(ROWS, ANSWERS, train_on_truncated=True, prompt_format="chat", reasoning="keep")
    assert cut == 1 and [json.loads(r["messages"]) for r in chat] == [
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Red.", "complete": True, "reasoning": "Colours: red."},
        ],
        [
            {"role": "user", "content": "Sum.\n\n2 3"},
            {"role": "assistant", "content": "5 and", "complete": False},
        ],
    ]
    dropped, _ = sft_rows(ROWS, ANSWERS, prompt_format="chat", reasoning="drop")
    assert "reasoning" not in json.loads(dropped[0]["messages"])[1]
    alpaca, _ = sft_rows(ROWS, ANSWERS, prompt_format="alpaca", reasoning="keep")
    assert alpaca == [{"id": "a", "instruction": "Name a colour.", "input": "", "response": "Red.", "complete": True}]
    assert [r["id"] for r in chat] == ["a", "b"]  # the key the teacher signal joins on


def test_chat_rows_train_through_the_template_alpaca_rows_in_lions_layout(tiny_models):
    import pyarrow as pa

    from lion_distill.data import pool_table

    pool = pool_table(ROWS)
    responses = pa.Table.from_pylist([{"id": k, **v} for k, v in ANSWERS.items()])
    path = str(tiny_models.llama)
    tok = load_tokenizer(path)
    for fmt, learnt in (("chat", ["Red.</s>", "5 and"]), ("alpaca", ["Red.</s>", "5 and"])):
        table, _ = sft_table(pool, responses, responses, True, fmt)
        out = tokenize_causal(table.to_pydict(), tokenizer_path=path, max_length=256)
        assert [tok.decode(ids[labels != -100]) for ids, labels in zip(out["input_ids"], out["labels"])] == learnt
        prompt = tok.decode(out["input_ids"][0][: out["n_prompt_tokens"][0]])
        assert prompt.endswith("<|assistant|>\n" if fmt == "chat" else "### Response:\n")


def test_the_export_says_its_format_and_an_alpaca_export_renders_lions_layout(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    for fmt in ("chat", "alpaca"):
        export = tmp_path / fmt
        shutil.copytree(tiny_models.llama, export)
        label_export(str(export), fmt, base_model=str(tiny_models.llama))
        card = (export / CARD).read_text()
        assert f"prompt_format: {fmt}" in card and f"Prompt format: **{fmt}**" in card
        tok = AutoTokenizer.from_pretrained(export)
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": "Name a colour."}], tokenize=False, add_generation_prompt=True
        )
        if fmt == "chat":
            original = (tiny_models.llama / TEMPLATE_FILE).read_text()
            assert (export / TEMPLATE_FILE).read_text() == original and rendered.endswith("<|assistant|>\n")
            continue
        # The tiny tokenizer adds no bos to a prompt, so neither does the template.
        assert rendered == "### Instruction:\nName a colour.\n\n### Response:\n"
        whole = tok.apply_chat_template(
            [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}], tokenize=False
        )
        assert whole == rendered + "Red.</s>"  # the sequence an alpaca student is trained on
        with pytest.raises(Exception, match="Alpaca layout"):
            tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])


def test_the_report_names_the_students_format():
    line = student_line({"student": {"prompt_format": "chat"}, "teacher": {"reasoning": "keep"}})
    assert line.startswith("Student format: **chat**") and "thinking kept" in line
    assert student_line({"student": {}}) == "" and student_line(None) == ""
    assert line in render_markdown("runs/x", None, [], {}, [], student=line)


@pytest.mark.vllm
def test_each_export_served_by_vllm_asks_a_chat_request_as_it_was_trained(tiny_models, tmp_path):
    """`vllm serve` of each labelled export (the tiny model): a chat-completions request is the
    prompt the student was trained on (the same prompt tokens, the same greedy answer as that
    prompt sent raw). tests/test_smol_chat_students.py does it on trained SmolLM2 students."""
    import openai

    from tests.fixtures.vllm_server import openai_server
    from tests.test_smol_chat_students import asked_as_trained

    row = {"instruction": "Name a colour.", "input": ""}
    for fmt in ("chat", "alpaca"):
        export = tmp_path / fmt
        shutil.copytree(tiny_models.llama, export)
        label_export(str(export), fmt, base_model=str(tiny_models.llama))
        with openai_server(export, fmt, tmp_path / f"{fmt}.log", max_model_len=256) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
            asked_as_trained(client, fmt, fmt, row, load_tokenizer(str(export)))
