"""The real-model proof of student.prompt_format (docs/chat-students.md): the 6-layer SmolLM2 student
trained on the same teacher answers (data/smol/teacher_answers.jsonl) in `chat` and in `alpaca`,
each export served by a real vLLM OpenAI server (`python -m vllm.entrypoints.openai.api_server`,
docs/environment.md) and asked through chat completions, as users serve a student:

- end to end, each export's chat template asks a chat request exactly as the student was trained
  (the same prompt tokens, and the same greedy answer as the trained prompt sent raw);
- each export asked through chat completions is closer to the teacher (a lower held-out NLL of the
  teacher's answers, read from the server's prompt logprobs of each answer after its question)
  than the same student asked through the other format's template: the `alpaca` student by more
  than MARGIN (what an export that kept the base model's chat template cost before,
  docs/chat-students.md).

LION_TEST_CORRUPT=swap serves each export with the other format's template (trained in one format,
asked in the other): the NLL test must fail. Figures: benchmarks/RESULTS.md.
"""

import json
import os
from pathlib import Path

import pytest

from lion_distill.config.models import TrainConfig
from lion_distill.lion.imitation import sft_rows
from lion_distill.llm.prompts import alpaca_prompt, instruction_text
from lion_distill.train.batches import load_tokenizer
from lion_distill.train.card import TEMPLATE_FILE, alpaca_chat_template
from tests.fixtures.vllm_server import openai_server

REPO = Path(__file__).resolve().parents[1]
ANSWERS = REPO / "data" / "smol" / "teacher_answers.jsonl"
TRAIN, HELD_OUT = 24, 16  # as tests/test_smol_learning.py: the first 24 train, the last 16 are held out
CORRUPT = os.environ.get("LION_TEST_CORRUPT", "")  # "" or "swap": a deliberate break, run by hand
MARGIN = 0.03  # nats per token: half the alpaca student's gap measured in-process (0.065, benchmarks/RESULTS.md)


def served_nll(client, model: str, rows: list[dict], template: str | None = None) -> tuple[float, int]:
    """-> (mean NLL per answer token, answer tokens): each teacher answer scored after its question
    as the server renders the conversation (its prompt logprobs; `template`: a chat template sent
    with the request instead of the served one), the question's tokens counted by the server's own
    generation prompt."""
    total, tokens = 0.0, 0
    override = {"chat_template": template} if template else {}
    for r in rows:
        question = [{"role": "user", "content": instruction_text(r["instruction"], r["input"])}]
        asked = client.chat.completions.create(
            model=model, messages=question, max_tokens=1, temperature=0, extra_body=override
        )
        scored = client.chat.completions.create(
            model=model,
            messages=[*question, {"role": "assistant", "content": r["response"]}],
            max_tokens=1,
            temperature=0,
            extra_body={
                "add_generation_prompt": False,
                "continue_final_message": True,
                "prompt_logprobs": 0,
                **override,
            },
        )
        steps = scored.model_extra["prompt_logprobs"][asked.usage.prompt_tokens :]
        total -= sum(next(iter(step.values()))["logprob"] for step in steps)
        tokens += len(steps)
    return total / tokens, tokens


def asked_as_trained(client, model: str, trained: str, row: dict, tok) -> None:
    """A chat request to the export is the prompt the student was trained on: same prompt tokens,
    and the same greedy answer as that prompt sent raw to /v1/completions."""
    question = [{"role": "user", "content": instruction_text(row["instruction"], row["input"])}]
    raw = (
        alpaca_prompt(row["instruction"], row["input"])
        if trained == "alpaca"
        else tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    )
    chat = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
    plain = client.completions.create(model=model, prompt=raw, max_tokens=24, temperature=0)
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens == len(tok(raw, add_special_tokens=True)["input_ids"])
    assert chat.choices[0].message.content == plain.choices[0].text


@pytest.mark.vllm
def test_each_export_served_through_chat_completions_is_asked_as_it_was_trained(ray_cluster, smol_models, tmp_path):
    import openai
    import ray.data

    from lion_distill.train import train_causal_sft

    data = [json.loads(line) for line in ANSWERS.read_text().splitlines()]
    pool = [{"id": str(i), **r} for i, r in enumerate(data[:TRAIN])]
    answers = {p["id"]: {"text": p["response"], "finish_reason": "stop" if p["complete"] else "length"} for p in pool}
    held = data[-HELD_OUT:]
    student, tok = str(smol_models.student), load_tokenizer(str(smol_models.student))
    cfg = TrainConfig(num_workers=0, epochs=3, batch_size=8, learning_rate=1e-3, max_length=320, warmup_ratio=0.0)
    templates = {"chat": smol_models.student / TEMPLATE_FILE, "alpaca": tmp_path / "alpaca.jinja"}
    templates["alpaca"].write_text(alpaca_chat_template(bos=False))
    nll = {}
    for trained in ("chat", "alpaca"):
        rows, _ = sft_rows(pool, answers, train_on_truncated=True, prompt_format=trained)
        export = tmp_path / trained
        train_causal_sft(
            cfg, student, ray.data.from_items(rows), str(export), name=f"smol-{trained}", prompt_format=trained
        )
        other = {"chat": "alpaca", "alpaca": "chat"}[trained]
        extra = ("--trust-request-chat-template",)
        if CORRUPT == "swap":
            extra += ("--chat-template", str(templates[other]))
        with openai_server(export, trained, tmp_path / f"{trained}.log", extra) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
            if not CORRUPT:
                asked_as_trained(client, trained, trained, next(r for r in held if not r["input"]), tok)
            nll[trained] = {
                "served": served_nll(client, trained, held),
                "other_template": served_nll(client, trained, held, templates[other].read_text()),
            }
    print(f"held-out NLL served through chat completions (corrupt={CORRUPT or 'none'}): {nll}")
    assert all(n[1] > 0 for student in nll.values() for n in student.values())
    assert nll["alpaca"]["served"][0] + MARGIN < nll["alpaca"]["other_template"][0], nll
    assert nll["chat"]["served"][0] < nll["chat"]["other_template"][0], nll
