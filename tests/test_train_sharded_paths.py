"""Training paths a GPU run takes that no test took before, on two gloo ranks (plain
torch.distributed, no Ray; tests/fixtures/gloo_ranks.py): a T5 student sharded by FSDP2 with its
embeddings tied (shared, encoder, decoder and head: one weight, after sharding and after a step),
activation checkpointing, and gradient accumulation, each step's gradients equal to one process
training the same rows as one batch. Then what the export writes: the dtype its weights are in,
also in its config.json, and a resume across world sizes refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lion_distill.config.models import TrainConfig
from lion_distill.train import batches, step
from tests.fixtures.gloo_ranks import run_ranks

CPU = torch.device("cpu")
TIED = ("shared", "encoder.embed_tokens", "decoder.embed_tokens", "lm_head")


def _cols(**cols) -> dict:
    return {k: np.asarray(v, dtype=object) for k, v in cols.items()}


def causal_rows(path: str) -> dict:
    answers = ["yes", "one two three", " ".join(["word"] * 12), "a b"]
    cols = _cols(instruction=[f"Say {i}." for i in range(4)], input=["", "x", "", "y"], response=answers)
    return batches.tokenize_causal(cols, tokenizer_path=path, max_length=128)


def seq2seq_rows(path: str) -> dict:
    cols = _cols(
        input=["2 + 3?", "Where do fish live?", "Is ice cold?", "1 + 1?"],
        label=["5", "water", "yes", "2"],
        rationale=["2 plus 3 is 5.", "Fish live in water.", "Ice is frozen water, so it is cold.", "One and one."],
    )
    return batches.tokenize_seq2seq(cols, tokenizer_path=path, max_length=64, task="multitask")


def micro_batches(tokens: dict, collate, rows) -> dict:
    return collate({k: [v[i] for i in rows] for k, v in tokens.items()})


def _rank(rank: int, world: int, path: str, architecture: str, checkpointing: bool, micro: list, out: str) -> None:
    """One optimizer step over this rank's micro-batches (gradient accumulation); rank 0 saves the
    gathered gradients, whether the embeddings are one weight, and the full weights after the step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = step.load_sharded(path, architecture, CPU, activation_checkpointing=checkpointing)
    cfg = TrainConfig(architecture=architecture, learning_rate=1e-3, warmup_ratio=0.0)
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=2)
    tokens = sum(step.target_tokens(b, architecture) for mine in micro for b in mine)  # the whole step's
    loss = torch.tensor([sum(step.backward(model, b, cfg, CPU, tokens=tokens, world=world) for b in micro[rank])])
    torch.distributed.all_reduce(loss)
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
    tied = lambda: len({id(model.get_submodule(m).weight) for m in TIED}) == 1  # noqa: E731
    tied_after_sharding = architecture == "seq2seq" and tied()
    step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(
            {
                "loss": float(loss) / world,
                "grads": grads,
                "tied": (tied_after_sharding, architecture == "seq2seq" and tied()),
                "weights": full,
            },
            out,
        )


def reference_step(path: str, architecture: str, joined: dict) -> tuple[float, dict, dict]:
    """One process, no FSDP: the same rows as one batch, one step."""
    model = step.setup_model(step.load_model(path, architecture), CPU)
    cfg = TrainConfig(architecture=architecture, learning_rate=1e-3, warmup_ratio=0.0)
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=2)
    loss = step.backward(model, joined, cfg, CPU)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    return loss, grads, model.state_dict()


