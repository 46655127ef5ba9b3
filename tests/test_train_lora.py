"""LoRA students (lion_distill.train.lora): the settings and the missing-library line in milliseconds, and one
real 2-worker FSDP2 run of the tiny LLaMA with a LoRA adapter that resumes from its adapter checkpoint,
exports merged (and the adapter alone), and generates through vLLM. QLoRA students (a 4-bit base,
bitsandbytes' CPU backend) in this process and on two gloo ranks (torch.multiprocessing, no Ray)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError
from safetensors.torch import load_file

from lion_distill.config.models import LoraConfig, TrainConfig
from lion_distill.preflight import lora_problems, preflight
from lion_distill.train.lora import ADAPTER_DIR, peft_config
from tests.fixtures.gloo_ranks import run_ranks

VLLM_LORA_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    if __name__ == "__main__":
        merged_dir, base_dir, adapter_dir = sys.argv[1:4]
        prompt, greedy = ["### Instruction:\\nSay the number 3.\\n\\n### Response:\\n"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        tokens = lambda out: list(out[0].outputs[0].token_ids)
        merged = tokens(LLM(model=merged_dir, dtype="float32", max_model_len=256, enforce_eager=True).generate(prompt, greedy))
        llm = LLM(model=base_dir, dtype="float32", max_model_len=256, enforce_eager=True, enable_lora=True, max_lora_rank=8)
        adapter = tokens(llm.generate(prompt, greedy, lora_request=LoRARequest("student", 1, adapter_dir)))
        base = tokens(llm.generate(prompt, greedy))
        print("RESULT", json.dumps({"merged": merged, "adapter": adapter, "base": base}), flush=True)
""")


def test_lora_settings_reach_peft_and_a_missing_library_is_one_preflight_line(tmp_path, monkeypatch):
    from lion_distill.config import load_config

    settings = LoraConfig(r=4, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"])
    peft = peft_config(settings, "causal")
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, sorted(peft.target_modules)) == (
        4,
        16,
        0.1,
        ["q_proj", "v_proj"],
    )
    assert peft.task_type == "CAUSAL_LM" and peft_config(settings, "seq2seq").task_type == "SEQ_2_SEQ_LM"
    with pytest.raises(ValidationError, match="target_modules"):
        TrainConfig(lora={"target_modules": "all"})
    qlora = TrainConfig(lora={"load_in_4bit": True})  # on CPU too (gpus_per_worker 0): bitsandbytes' CPU backend
    assert lora_problems("train", qlora) == []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )
    line = "train.lora.load_in_4bit: bitsandbytes is not installed (pip install 'lion-distill[lora]')"
    assert lora_problems("train", qlora) == [line] and lora_problems("train", TrainConfig(lora={})) == []
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\ndata: {{pool_files: [{tmp_path / 'none.jsonl'}]}}\n"
        + "".join(
            f"{r}: {{backend: vllm, model: {tmp_path}}}\n" for r in ("teacher", "student", "referee", "generator")
        )
        + "train: {lora: {load_in_4bit: true}}\n"
    )
    assert line in preflight(load_config(cfg, [])).problems


def test_lora_steps_checkpoint_and_merged_export_in_process(tiny_models, tmp_path):
    """The same code the Ray Train workers run, in this process (no process group): the optimizer
    holds the adapter only, the loss falls, a checkpoint holds the adapter and restores it, and the
    merged export changes only the adapted weights."""
    from lion_distill.train import lora, step

    path = str(tiny_models.llama)
    cfg = TrainConfig(
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj"], "save_adapter": True},
        learning_rate=5e-2,
        warmup_ratio=0.0,
    )
    student = lambda: step.load_sharded(path, "causal", torch.device("cpu"), adapt=lora.adapter(cfg.lora, "causal"))  # noqa: E731
    torch.manual_seed(cfg.seed)  # as a Ray Train worker does: the adapter's initialisation, not what ran before
    model = student()
    _adapter_trains_and_its_checkpoint_restores(
        model, student, cfg, _numbers_batch(path, range(4)), tmp_path, trainable=2 * 2
    )  # lora_A and lora_B of two layers' q_proj

    lora.export(model, path, str(tmp_path / "export"), save_adapter=True)
    base, merged = (load_file(str(p / "model.safetensors")) for p in (tiny_models.llama, tmp_path / "export"))
    assert sorted(k for k in base if not torch.equal(base[k], merged[k])) == [
        f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)
    ]
    adapter = load_file(str(tmp_path / "export" / ADAPTER_DIR / "adapter_model.safetensors"))
    assert len(adapter) == 4 and all("lora_" in k for k in adapter)
    assert not model.config.use_cache  # the export's settings stayed out of the training model


