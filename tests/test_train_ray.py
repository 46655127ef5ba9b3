"""lion_distill.train under Ray Train: T5 multi-task in the driver (num_workers=0), validation
inside one T5 run keeping the best export, and the one real 2-worker FSDP2 run: LLaMA SFT
that resumes, exports, and loads in transformers and vLLM."""

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from lion_distill.config.models import TrainConfig
from lion_distill.step_by_step import predict_labels
from lion_distill.step_by_step.data import parse_rows, with_released_replies
from lion_distill.step_by_step.readers import REPO_DATA, read_examples
from lion_distill.step_by_step.tasks import TASKS
from lion_distill.train import Validation, train_causal_sft, train_seq2seq_multitask

pytestmark = pytest.mark.ray


def test_t5_multitask_and_standard_train_and_predict_labels(ray_cluster, tiny_models, tmp_path):
    replies = with_released_replies(read_examples("cqa", "train"), REPO_DATA, "cqa", "train")
    # Includes the one completion whose label does not parse: its rationale is kept, with the gold label.
    rows = parse_rows(replies, TASKS["cqa"])[0][:24]
    ds = ray.data.from_items([{k: r[k] for k in ("input", "label", "rationale")} for r in rows])
    cfg = TrainConfig(
        architecture="seq2seq",
        num_workers=0,
        batch_size=8,
        epochs=3,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_length=128,
        rationale_weight=0.5,
        gradient_accumulation_steps=2,
    )
    multi = train_seq2seq_multitask(cfg, str(tiny_models.t5), ds, str(tmp_path / "multitask"), name="sbs-multi")
    rec = multi.record
    assert rec.failed_rows == 0 and rec.rows == 3 * 24  # 24 usable examples, 3 epochs
    assert (
        rec.extra["steps"] == 6 and rec.extra["train_loss_last"] < rec.extra["train_loss_first"]
    )  # 3 micro-batches/epoch: 2 + 1
    # The export is what predict_labels reads: its greedy labels are the model's, row for row
    # (what they must be, labels and not rationales, is tested in test_train_step.py).
    inputs = [r["input"] for r in rows[:4]]
    predictions = predict_labels(multi.model_dir, inputs, max_new_tokens=8)
    assert predictions == predict_labels(multi.model_dir, inputs[::-1], max_new_tokens=8)[::-1]

    standard_cfg = cfg.model_copy(update={"epochs": 1, "activation_checkpointing": True})
    standard = train_seq2seq_multitask(
        standard_cfg,
        str(tiny_models.t5),
        ds.drop_columns(["rationale"]),
        str(tmp_path / "standard"),
        name="sbs-standard",
        task="standard",
    )
    assert standard.record.failed_rows == 0 and standard.record.rows == 24
    with pytest.raises(ValueError, match="rationale"):
        train_seq2seq_multitask(
            cfg, str(tiny_models.t5), ds.drop_columns(["rationale"]), str(tmp_path / "x"), name="bad"
        )


class ScriptedScore:
    """Validation scores in call order, and a digest of each candidate export it was asked to
    score: which export the loop keeps is then known exactly (a real accuracy of a tiny random
    T5 is 0 at every validation, so it cannot tell the best export from the last)."""

    def __init__(self, scores: list[float], log_dir: str):
        self.scores, self.log_dir = scores, log_dir

    def __call__(self, model_dir: str) -> float:
        k = len(os.listdir(self.log_dir))
        with open(os.path.join(self.log_dir, str(k)), "w") as f:
            f.write(digest(model_dir))
        return self.scores[k]


def digest(model_dir) -> str:
    import hashlib

    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


def test_validation_inside_one_run_keeps_the_best_export(ray_cluster, tiny_models, tmp_path):
    """One Ray Train run: the optimizer and the cosine schedule run on across validations
    (AdamW's own step count is the global step at each), and the export kept is the one
    that scored best, not the last."""
    rows = ray.data.from_items([{"input": f"question {i}", "label": f"answer {i % 3}"} for i in range(16)])
    cfg = TrainConfig(
        architecture="seq2seq",
        num_workers=1,
        batch_size=4,
        epochs=3,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        max_length=32,
    )
    scripted = tmp_path / "scored"
    scripted.mkdir()
    validation = Validation(count=3, score=ScriptedScore([0.25, 0.75, 0.5], str(scripted)))
    result = train_seq2seq_multitask(
        cfg, str(tiny_models.t5), rows, str(tmp_path / "best"), name="sbs-valid", task="standard", validation=validation
    )
    seen = result.validations
    assert [v["step"] for v in seen] == [4, 8, 12] and result.record.extra["steps"] == 12  # 4 steps an epoch
    assert [v["optimizer_steps"] for v in seen] == [4, 8, 12]  # AdamW's state was never reset
    # one cosine schedule over all 12 steps (no warmup), not one per validation
    assert [v["lr"] for v in seen] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in (4, 8, 12)])
    assert [v["score"] for v in seen] == [0.25, 0.75, 0.5] and result.best_step == 8
    assert digest(result.model_dir) == (scripted / "1").read_text() != (scripted / "2").read_text()
    assert sorted(os.listdir(scripted)) == ["0", "1", "2"]


