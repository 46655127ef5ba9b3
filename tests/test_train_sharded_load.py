"""load_sharded on two gloo ranks (plain torch.distributed, no Ray): the model built on the
meta device and filled from rank 0 is exactly the one from_pretrained loads."""

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


@pytest.mark.parametrize("architecture", ["causal", "seq2seq"])
def test_meta_init_and_broadcast_give_the_pretrained_weights(tiny_models, tmp_path, architecture):
    from lion_distill.train import step

    path = str(tiny_models.llama if architecture == "causal" else tiny_models.t5)
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