def _checkpoint_keys(run_dir: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    folders = sorted(p for p in run_dir.glob("ray_train/lora-sft/checkpoint_*") if p.is_dir())
    assert folders, list(run_dir.rglob("*"))[:20]
    return list(FileSystemReader(str(folders[-1])).read_metadata().state_dict_metadata)


@pytest.mark.vllm
def test_lora_student_two_fsdp_workers_resumes_merges_and_serves(ray_cluster, tiny_models, tmp_path):
    import ray

    from lion_distill.train import batches, step, train_causal_sft

    rows = ray.data.from_items(
        [{"instruction": f"Say the number {i}.", "input": "", "response": f"The number is {i}."} for i in range(16)]
    )
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "save_adapter": True}
    cfg = TrainConfig(
        num_workers=2,
        batch_size=4,
        epochs=1,
        learning_rate=3e-2,
        warmup_ratio=0.0,
        max_length=128,
        checkpoint_every_steps=1,
        lora=lora,
    )
    out = str(tmp_path / "student")
    first = train_causal_sft(cfg, str(tiny_models.llama), rows, out, name="lora-sft")
    assert first.record.extra["steps"] == 2
    # The checkpoint holds the adapter and its optimizer state, not the frozen base.
    keys = _checkpoint_keys(tmp_path)
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all("lora_" in k for k in model_keys), model_keys
    assert all("lora_" in k for k in keys if k.startswith("optim.state."))

    second = train_causal_sft(cfg.model_copy(update={"epochs": 4}), str(tiny_models.llama), rows, out, name="lora-sft")
    extra = second.record.extra
    assert extra["resumed_from_step"] == 2 and extra["steps"] == 8 and second.record.rows == 3 * 16
    assert extra["train_loss_first"] == first.record.extra["train_loss_first"]
    assert extra["train_loss_last"] < extra["train_loss_first"] - 0.3

    # Only what the adapter touches changed: the merged q/v projections, nothing else.
    base = load_file(str(tiny_models.llama / "model.safetensors"))
    merged = load_file(os.path.join(second.model_dir, "model.safetensors"))
    assert set(merged) == set(base)
    changed = sorted(k for k in base if not torch.equal(base[k], merged[k]))
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    assert len(changed) == 2 * 2  # two layers, q and v

    # The adapter alone, on the base model, is the merged model (transformers + PEFT).
    from peft import PeftModel

    adapter_dir = os.path.join(second.model_dir, ADAPTER_DIR)
    assert json.loads(Path(adapter_dir, "adapter_config.json").read_text())["r"] == 8
    tokens = batches.tokenize_causal(
        {"instruction": ["Say the number 3."], "input": [""], "response": ["The number is 3."]},
        tokenizer_path=second.model_dir,
        max_length=128,
    )
    batch = batches.collate_causal(tokens, pad_id=0)
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(step.load_model(str(tiny_models.llama), "causal"), adapter_dir).eval()
        merged_model = step.load_model(second.model_dir, "causal").eval()
        logits = [m(input_ids=batch["input_ids"]).logits for m in (with_adapter, merged_model)]
        base_loss, trained_loss = (
            step.causal_lm_loss(m, batch).item()
            for m in (step.load_model(str(tiny_models.llama), "causal").eval(), merged_model)
        )
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    assert trained_loss < base_loss - 0.3

    # vLLM serves the merged export, and the base model with the adapter (enable_lora): the same greedy tokens.
    script = tmp_path / "vllm_lora.py"
    script.write_text(VLLM_LORA_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), second.model_dir, str(tiny_models.llama), adapter_dir],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT ")
    )
    assert len(result["merged"]) == 8 and result["adapter"] == result["merged"] != result["base"]


def constant_score(model_dir: str) -> float:
    return 0.5


def test_t5_lora_student_in_the_driver_with_validation(ray_cluster, tiny_models, tmp_path):
    """Step-by-step's seq2seq student with LoRA (PEFT's T5 default: q and v), the loop in the driver,
    the validation's export merged too."""
    import ray

    from lion_distill.train import Validation, train_seq2seq_multitask

    rows = ray.data.from_items([{"input": f"question {i}", "label": f"answer {i % 3}"} for i in range(16)])
    cfg = TrainConfig(
        architecture="seq2seq",
        num_workers=0,
        batch_size=4,
        epochs=3,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_length=32,
        lora={"r": 4},
    )
    result = train_seq2seq_multitask(
        cfg,
        str(tiny_models.t5),
        rows,
        str(tmp_path / "t5"),
        name="t5-lora",
        task="standard",
        validation=Validation(count=2, score=constant_score),
    )
    assert [v["step"] for v in result.validations] == [6, 12] and result.best_step == 6
    assert result.record.extra["train_loss_last"] < result.record.extra["train_loss_first"]
    base = load_file(str(tiny_models.t5 / "model.safetensors"))
    merged = load_file(os.path.join(result.model_dir, "model.safetensors"))
    changed = sorted(k for k in base if k in merged and not torch.equal(base[k], merged[k]))
    assert changed and all(k.endswith(("q.weight", "v.weight")) for k in changed), changed
    assert not os.path.exists(os.path.join(result.model_dir, ADAPTER_DIR))  # save_adapter is off