def test_the_row_index_numbers_the_materialized_rows_block_by_block(ray_cluster):
    from lion_distill.train import batches
    from lion_distill.train.loop import _indexed, _with_row_index

    items = [{"x": i, "ids": np.arange(i % 3 + 1) + i} for i in range(20)]
    ds = ray.data.from_items(items, override_num_blocks=5).limit(17).materialize()
    indexed = _indexed(ds)
    assert indexed.num_blocks() == ds.num_blocks() > 1
    rows, before = indexed.take_all(), ds.take_all()  # the test may collect; the trainer does not
    assert [r[batches.ROW] for r in rows] == list(range(17))
    assert [(r["x"], list(r["ids"])) for r in rows] == [(r["x"], list(r["ids"])) for r in before]
    # A bundle may hold a slice of a block (RefBundle.slices): only the slice's rows are numbered.
    sliced = ray.get(_with_row_index.remote(ray.put(pa.table({"x": [0, 1, 2, 3]})), 1, 3, 10))
    assert sliced.column("x").to_pylist() == [1, 2] and sliced.column(batches.ROW).to_pylist() == [10, 11]


def _slow_first_block(batch: dict, pause_s: float) -> dict:
    """A tokeniser stand-in: the block holding row 0 finishes last; row 5 has no target."""
    if 0 in batch["x"]:
        time.sleep(pause_s)
    return {**batch, "n_target_tokens": np.where(batch["x"] == 5, 0, 1)}


def test_the_usable_rows_are_numbered_in_the_rows_order_whichever_block_finishes_first(ray_cluster):
    from lion_distill.train import batches
    from lion_distill.train.loop import _usable_rows

    rows = ray.data.from_items([{"x": i} for i in range(12)], override_num_blocks=6)
    usable, n_in = _usable_rows(rows, _slow_first_block, {"pause_s": 2.0})
    got = sorted((r[batches.ROW], r["x"]) for r in usable.take_all())
    assert n_in == 12 and got == list(enumerate([x for x in range(12) if x != 5]))


def test_workers_stream_their_share_and_the_driver_never_holds_the_token_ids(
    ray_cluster, tiny_models, tmp_path, monkeypatch, caplog
):
    """Two Ray Train workers each train on their rows of epoch_order's shuffle: 15 usable rows of
    distinct lengths, 7 a rank, so the token counts name the one row left out. On the driver the
    rows are never read and the engine puts nothing in the object store. Rank 0's training line
    (train.log_every_steps) is logged on the driver, once a step."""
    from lion_distill.train import batches

    items = [
        {"instruction": "Say " + "the number " * (i + 1), "input": "", "response": "It is " + "one " * (2 * i) + "."}
        for i in range(16)
    ]
    items[3]["response"] = ""  # unusable: dropped before the index is taken
    usable = [r for r in items if r["response"]]
    monkeypatch.setattr(
        ray.data.DataContext.get_current().execution_options, "preserve_order", True
    )  # index = position
    rows = ray.data.from_items(items, override_num_blocks=4)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read the training rows")

    for method in (
        "iter_batches",
        "iter_rows",
        "iter_torch_batches",
        "take",
        "take_all",
        "take_batch",
        "to_pandas",
        "iterator",
        "streaming_split",
    ):
        monkeypatch.setattr(ray.data.Dataset, method, refuse)
    put = ray.put

    def engine_must_not_put(value, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        assert not caller.startswith("lion_distill."), f"{caller} put {type(value).__name__} in the object store"
        return put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", engine_must_not_put)
    cfg = TrainConfig(
        num_workers=2, batch_size=3, epochs=1, learning_rate=1e-3, warmup_ratio=0.0, max_length=128, log_every_steps=1
    )
    lines = _LogLines()
    logging.getLogger("lion_distill.train").addHandler(lines)
    caplog.set_level(logging.INFO, logger="lion_distill.train")
    try:
        result = train_causal_sft(cfg, str(tiny_models.llama), rows, str(tmp_path / "student"), name="sft-share")
    finally:
        logging.getLogger("lion_distill.train").removeHandler(lines)
    monkeypatch.undo()
    steps = [line.split(",")[0] for line in lines.lines if line.startswith("sft-share: step ")]
    assert steps == ["sft-share: step 1/3", "sft-share: step 2/3", "sft-share: step 3/3"], lines.lines
    assert all(" tokens/s, ETA " in line for line in lines.lines if line.startswith("sft-share: step "))

    tokens = batches.tokenize_causal(
        {k: [r[k] for r in usable] for k in ("instruction", "input", "response")},
        tokenizer_path=str(tiny_models.llama),
        max_length=128,
    )
    prompt, target = tokens["n_prompt_tokens"], tokens["n_target_tokens"]
    assert len(set(prompt)) == len(set(target)) == 15
    left_out = batches.epoch_order(15, 1, 0, cfg.seed, 0)[14]  # dealt round-robin, 7 + 7: the permutation's last
    assert (
        sorted(np.concatenate([batches.epoch_order(15, 2, r, cfg.seed, 0) for r in (0, 1)]))
        == sorted(set(range(15)) - {left_out})
        and left_out != 14
    )
    rec = result.record
    assert rec.failed_rows == 1 and rec.rows == 14 and rec.extra["steps"] == 3  # ceil(7 / 3) micro-batches
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        prompt.sum() - prompt[left_out],
        target.sum() - target[left_out],
    )


