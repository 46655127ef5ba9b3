"""Local backends on the shared Ray cluster: hf (tiny LLaMA and T5) and vllm (one engine)."""

import json
import re

import pytest
import ray

from lion_distill.config.models import Parallelism, RoleConfig, SamplingParams
from lion_distill.llm import generate
from lion_distill.llm.prompts import alpaca_prompt, instruction_messages

ROWS = [{"id": f"r{i}", "instruction": f"Name {i} colours.", "input": "" if i % 2 else "bright ones"} for i in range(6)]
SAMPLING = SamplingParams(temperature=0.0, max_tokens=8)


def _check(out, rec, role_name, n=None):
    n = len(ROWS) if n is None else n
    rows = out.take_all()
    assert len(rows) == rec.rows == n and {r["id"] for r in rows} == {r["id"] for r in ROWS}
    for r in rows:
        assert r["role"] == role_name and r["instruction"] and "input" in r
        assert r["finish_reason"] in ("stop", "length"), r["finish_reason"]
        assert (
            isinstance(r["text"], str) and 0 < r["completion_tokens"] <= SAMPLING.max_tokens and r["prompt_tokens"] > 0
        )
    assert rec.completion_tokens == sum(r["completion_tokens"] for r in rows) and rec.failed_rows == 0
    return rows


def test_hf_causal_chat_and_logprobs(ray_cluster, tiny_models):
    role = RoleConfig(
        backend="hf", model=str(tiny_models.llama), sampling=SAMPLING, parallelism=Parallelism(batch_size=4)
    )
    out, rec = generate(
        role, ray.data.from_items(ROWS), instruction_messages, stage="t/hf", role_name="student", logprobs=2
    )
    for r in _check(out, rec, "student"):
        steps = json.loads(r["logprobs"])
        assert len(steps) == r["completion_tokens"] and all(len(s) == 2 and max(s.values()) <= 0 for s in steps)


def test_hf_seq2seq_raw_prompts(ray_cluster, tiny_models):
    role = RoleConfig(backend="hf", model=str(tiny_models.t5), sampling=SAMPLING, parallelism=Parallelism(batch_size=4))
    out, rec = generate(
        role,
        ray.data.from_items(ROWS),
        lambda r: alpaca_prompt(r["instruction"], r["input"]),
        stage="t/hf_t5",
        role_name="student",
    )
    _check(out, rec, "student")
    assert "logprobs" not in out.columns()


@pytest.mark.vllm
def test_vllm_ray_data_with_regex_and_logprobs(ray_cluster, tiny_models):
    role = RoleConfig(backend="vllm", model=str(tiny_models.llama), sampling=SAMPLING, max_model_len=512)
    out, rec = generate(
        role,
        ray.data.from_items(ROWS),
        instruction_messages,
        stage="t/vllm",
        role_name="referee",
        structured_output={"regex": "Score: [1-9]"},
        logprobs=3,
    )
    for r in _check(out, rec, "referee"):
        assert re.fullmatch("Score: [1-9]", r["text"]), r["text"]
        steps = json.loads(r["logprobs"])
        assert len(steps) == r["completion_tokens"] and all(1 <= len(s) <= 4 for s in steps)
