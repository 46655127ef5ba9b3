"""A scoring pass (lion_distill.llm.scoring) on real engines: vLLM's top-k prompt logprobs, through
Ray Data's vLLM stage and through a vLLM OpenAI-compatible server, agree with a transformers forward
of the same model (top-1 equal, logprobs close in fp32); a pass resumes from its parts; a top_k over
the server's max_logprobs is an error with the server's reason, never a shorter signal."""

import numpy as np
import pyarrow as pa
import pytest

from lion_distill.config.models import Parallelism, RoleConfig
from lion_distill.data import RunDir
from lion_distill.distill.signal import REQUEST_SCHEMA
from lion_distill.errors import ScoringFailed
from lion_distill.llm.scoring import score

K = 5


def requests(tok, n: int = 6) -> pa.Table:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        text = tok.apply_chat_template(
            [{"role": "user", "content": f"Name {i + 2} colours."}], tokenize=False, add_generation_prompt=True
        )
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        rows.append({"id": f"r{i}", "prompt_ids": prompt, "answer_ids": rng.integers(10, 2000, 3 + i).tolist()})
    return pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def assert_agree(engine: dict[str, dict], reference: dict[str, dict]) -> None:
    assert engine.keys() == reference.keys()
    for i, ref in reference.items():
        got = engine[i]
        assert got["token_ids"] == ref["token_ids"]
        top1 = [t[0] for t in got["topk_ids"]]
        assert top1 == [t[0] for t in ref["topk_ids"]], i
        np.testing.assert_allclose(got["topk_logprobs"], ref["topk_logprobs"], atol=1e-4)
        np.testing.assert_allclose(got["token_logprobs"], ref["token_logprobs"], atol=1e-4)


@pytest.mark.vllm
def test_vllm_top_k_agrees_with_a_transformers_forward_and_a_pass_resumes(ray_cluster, tiny_models, tmp_path):
    from lion_distill.train.batches import load_tokenizer

    model = str(tiny_models.llama)
    rows = requests(load_tokenizer(model))
    run = RunDir(tmp_path / "run")
    hf = RoleConfig(backend="hf", model=model, parallelism=Parallelism(batch_size=2))
    reference, record = score(hf, rows, top_k=K, stage="x/signal", role_name="teacher", run_dir=run, parts="x")
    assert record.rows == rows.num_rows and record.extra["rows_from_parts"] == 0
    assert reference.schema.field("topk_ids").type == pa.list_(pa.list_(pa.int32(), K))
    # Asked again: every block is in the parts, nothing is scored.
    again, record = score(hf, rows, top_k=K, stage="x/signal", role_name="teacher", run_dir=run, parts="x")
    assert record.rows == 0 and record.extra["rows_from_parts"] == rows.num_rows
    assert by_id(again) == by_id(reference)
    vllm = RoleConfig(backend="vllm", model=model, dtype="float32")
    engine, record = score(vllm, rows, top_k=K, stage="x/signal", role_name="teacher")
    assert_agree(by_id(engine), by_id(reference))


def test_a_server_scores_as_transformers_does_and_refuses_a_top_k_over_max_logprobs(
    ray_cluster, vllm_server, tiny_models
):
    from lion_distill.llm.scorers import HFScorer
    from lion_distill.train.batches import load_tokenizer

    rows = requests(load_tokenizer(str(tiny_models.llama)), n=4)
    server = RoleConfig(
        backend="openai",
        model=vllm_server.model,
        openai={"base_url": vllm_server.base_url, "api_key_env": "LION_NO_KEY"},
        parallelism=Parallelism(batch_size=2),
    )
    signal, _ = score(server, rows, top_k=K, stage="x/signal", role_name="teacher")
    reference = HFScorer(str(tiny_models.llama), K)(rows)
    assert_agree(by_id(signal), by_id(reference.select(list(signal.column_names))))
    # The server's max_logprobs is vLLM's default, 20: 21 is refused, and the pass says why.
    with pytest.raises(ScoringFailed, match=r"4 of 4 answers could not be scored with top_k=21: HTTP 400: .*20"):
        score(server, rows, top_k=21, stage="x/signal", role_name="teacher")