class _LogLines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True)
        out = llm.generate(["### Instruction:\\nSay the number 3.\\n\\n### Response:\\n"], SamplingParams(max_tokens=8, temperature=0))
        print("RESULT", json.dumps({"tokens": len(out[0].outputs[0].token_ids)}), flush=True)
""")


@pytest.mark.vllm
def test_llama_sft_two_fsdp_workers_resumes_and_exports(ray_cluster, tiny_models, tmp_path):
    rows = ray.data.from_items(
        [
            {
                "instruction": f"Say the number {i}.",
                "input": "" if i % 2 else "digits",
                "response": f"The number is {i}.",
            }
            for i in range(16)
        ]
    )
    cfg = TrainConfig(
        num_workers=2,
        batch_size=4,
        epochs=1,
        learning_rate=2e-3,
        warmup_ratio=0.0,
        max_length=128,
        checkpoint_every_steps=1,
    )
    out = str(tmp_path / "student")
    first = train_causal_sft(cfg, str(tiny_models.llama), rows, out, name="sft")
    assert first.record.extra["steps"] == 2  # 16 rows / 2 workers / batch 4
    # Same name, more epochs: Ray Train hands back the last checkpoint and the step counter goes on from it.
    second = train_causal_sft(cfg.model_copy(update={"epochs": 4}), str(tiny_models.llama), rows, out, name="sft")
    extra = second.record.extra
    assert extra["resumed_from_step"] == 2 and extra["steps"] == 8
    assert 0 < extra["train_step_s"] < second.record.seconds  # MFU's time: the steps, not the checkpoints
    # Another world size would resume each rank at another place in the data, under another schedule.
    with pytest.raises(ValueError, match=r"sft: its checkpoints .* \(train.num_workers 2 -> 1\)"):
        train_causal_sft(cfg.model_copy(update={"num_workers": 1}), str(tiny_models.llama), rows, out, name="sft")
    assert second.record.rows == 3 * 16  # only the three new epochs were trained
    assert extra["train_loss_first"] == first.record.extra["train_loss_first"]
    assert extra["train_loss_last"] < extra["train_loss_first"] - 1.0
    assert extra["samples_per_s"] > 0 and extra["tokens_per_s"] > 0

    # The export carries the training: on the training rows it has a far lower loss than the base model.
    from lion_distill.train import batches, step

    tokens = batches.tokenize_causal(
        {
            "instruction": [f"Say the number {i}." for i in range(4)],
            "input": [""] * 4,
            "response": [f"The number is {i}." for i in range(4)],
        },
        tokenizer_path=second.model_dir,
        max_length=128,
    )
    batch = batches.collate_causal(tokens, pad_id=0)
    with torch.no_grad():
        base, trained = (
            step.causal_lm_loss(step.load_model(path, "causal").eval(), batch).item()
            for path in (str(tiny_models.llama), second.model_dir)
        )
    assert trained < base - 1.0

    script = tmp_path / "vllm_load.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), second.model_dir],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))  # vLLM logs to stdout too
    assert json.loads(result.removeprefix("RESULT "))["tokens"] > 0


def test_a_checkpoint_made_under_other_settings_is_not_resumed_from(ray_cluster, tiny_models, tmp_path):
    """A resumed training goes on from its checkpoint only under the settings that made it (a longer
    one goes on: the test above); a changed learning rate starts over, its old checkpoint not loaded.
    One Ray Train worker: the driver's local mode (num_workers=0) keeps no checkpoint to resume from."""
    rows = ray.data.from_items([{"instruction": f"Say {i}.", "input": "", "response": f"It is {i}."} for i in range(8)])
    cfg = TrainConfig(num_workers=1, batch_size=4, epochs=1, learning_rate=1e-3, warmup_ratio=0.0, max_length=64)
    out = str(tmp_path / "student")
    first = train_causal_sft(cfg, str(tiny_models.llama), rows, out, name="settings")
    assert first.record.extra["steps"] == 2
    other = cfg.model_copy(update={"epochs": 2, "learning_rate": 5e-4})
    changed = train_causal_sft(other, str(tiny_models.llama), rows, out, name="settings")
    assert changed.record.extra["resumed_from_step"] == 0 and changed.record.rows == 2 * 8
