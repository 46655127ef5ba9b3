"""The judge-free gap (lion_distill.evaluate.nll) without Ray: the NLL is the model's own loss on
the answer tokens, however answers are batched and padded; the teacher is asked in its chat
template; the Lion report shows both figures beside the relative score."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lion_distill.data import RunDir
from lion_distill.evaluate.nll import answer_rows, mean_nll
from lion_distill.evaluate.report import lion_eval_section
from lion_distill.evaluate.scores import aggregate
from lion_distill.train.batches import load_tokenizer, prompt_ids, tokenize_causal

ROWS = [
    {"instruction": "Name a colour.", "input": "", "response": "Blue, the colour of a clear sky.", "complete": True},
    {"instruction": "Add the numbers.", "input": "2 and 3", "response": "5", "complete": True},
    {
        "instruction": "Write a long line.",
        "input": "",
        "response": "one two three four five six seven",
        "complete": False,
    },
]


def test_mean_nll_is_the_models_own_loss_on_the_answer_tokens(tiny_models):
    """Row by row through transformers' own loss (labels on the answer and its eos, none on a
    cut-off answer's end) vs mean_nll over a padded batch: per token, the same."""
    path = str(tiny_models.llama)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    total = tokens = 0
    for row in ROWS:
        prompt = prompt_ids(tok, [row["instruction"]], [row["input"]])[0]
        answer = tok(row["response"], add_special_tokens=False)["input_ids"] + (
            [tok.eos_token_id] if row["complete"] else []
        )
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item() * len(answer)
        tokens += len(answer)
    got = mean_nll(path, ROWS, "alpaca", batch_size=2)
    assert got["tokens"] == tokens and got["answers"] == 3
    assert got["nll"] == pytest.approx(total / tokens, rel=1e-4)


def test_the_teacher_is_measured_in_its_chat_template(tiny_models):
    """template "chat": an Alpaca-layout row as a one-turn conversation in the model's own template,
    the answer and its end of turn learnt."""
    tok = load_tokenizer(str(tiny_models.llama))
    row = {"instruction": ["Add the numbers."], "input": ["2 and 3"], "response": ["5"], "complete": [True]}
    out = tokenize_causal(row, tokenizer_path=str(tiny_models.llama), max_length=256, template="chat")
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        tokenize=False,
    )
    assert list(out["input_ids"][0]) == tok(chat, add_special_tokens=False)["input_ids"]
    assert tok.decode(out["input_ids"][0][out["labels"][0] != -100]) == "5</s>"
    with pytest.raises(ValueError, match="template must be"):
        tokenize_causal(row, tokenizer_path=str(tiny_models.llama), max_length=256, template="vicuna")


def test_only_answered_questions_are_measured():
    questions = [
        {"instruction": "a", "input": ""},
        {"instruction": "b", "input": "x"},
        {"instruction": "c", "input": ""},
    ]
    answers = [
        {"text": "yes", "finish_reason": "stop"},
        {"text": "", "finish_reason": "error", "error_kind": "timeout", "error": "timeout"},
        {"text": "cut", "finish_reason": "length"},
    ]
    assert answer_rows(questions, answers) == [
        {"instruction": "a", "input": "", "response": "yes", "complete": True},
        {"instruction": "c", "input": "", "response": "cut", "complete": False},
    ]


def test_lion_report_shows_the_nll_beside_the_relative_score(tmp_path):
    run = RunDir(tmp_path)
    judged = [{"status": "ok", "category": "all", "candidate_score": 4.0, "reference_score": 8.0}]
    for k, nll in ((-1, 11.23), (0, 7.5)):
        summary = aggregate(judged, samples=10)
        summary["nll"] = {"student_nll": nll, "teacher_nll": 0.51, "nll_answers": 8, "nll_tokens": 700}
        run.write_json(f"iter_{k}/eval/summary.json", summary)
    run.write_json("iter_1/eval/summary.json", aggregate(judged, samples=10))  # measured before the NLL existed
    section = "\n".join(lion_eval_section(run))
    assert "student NLL | teacher NLL" in section
    assert "| base | 50.0%" in section and "| 11.230 | 0.510 |" in section and "| 7.500 | 0.510 |" in section
    assert "| n/a | n/a |" in section and "No judge takes part" in section
