"""sampling.extra: validated once in the config, passed unchanged to vLLM and to the OpenAI request."""

import pytest

from lion_distill.config import ConfigError, load_config
from lion_distill.config.models import SAMPLING_EXTRA_KEYS, RoleConfig
from lion_distill.llm.openai_client import request_body

CONFIG = """
run_dir: runs/x
data: {pool_files: [p.jsonl]}
teacher: {backend: openai, model: gpt, sampling: {extra: {stop: ["###"], top_k: 5, repetition_penalty: 1.1}}}
student: {backend: hf, model: /models/s}
referee: {backend: vllm, model: /models/r, sampling: {extra: {min_p: 0.05, presence_penalty: 0.5}}}
generator: {backend: openai, model: gpt}
"""


def test_extra_reaches_the_openai_body_and_vllm_params(tmp_path):
    pytest.importorskip("ray.data.llm")
    from lion_distill.llm.vllm_backend import sampling_params

    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    body = request_body(cfg.teacher, [{"role": "user", "content": "q"}], None, None)
    assert body["stop"] == ["###"] and body["top_k"] == 5 and body["repetition_penalty"] == 1.1
    assert body["max_tokens"] == 512  # the named fields still win
    params = sampling_params(cfg.referee, None, None, gpu=False)
    assert params["min_p"] == 0.05 and params["presence_penalty"] == 0.5 and params["temperature"] == 0.7


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError, match=r"teacher.sampling.extra: .*'top_kk'"):
        load_config(path, ["teacher.sampling.extra.top_kk=5"])
    with pytest.raises(ConfigError, match="hf backend does not take it"):
        load_config(path, ["student.sampling.extra.top_k=5"])


def test_every_key_is_taken_by_vllm_sampling_and_its_openai_requests():
    vllm = pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    sampling = set(vllm.SamplingParams.__struct_fields__)
    for fields in (sampling, set(ChatCompletionRequest.model_fields), set(CompletionRequest.model_fields)):
        assert SAMPLING_EXTRA_KEYS <= fields, sorted(SAMPLING_EXTRA_KEYS - fields)
    vllm.SamplingParams(
        stop=["x"],
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.1,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        min_tokens=1,
    )


def test_roles_without_extra_send_what_they_sent_before():
    role = RoleConfig(backend="openai", model="gpt")
    assert set(request_body(role, "p", None, None)) == {"model", "temperature", "top_p", "max_tokens", "prompt"}
