"""load_sharded on two gloo ranks (plain torch.distributed, no Ray): the model built on the
meta device and filled from rank 0 is exactly the one from_pretrained loads, a T5 whose head is
not its embeddings (T5 v1.1's checkpoints) included."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.gloo_ranks import run_ranks


def _rank(rank: int, world: int, path: str, architecture: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lion_distill.train import step

    model = step.load_sharded(path, architecture, torch.device("cpu"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    if rank == 0:
        torch.save({"state": full, "buffers": buffers}, out)


def t5_with_its_own_head(tiny_models, folder) -> str:
    """The tiny T5 with a head of its own, as T5 v1.1's checkpoints hold one. transformers 5 configures
    every T5 with its head tied to the embeddings, and from_pretrained unties a head the checkpoint
    holds with other values; a model built from the config alone ties them."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_models.t5)
    torch.manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    model.all_tied_weights_keys.pop("lm_head.weight")  # so that save_pretrained writes it
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models.t5).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("architecture", ["causal", "seq2seq", "seq2seq-own-head"])
def test_meta_init_and_broadcast_give_the_pretrained_weights(tiny_models, tmp_path, architecture):
    from lion_distill.train import step

    paths = {"causal": tiny_models.llama, "seq2seq": tiny_models.t5}
    path = str(paths.get(architecture) or t5_with_its_own_head(tiny_models, tmp_path / "t5"))
    architecture = architecture.removesuffix("-own-head")
    out = str(tmp_path / "rank0.pt")
    run_ranks(_rank, 2, str(tmp_path / "rendezvous"), path, architecture, out)
    got = torch.load(out)
    reference = step.load_model(path, architecture)
    expected = reference.state_dict()
    assert set(got["state"]) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got["state"][name], tensor), name
    for name, buffer in reference.named_buffers():  # rotary frequencies are not in the state dict
        assert torch.equal(got["buffers"][name], buffer), name
    if "shared.weight" in expected:  # the encoder's and decoder's embeddings are the shared one; the head its own
        assert torch.equal(expected["encoder.embed_tokens.weight"], expected["shared.weight"])
        assert torch.equal(expected["lm_head.weight"], expected["shared.weight"]) == (path == str(tiny_models.t5))