QLORA = TrainConfig(
    lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "load_in_4bit": True, "save_adapter": True},
    learning_rate=5e-2,
    warmup_ratio=0.0,
)


def _qlora_student(path: str):
    from lion_distill.train import lora, step

    cpu = torch.device("cpu")
    return step.load_sharded(
        path, "causal", cpu, adapt=lora.adapter(QLORA.lora, "causal"), quantization=lora.quantization(QLORA.lora, cpu)
    )


def _numbers_batch(path: str, numbers) -> dict:
    from lion_distill.train import batches

    tokens = batches.tokenize_causal(
        {
            "instruction": [f"Say {i}." for i in numbers],
            "input": [""] * len(numbers),
            "response": [f"The number is {i}." for i in numbers],
        },
        tokenizer_path=path,
        max_length=64,
    )
    return batches.collate_causal(tokens, pad_id=0)


def _adapter(model) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole (a sharded one gathered: a collective under a process group)."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _adapter_trains_and_its_checkpoint_restores(
    model, student, cfg: TrainConfig, batch: dict, tmp_path: Path, *, trainable: int
) -> dict[str, torch.Tensor]:
    """What every adapter must do in one process: AdamW holds its `trainable` parameters only, ten
    steps lower the loss, a checkpoint holds the adapter and its optimizer state alone (no frozen
    weight, no 4-bit quantisation state), and restores them into a `student()` built afresh. Returns
    the trained adapter."""
    from torch.distributed.checkpoint import FileSystemReader

    from lion_distill.train import lora, step
    from lion_distill.train.checkpoint import load_checkpoint, save_checkpoint

    optimizer, scheduler = step.build_optimizer(model, cfg, 10)
    params = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == params and len(params) == trainable
    losses = []
    for _ in range(10):
        losses.append(step.backward(model, batch, cfg, torch.device("cpu")))
        step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    assert losses[-1] < losses[0] - 0.5, losses

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model, optimizer, scheduler, {"step": 10}, lora.checkpoint_options(model))
    keys = list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    assert sorted(k for k in keys if k.startswith("model.")) == sorted(
        "model." + k for k, p in model.named_parameters() if p.requires_grad
    )
    assert all("lora_" in k for k in keys if k.startswith("optim.state."))
    trained = _adapter(model)
    fresh = student()
    fresh_optimizer, fresh_scheduler = step.build_optimizer(fresh, cfg, 10)
    assert (
        load_checkpoint(folder, fresh, fresh_optimizer, fresh_scheduler, lora.checkpoint_options(fresh))["step"] == 10
    )
    assert all(torch.equal(_adapter(fresh)[k], v) for k, v in trained.items())
    assert fresh_scheduler.last_epoch == scheduler.last_epoch
    return trained


