"""A repeat draw samples anew on every backend (lion_distill.llm.generate's `draw`), while a
prompt asked again without one, a teacher's answer, is the same request and reused.
A teacher answer vLLM cut at its context cap is "length" (left out of training).
No Ray: the backends' request builders and the openai generator run bare."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
from lion_distill.data.rundir import RunDir
from lion_distill.llm.cache import cache_key, request_seed
from lion_distill.llm.responses import (
    CACHE_KEY_COL,
    CACHED_COL,
    DRAW_COL,
    PROMPT_COL,
    attach_prompt,
    encode_prompt,
    merge_responses,
    response_row,
)

MESSAGES = [{"role": "user", "content": "Write a new instruction."}]


def test_the_draw_enters_the_cache_key_and_the_seed():
    plain = cache_key("m", MESSAGES, {"seed": 0}, None, None)
    assert plain == cache_key("m", MESSAGES, {"seed": 0}, None, None, None)  # undrawn keys are unchanged
    drawn = {
        cache_key("m", MESSAGES, {"seed": 0}, None, None, d) for d in ("iter_0/r0/a", "iter_0/r1/a", "iter_1/r0/a")
    }
    assert len(drawn) == 3 and plain not in drawn
    seeds = {request_seed(0, d) for d in ("iter_0/r0/a", "iter_0/r0/b", "iter_0/r1/a", "iter_1/r0/a")}
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(0, "iter_0/r0/a") == request_seed(0, "iter_0/r0/a")  # a resumed run repeats it
    assert request_seed(0, None) == 0 and request_seed(None, "iter_0/r0/a") is None


def test_attach_prompt_names_each_draw_and_responses_drop_it():
    batch = pa.table({"id": ["a", "b"], "x": [1, 2]})
    assert DRAW_COL not in attach_prompt(lambda r: "p").__call__(batch).column_names
    drawn = attach_prompt(lambda r: "p", "iter_1/generation/generator_round2")(batch)
    assert drawn.column(DRAW_COL).to_pylist() == [
        "iter_1/generation/generator_round2/a",
        "iter_1/generation/generator_round2/b",
    ]
    out = merge_responses(
        drawn.to_pydict(),
        [response_row("t", "stop", 1, 1)] * 2,
        "generator",
        False,
    )
    assert DRAW_COL not in out and PROMPT_COL not in out


def test_vllm_seeds_each_drawn_request_on_gpu_and_the_engine_on_cpu():
    from lion_distill.llm.engine_args import engine_spec
    from lion_distill.llm.vllm_backend import sampling_params, to_engine_request

    role = RoleConfig(backend="vllm", model="m", sampling=SamplingParams(seed=7))
    params = sampling_params(role, None, None, gpu=True)
    row = {"id": "a", PROMPT_COL: encode_prompt(MESSAGES)}
    assert to_engine_request(row, True, params)["sampling_params"]["seed"] == 7
    seeds = {
        to_engine_request({**row, DRAW_COL: f"iter_0/r{r}/a"}, True, params)["sampling_params"]["seed"]
        for r in range(3)
    }
    assert seeds == {request_seed(7, f"iter_0/r{r}/a") for r in range(3)} and len(seeds) == 3
    cpu = sampling_params(role, None, None, gpu=False)
    assert "seed" not in to_engine_request({**row, DRAW_COL: "iter_0/r0/a"}, True, cpu)["sampling_params"]
    assert engine_spec(role, gpu=False).engine_kwargs["seed"] == 7
    assert engine_spec(role, gpu=False, draw="iter_1/r0").engine_kwargs["seed"] == request_seed(7, "iter_1/r0")
    assert "seed" not in engine_spec(role, gpu=False, draw="iter_1/r0").serve_kwargs  # one engine, every draw


def test_openai_asks_a_new_draw_again_and_answers_a_repeat_from_the_cache(tmp_path, monkeypatch):
    from lion_distill.llm import openai_client
    from lion_distill.llm.cache import attach_cache_key, joinable, read_cache
    from tests.fixtures.fault_server import FaultServer

    seeds, real_body = [], openai_client.request_body
    monkeypatch.setattr(
        openai_client, "request_body", lambda *a: seeds.append(real_body(*a).get("seed")) or real_body(*a)
    )

    def batch(role, draws=None):
        """A batch as lion_distill.llm.generate hands it to the actor: keyed, and joined to the stage's cache."""
        cols = {PROMPT_COL: [encode_prompt(MESSAGES)] * 2, "id": ["a", "b"]}
        table = attach_cache_key(role.model, role.sampling.model_dump(), None, None)(
            pa.table(cols if draws is None else {**cols, DRAW_COL: draws})
        )
        cached = dict(zip(*joinable(read_cache(RunDir(tmp_path), "s")).to_pydict().values()))
        return {**table.to_pydict(), CACHED_COL: [cached.get(k) for k in table[CACHE_KEY_COL].to_pylist()]}

    with FaultServer() as server:
        role = RoleConfig(
            backend="openai",
            model="fake",
            sampling=SamplingParams(seed=3, max_tokens=8),
            parallelism=Parallelism(batch_size=4),
            openai=OpenAIEndpoint(base_url=server.base_url),
        )
        generator = openai_client.OpenAIGenerator(
            role, role_name="g", api_key=openai_client.Secret("EMPTY"), run_dir_uri=str(tmp_path), stage="s"
        )

        async def run():  # one event loop: the generator's HTTP session lives on it
            teacher = [await generator(batch(role)) for _ in range(2)]
            drawn = [await generator(batch(role, [f"r{r}/a", f"r{r}/b"])) for r in range(2)]
            again = await generator(batch(role, ["r0/a", "r0/b"]))
            await generator.client.close()  # an open aiohttp session logs "Unclosed connector" when collected
            return teacher, drawn, again

        teacher, drawn, again = asyncio.run(run())
        sent = server.total_hits
    # Undrawn: the same prompt is one request; its repeat after it is the cached answer.
    assert list(teacher[0]["_api_cached"]) == [0, 0] and list(teacher[1]["_api_cached"]) == [1, 1]
    assert all(list(d["_api_cached"]) == [0, 0] for d in drawn)  # four draws, four requests
    assert list(again["_api_cached"]) == [1, 1]  # a resumed draw is not paid twice
    assert sent == 2 + 4
    assert seeds[-4:] == [request_seed(3, d) for d in ("r0/a", "r0/b", "r1/a", "r1/b")]


def test_an_answer_cut_at_the_context_cap_is_truncated():
    from lion_distill.llm.vllm_backend import to_response

    row = {"id": "a", "generated_text": "cut", "num_input_tokens": 500, "num_generated_tokens": 12}
    kw = {"keep": ["id"], "role_name": "teacher", "max_tokens": 48, "with_logprobs": False}
    assert to_response(row, **kw)["finish_reason"] == "stop"
    assert to_response(row, **kw, max_model_len=512)["finish_reason"] == "length"
    assert to_response({**row, "num_generated_tokens": 48}, **kw, max_model_len=4096)["finish_reason"] == "length"
    assert to_response({**row, "num_generated_tokens": 11}, **kw, max_model_len=512)["finish_reason"] == "stop"
