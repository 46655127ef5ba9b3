"""A thinking teacher's thinking (docs/chat-students.md): read from where its server puts it,
stored in the responses' `reasoning` column and never in `text`, trained on or dropped by
`teacher.reasoning`, never shown to the referee; `chat_template_kwargs` sent with each chat request."""

import asyncio
import json

import pytest

from lion_distill.config import RoleConfig
from lion_distill.judging.referee import referee_messages
from lion_distill.lion.imitation import sft_rows
from lion_distill.llm.openai_client import OpenAIGenerator, Secret
from lion_distill.llm.reasoning import split_reasoning
from lion_distill.llm.responses import PROMPT_COL, encode_prompt
from lion_distill.llm.vllm_backend import to_response
from lion_distill.train.chat import IGNORE, tokenize_chat
from tests.fixtures.chat_templates import template_tokenizer
from tests.fixtures.fault_server import FaultServer


@pytest.mark.parametrize(
    "text, reasoning, expected",
    [
        ("<think>\nTwo plus two.\n</think>\n\nFour.", None, ("Four.", "Two plus two.")),
        ("Two plus two.</think>Four.", None, ("Four.", "Two plus two.")),  # the prompt opened the block
        ("<think>Still thinking when max_tokens", None, ("", "Still thinking when max_tokens")),
        ("<think>\n\n</think>\n\nFour.", None, ("Four.", None)),
        ("Four.", "Two plus two.", ("Four.", "Two plus two.")),  # a reasoning parser's own split
        ("Four, <think> is a tag.", None, ("Four, <think> is a tag.", None)),
        (None, None, (None, None)),
    ],
)
def test_thinking_is_split_from_the_answer(text, reasoning, expected):
    assert split_reasoning(text, reasoning) == expected


def _ask(role: RoleConfig, prompts: list) -> list[dict]:
    batch = {"id": [str(i) for i in range(len(prompts))], PROMPT_COL: [encode_prompt(p) for p in prompts]}
    out = asyncio.run(OpenAIGenerator(role, role_name="teacher", api_key=Secret("EMPTY"))(batch))
    return [dict(zip(out, values)) for values in zip(*out.values())]


def test_an_apis_reasoning_content_is_its_own_column_and_the_template_kwargs_are_sent():
    with FaultServer() as server:
        endpoint = {"base_url": server.base_url, "max_retries": 0}
        role = RoleConfig(
            backend="openai", model="thinker", openai=endpoint, chat_template_kwargs={"enable_thinking": True}
        )
        thinking, plain = _ask(role, [[{"role": "user", "content": "think:sums"}], [{"role": "user", "content": "hi"}]])
        assert (thinking["text"], thinking["reasoning"]) == ("the answer", "thinking about sums")
        assert (plain["text"], plain["reasoning"]) == ("echo: hi", None)
        assert all(b["chat_template_kwargs"] == {"enable_thinking": True} for b in server.bodies)
        server.bodies.clear()
        _ask(RoleConfig(backend="openai", model="plain", openai=endpoint), [[{"role": "user", "content": "hi"}]])
        assert "chat_template_kwargs" not in server.bodies[0]  # an API that does not know the field never sees it


def test_a_think_block_from_the_vllm_stage_is_split_and_the_referee_sees_the_answer():
    row = {"id": "a", "generated_text": "<think>Red is warm.</think>\n\nRed.", "num_generated_tokens": 9}
    response = to_response(row, keep=["id"], role_name="teacher", max_tokens=64, with_logprobs=False)
    assert (response["text"], response["reasoning"], response["completion_tokens"]) == ("Red.", "Red is warm.", 9)
    review = referee_messages({"instruction": "Name a colour.", "input": ""}, response["text"], "Blue.")
    assert "Red is warm" not in json.dumps(review) and "Red." in review[-1]["content"]


def test_keep_trains_the_thinking_in_the_students_own_form_drop_the_answer_alone():
    tok = template_tokenizer("qwen3")
    rows = [{"id": "a", "instruction": "Name a colour.", "input": ""}]
    answers = {"a": {"text": "Red.", "reasoning": "Red is warm.", "finish_reason": "stop"}}
    learnt = {}
    for reasoning in ("keep", "drop"):
        [row], _ = sft_rows(rows, answers, prompt_format="chat", reasoning=reasoning)
        [(ids, labels)] = tokenize_chat(tok, json.loads(row["messages"]), 256)
        learnt[reasoning] = tok.decode(ids[labels != IGNORE])
    assert learnt == {"keep": "<think>\nRed is warm.\n</think>\n\nRed.<|im_end|>", "drop": "Red.<|im_end|>"}


THINK_THEN_ANSWER = "<think>[a-z]{2,12}( [a-z]{1,12}){2,6}</think>[A-Z][a-z]{1,12}( [a-z]{1,12}){1,6}[.]"


def test_a_vllm_server_with_a_reasoning_parser_fills_the_reasoning_column(ray_cluster, thinking_server, tmp_path):
    """Lion's teacher stage against a real vLLM server whose reasoning parser splits the reply: the
    thinking lands in `reasoning`, the answer in `text`, the tokens of both in completion_tokens."""
    import ray.data

    from lion_distill.data import RunDir
    from lion_distill.llm import generate
    from lion_distill.llm.prompts import instruction_messages

    role = RoleConfig(
        backend="openai",
        model=thinking_server.model,
        openai={"base_url": thinking_server.base_url},
        sampling={"temperature": 0.0, "max_tokens": 64},
    )
    rows = [
        {"id": str(i), "instruction": q, "input": ""} for i, q in enumerate(["What is two plus two?", "Name a colour."])
    ]
    out, rec = generate(
        role,
        ray.data.from_items(rows),
        instruction_messages,
        stage="t/thinking",
        role_name="teacher",
        run_dir=RunDir(tmp_path),
        structured_output={"regex": THINK_THEN_ANSWER},
    )
    for r in out.take_all():
        assert r["reasoning"] and r["text"] and "<think>" not in r["text"] and "think>" not in r["reasoning"]
        assert r["text"][0].isupper() and r["text"].endswith(".")
    assert rec.completion_tokens > sum(len(r["text"].split()) for r in out.take_all())