def _assert_merged(export: Path, base_dir: Path, adapter: dict[str, torch.Tensor], scaling: float) -> None:
    """The export loads with transformers, at full precision and unquantised: each adapted projection
    is the base's weight + B @ A * scaling (LoRA's delta), every other weight is the base's."""
    from transformers import AutoModelForCausalLM

    assert "quantization_config" not in json.loads((export / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).state_dict()
    base = load_file(str(base_dir / "model.safetensors"))
    delta = {
        name.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight": adapter[
            name.replace("lora_A", "lora_B")
        ]
        @ a
        * scaling
        for name, a in adapter.items()
        if ".lora_A." in name
    }
    assert set(merged) == set(base) and sorted(delta) == [
        f"model.layers.{i}.self_attn.{m}_proj.weight" for i in range(2) for m in "qv"
    ]
    for name, weight in base.items():
        if name in delta:
            assert delta[name].abs().max() > 1e-3, name  # the adapter trained
            torch.testing.assert_close(merged[name], weight + delta[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(merged[name], weight), name


def test_qlora_4bit_base_steps_checkpoint_and_full_precision_merge_in_process(tiny_models, tmp_path):
    """QLoRA on bitsandbytes' CPU backend, the workers' code in this process: the base's linear
    layers are 4-bit NF4, AdamW holds the adapter only, the loss falls, a checkpoint holds the
    adapter alone and restores it, and the export is the adapter merged into the full-precision base."""
    from bitsandbytes.nn import Linear4bit, Params4bit

    from lion_distill.train import lora, step

    path = str(tiny_models.llama)
    # As a Ray Train worker does: at lr 5e-2 some initialisations overshoot, and the global RNG's
    # state after the tests before is not the same from run to run.
    torch.manual_seed(QLORA.seed)
    model = _qlora_student(path)
    layers = model.get_base_model().model.layers
    linears = [m for m in layers.modules() if isinstance(m, torch.nn.Linear)]  # Linear4bit is one, and PEFT's too
    assert sum(isinstance(m, Linear4bit) for m in linears) == 2 * 7  # q k v o gate up down, two layers
    assert all(isinstance(layer.self_attn.q_proj.base_layer.weight, Params4bit) for layer in layers)
    assert layers[0].self_attn.q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    base_params = sum(t.numel() for t in load_file(str(tiny_models.llama / "model.safetensors")).values())
    assert step.parameter_count(model) == base_params + 2 * 2 * 4 * (128 + 128)  # unpacked, plus the adapter

    trained = _adapter_trains_and_its_checkpoint_restores(
        model, lambda: _qlora_student(path), QLORA, _numbers_batch(path, range(4)), tmp_path, trainable=2 * 2 * 2
    )  # lora_A and lora_B of q and v, two layers

    lora.export(model, path, str(tmp_path / "export"), save_adapter=True)
    _assert_merged(tmp_path / "export", tiny_models.llama, trained, scaling=8 / 4)
    assert len(load_file(str(tmp_path / "export" / ADAPTER_DIR / "adapter_model.safetensors"))) == 8


def _qlora_rank(rank: int, world: int, path: str, out: str) -> None:
    from bitsandbytes.nn import Params4bit
    from torch.distributed.tensor import DTensor

    from lion_distill.train import lora, step
    from lion_distill.train.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(QLORA.seed)  # as every Ray Train worker does: one adapter initialisation on all ranks
    model = _qlora_student(path)
    quantised = step.quantised_parameters(model)
    layout = {
        "4-bit, whole": all(type(p) is Params4bit for p in quantised) and len(quantised) == 2 * 7,
        "the rest sharded": all(isinstance(p, DTensor) for p in model.parameters() if p not in quantised),
    }
    optimizer, scheduler = step.build_optimizer(model, QLORA, 2)
    batch = _numbers_batch(path, range(4 * rank, 4 * rank + 4))  # each rank its own rows
    tokens = step.target_tokens(batch, "causal")
    dist.all_reduce(tokens)  # the loop's normaliser: the answer tokens on all ranks
    grads = []
    for _ in range(2):
        step.backward(model, batch, QLORA, torch.device("cpu"), tokens=tokens, world=world)
        grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad})
        step.optimizer_step(model, optimizer, scheduler, QLORA.max_grad_norm)
    adapter = _adapter(model)
    save_checkpoint(f"{out}/checkpoint", model, optimizer, scheduler, {"step": 2}, lora.checkpoint_options(model))
    torch.manual_seed(rank + 1)  # a fresh adapter, other than the trained one
    fresh = _qlora_student(path)
    fresh_optimizer, fresh_scheduler = step.build_optimizer(fresh, QLORA, 2)
    load_checkpoint(f"{out}/checkpoint", fresh, fresh_optimizer, fresh_scheduler, lora.checkpoint_options(fresh))
    restored = all(torch.equal(v, adapter[k]) for k, v in _adapter(fresh).items())
    lora.export(model, path, f"{out}/export")
    torch.save({"layout": layout, "grads": grads, "adapter": adapter, "restored": restored}, f"{out}/rank{rank}.pt")


def test_qlora_two_fsdp_ranks_keep_the_4bit_base_whole_and_sync_the_adapter(tiny_models, tmp_path):
    """Two gloo ranks (FSDP2) on different rows: the 4-bit weights stay plain Params4bit on each rank
    (ignored by FSDP2), the rest is sharded, the adapter's gradients are those of both ranks' rows
    together (a single process on all eight rows gives the same), the ranks hold one adapter, the
    checkpoint restores it, and the merged export is written."""
    from lion_distill.train import step

    path = str(tiny_models.llama)
    run_ranks(_qlora_rank, 2, str(tmp_path / "rendezvous"), path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(all(r["layout"].values()) and r["restored"] for r in ranks), [
        (r["layout"], r["restored"]) for r in ranks
    ]
    assert all(torch.equal(ranks[0]["adapter"][k], ranks[1]["adapter"][k]) for k in ranks[0]["adapter"])

    torch.manual_seed(QLORA.seed)
    model = _qlora_student(path)
    optimizer, scheduler = step.build_optimizer(model, QLORA, 2)
    batch = _numbers_batch(path, range(8))
    for k in range(2):
        step.backward(model, batch, QLORA, torch.device("cpu"))
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(ranks[0]["grads"][k][name], p.grad, rtol=1e-4, atol=1e-6)
        step.optimizer_step(model, optimizer, scheduler, QLORA.max_grad_norm)
    _assert_merged(tmp_path / "export", tiny_models.llama, ranks[0]["adapter"], scaling=8 / 4)
