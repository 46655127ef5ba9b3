"""Learning itself, on the real small model: imitation of the teacher's answers (SmolLM2-135M-
Instruct's, data/smol/teacher_answers.jsonl) through the project's training path (Ray Data
tokenisation, the train loop, the export) must bring the layer-dropped student much closer to
the teacher on answers it was not trained on, measured as the evaluation measures it
(lion_distill.evaluate.nll). LION_TEST_CORRUPT=shift (labels shifted by one token) or =shuffle
(answers paired with the wrong instructions) breaks the training on purpose: what that does
to the figures is recorded in benchmarks/RESULTS.md.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lion_distill.config.models import TrainConfig
from lion_distill.evaluate.nll import mean_nll
from lion_distill.smol import kept_layers, resolve_smol
from lion_distill.train import batches

REPO = Path(__file__).resolve().parents[1]
ANSWERS = REPO / "data" / "smol" / "teacher_answers.jsonl"
TRAIN = 24  # of the 64 answers; the last 16 are held out
HELD_OUT = 16
CORRUPT = os.environ.get("LION_TEST_CORRUPT", "")  # "", "shift" or "shuffle": a deliberate break, run by hand


def test_kept_layers_are_the_first_and_the_last():
    assert kept_layers(30, 6) == [0, 1, 2, 27, 28, 29]
    assert kept_layers(30, 5) == [0, 1, 2, 28, 29]
    with pytest.raises(ValueError, match="between 2 and 30"):
        kept_layers(30, 31)


@pytest.mark.parametrize(
    "name, match",
    [
        ("smol://teacher", "unknown model"),
        ("smol://student?layers=six", "whole number"),
        ("smol://student?depth=6", "unknown model"),
    ],
)
def test_bad_smol_names_fail_naming_the_field(name, match):
    with pytest.raises(ValueError, match=f"teacher.model: .*{match}"):
        resolve_smol(name, "teacher.model")


def test_smol_folders_load_as_ordinary_checkpoints(smol_models):
    teacher = json.loads((smol_models.instruct / "config.json").read_text())
    student = json.loads((smol_models.student / "config.json").read_text())
    assert "quantization_config" not in teacher and teacher["head_dim"] == 64  # vLLM's CPU attention needs >= 64
    assert (teacher["num_hidden_layers"], student["num_hidden_layers"]) == (30, 6)
    tok = batches.load_tokenizer(str(smol_models.student))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"


TOKENIZE_CAUSAL = batches.tokenize_causal


def shifted_labels(batch: dict, **kwargs) -> dict:
    """LION_TEST_CORRUPT=shift: every answer token's label moved one position later (the
    model learns to predict the token it already sees), the bug an off-by-one mask makes."""
    out = TOKENIZE_CAUSAL(batch, **kwargs)
    out["labels"] = [np.concatenate([[batches.IGNORE], labels[:-1]]) for labels in out["labels"]]
    return out


def test_imitation_closes_most_of_the_gap_on_held_out_answers(ray_cluster, smol_models, tmp_path, monkeypatch):
    import ray.data

    from lion_distill.train import train_causal_sft

    rows = [json.loads(line) for line in ANSWERS.read_text().splitlines()]
    train, held = rows[:TRAIN], rows[-HELD_OUT:]
    if CORRUPT == "shuffle":  # each answer paired with another instruction
        train = [
            {**r, "response": o["response"], "complete": o["complete"]} for r, o in zip(train, train[1:] + train[:1])
        ]
    if CORRUPT == "shift":
        monkeypatch.setattr("lion_distill.train.batches.tokenize_causal", shifted_labels)
    student = str(smol_models.student)
    before = mean_nll(student, held, "alpaca")
    floor = mean_nll(str(smol_models.instruct), held, "chat")["nll"]
    cfg = TrainConfig(num_workers=0, epochs=3, batch_size=8, learning_rate=1e-3, max_length=320, warmup_ratio=0.0)
    result = train_causal_sft(
        cfg, student, ray.data.from_items(train), str(tmp_path / "student"), name="smol-imitation"
    )
    after = mean_nll(result.model_dir, held, "alpaca")
    # The same answers after other instructions: what the student takes from the instruction.
    rotated = [{**r, "response": o["response"], "complete": o["complete"]} for r, o in zip(held, held[1:] + held[:1])]
    mismatched = mean_nll(result.model_dir, rotated, "alpaca")["nll"]
    print(
        f"held-out NLL: before {before['nll']:.3f}, after {after['nll']:.3f}, teacher {floor:.3f} "
        f"({after['tokens']} tokens, corrupt={CORRUPT or 'none'}); after other instructions {mismatched:.3f}"
    )
    assert before["answers"] == after["answers"] == HELD_OUT
    # Measured (benchmarks/RESULTS.md): 11.23 -> 7.05 against the teacher's 0.51, 39% of the gap closed;
    # with the labels shifted by one token, 8.49 (26%): it fails. Answers shuffled across instructions still
    # pass (7.24, 37%): this student takes too little from the instruction to tell. At lr 2e-4 correct and
    # shifted were 33% and 30%: too close to tell apart.
    closed = (before["nll"] - after["nll"]) / (before["nll"] - floor)
    assert closed >= 0.33, f"imitation closed {closed:.0%} of the NLL gap to the teacher"