def tied_t5(tiny_models, folder) -> str:
    """The tiny T5 with its head tied to the embeddings too (T5 v1.0's way): four names, one weight;
    without dropout, so that two processes compute the same step."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    config = T5Config.from_pretrained(tiny_models.t5)
    config.tie_word_embeddings, config.dropout_rate = True, 0.0
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models.t5).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("architecture", ["seq2seq", "causal"])
def test_two_fsdp_ranks_accumulating_equal_one_batch(architecture, tiny_models, tmp_path):
    """seq2seq: the tied T5, two micro-batches a rank; causal: the LLaMA with activation
    checkpointing, two micro-batches a rank. Four rows either way, against one batch of the four."""
    if architecture == "seq2seq":
        path, collate = tied_t5(tiny_models, tmp_path / "t5"), batches.collate_seq2seq
        tokens = seq2seq_rows(path)
    else:
        path, collate = str(tiny_models.llama), batches.collate_causal
        tokens = causal_rows(path)
    collate_rows = lambda rows: micro_batches(tokens, lambda b: collate(b, pad_id=0), rows)  # noqa: E731
    micro = [[collate_rows([0]), collate_rows([1])], [collate_rows([2]), collate_rows([3])]]
    out = str(tmp_path / "rank0.pt")
    run_ranks(_rank, 2, str(tmp_path / "rendezvous"), path, architecture, architecture == "causal", micro, out)
    got = torch.load(out)
    loss, grads, weights = reference_step(path, architecture, collate_rows([0, 1, 2, 3]))
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(got["grads"]) == set(grads)
    for name, grad in grads.items():  # float32 sums in another order: equal to a millionth of their size
        error = float((got["grads"][name] - grad).norm() / grad.norm().clamp(min=1e-12))
        assert error < 1e-5, (name, error)
    if architecture == "seq2seq":
        assert got["tied"] == (True, True)  # after sharding, and after the step
        for name in TIED:  # one weight under four names, updated once, as one process updates it
            assert torch.equal(got["weights"][f"{name}.weight"], got["weights"]["shared.weight"]), name
        assert torch.allclose(got["weights"]["shared.weight"], weights["shared.weight"], atol=1e-6)
        assert not torch.equal(got["weights"]["shared.weight"], step.load_model(path, architecture).shared.weight)


def test_the_export_is_in_the_dtype_its_config_names(tiny_models, tmp_path):
    """A GPU run exports bf16 weights: config.json said float32, so `dtype="auto"` loaders upcast them."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from lion_distill.train import lora
    from lion_distill.train.checkpoint import export_hf

    path = str(tiny_models.llama)
    full = step.setup_model(step.load_model(path, "causal"), CPU)
    adapted = get_peft_model(step.load_model(path, "causal"), LoraConfig(r=2, target_modules=["q_proj"]))
    for model, out in ((full, tmp_path / "full"), (adapted, tmp_path / "merged")):
        (lora.export if lora.is_lora(model) else export_hf)(model, path, str(out), dtype=torch.bfloat16)
        assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16", out
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert {p.dtype for p in full.parameters()} == {torch.float32}  # training goes on in fp32 master weights


def test_a_resume_with_another_world_size_is_refused_in_one_line(tmp_path):
    from lion_distill.train.resume import ResumeRefused, refuse_changed_schedule, schedule_of

    storage, cfg = str(tmp_path / "ray_train"), TrainConfig(batch_size=4)
    refuse_changed_schedule(storage, "sft", schedule_of(cfg, 2, 16))
    refuse_changed_schedule(storage, "sft", schedule_of(cfg, 1, 16))  # no checkpoint yet: nothing to resume
    (tmp_path / "ray_train" / "sft" / "checkpoint_2026-12-08_10-00-00.000000").mkdir()  # Ray Train's name for one
    refuse_changed_schedule(storage, "sft", schedule_of(cfg, 1, 16))  # the same settings resume
    with pytest.raises(ResumeRefused) as refused:
        refuse_changed_schedule(storage, "sft", schedule_of(cfg.model_copy(update={"batch_size": 8}), 2, 16))
    line = str(refused.value)
    assert "\n" not in line and "train.num_workers 1 -> 2" in line and "train.batch_size 4 -> 8" in line
    assert "delete that folder" in line and str(tmp_path / "ray_train" / "sft") in line
