"""LoRA students (engine.train.lora): the config's refusals in milliseconds, and one real 2-worker
FSDP2 run of the tiny LLaMA with a LoRA adapter that resumes from its adapter checkpoint, exports
merged (and the adapter alone), and generates through vLLM."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from engine.config.models import LoraConfig, TrainConfig
from engine.train.lora import ADAPTER_DIR, peft_config



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


def test_lora_settings_reach_peft_and_qlora_is_refused_without_gpus():
    settings = LoraConfig(r=4, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"])
    peft = peft_config(settings, "causal")
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, sorted(peft.target_modules)) == (4, 16, 0.1, ["q_proj", "v_proj"])
    assert peft.task_type == "CAUSAL_LM" and peft_config(settings, "seq2seq").task_type == "SEQ_2_SEQ_LM"
    with pytest.raises(ValidationError, match="load_in_4bit: QLoRA .* train.gpus_per_worker is 0"):
        TrainConfig(lora={"load_in_4bit": True})
    with pytest.raises(ValidationError, match="QLoRA training is not built yet"):
        TrainConfig(lora={"load_in_4bit": True}, gpus_per_worker=1)
    with pytest.raises(ValidationError, match="target_modules"):
        TrainConfig(lora={"target_modules": "all"})


def test_lora_steps_checkpoint_and_merged_export_in_process(tiny_models, tmp_path):
    """The same code the Ray Train workers run, in this process (no process group): the optimizer
    holds the adapter only, the loss falls, a checkpoint holds the adapter and restores it, and the
    merged export changes only the adapted weights."""
    from torch.distributed.checkpoint import FileSystemReader

    from engine.train import batches as B
    from engine.train import lora
    from engine.train import step as S
    from engine.train.checkpoint import load_checkpoint, save_checkpoint

    path = str(tiny_models.llama)
    cfg = TrainConfig(lora={"r": 4, "alpha": 8, "target_modules": ["q_proj"], "save_adapter": True},
                      learning_rate=5e-2, warmup_ratio=0.0)
    model = S.load_sharded(path, "causal", torch.device("cpu"), adapt=lora.adapter(cfg.lora, "causal"))
    optimizer, scheduler = S.build_optimizer(model, cfg, 10)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    assert len(trainable) == 2 * 2  # lora_A and lora_B of two layers' q_proj
    tokens = B.tokenize_causal({"instruction": [f"Say {i}." for i in range(4)], "input": [""] * 4,
                                "response": [f"The number is {i}." for i in range(4)]}, tokenizer_path=path, max_length=64)
    batch = B.collate_causal(tokens, pad_id=0)
    losses = []
    for _ in range(10):
        losses.append(S.backward(model, batch, cfg, torch.device("cpu"), sync=True))
        S.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    assert losses[-1] < losses[0] - 0.5, losses

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model, optimizer, scheduler, {"step": 10}, lora.checkpoint_options(model))
    keys = list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    assert sorted(k for k in keys if k.startswith("model.")) == sorted(
        "model." + k for k, p in model.named_parameters() if p.requires_grad)
    trained = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    fresh = S.load_sharded(path, "causal", torch.device("cpu"), adapt=lora.adapter(cfg.lora, "causal"))
    fresh_optimizer, fresh_scheduler = S.build_optimizer(fresh, cfg, 10)
    assert load_checkpoint(folder, fresh, fresh_optimizer, fresh_scheduler, lora.checkpoint_options(fresh))["step"] == 10
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())
    assert fresh_scheduler.last_epoch == scheduler.last_epoch

    lora.export(model, path, str(tmp_path / "export"), save_adapter=True)
    base, merged = (load_file(str(p / "model.safetensors")) for p in (tiny_models.llama, tmp_path / "export"))
    assert sorted(k for k in base if not torch.equal(base[k], merged[k])) == [
        f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
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

    from engine.train import train_causal_sft
    from engine.train import batches as B
    from engine.train import step as S

    rows = ray.data.from_items([{"instruction": f"Say the number {i}.", "input": "",
                                 "response": f"The number is {i}."} for i in range(16)])
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "save_adapter": True}
    cfg = TrainConfig(num_workers=2, batch_size=4, epochs=1, learning_rate=3e-2, warmup_ratio=0.0, max_length=128,
                      checkpoint_every_steps=1, lora=lora)
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
    tokens = B.tokenize_causal({"instruction": ["Say the number 3."], "input": [""], "response": ["The number is 3."]},
                               tokenizer_path=second.model_dir, max_length=128)
    batch = B.collate_causal(tokens, pad_id=0)
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(S.load_model(str(tiny_models.llama), "causal"), adapter_dir).eval()
        merged_model = S.load_model(second.model_dir, "causal").eval()
        logits = [m(input_ids=batch["input_ids"]).logits for m in (with_adapter, merged_model)]
        base_loss, trained_loss = (S.causal_lm_loss(m, batch).item()
                                   for m in (S.load_model(str(tiny_models.llama), "causal").eval(), merged_model))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    assert trained_loss < base_loss - 0.3

    # vLLM serves the merged export, and the base model with the adapter (enable_lora): the same greedy tokens.
    script = tmp_path / "vllm_lora.py"
    script.write_text(VLLM_LORA_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), second.model_dir, str(tiny_models.llama), adapter_dir],
                          capture_output=True, text=True, timeout=500, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
    assert len(result["merged"]) == 8 and result["adapter"] == result["merged"] != result["base"]


def constant_score(model_dir: str) -> float:
    return 0.5


def test_t5_lora_student_in_the_driver_with_validation(ray_cluster, tiny_models, tmp_path):
    """Step-by-step's seq2seq student with LoRA (PEFT's T5 default: q and v), the loop in the driver,
    the validation's export merged too."""
    import ray

    from engine.train import Validation, train_seq2seq_multitask

    rows = ray.data.from_items([{"input": f"question {i}", "label": f"answer {i % 3}"} for i in range(16)])
    cfg = TrainConfig(architecture="seq2seq", num_workers=0, batch_size=4, epochs=3, learning_rate=1e-2,
                      warmup_ratio=0.0, max_length=32, lora={"r": 4})
    result = train_seq2seq_multitask(cfg, str(tiny_models.t5), rows, str(tmp_path / "t5"), name="t5-lora",
                                     task="standard", validation=Validation(count=2, score=constant_score))
    assert [v["step"] for v in result.validations] == [6, 12] and result.best_step == 6
    assert result.record.extra["train_loss_last"] < result.record.extra["train_loss_first"]
    base = load_file(str(tiny_models.t5 / "model.safetensors"))
    merged = load_file(os.path.join(result.model_dir, "model.safetensors"))
    changed = sorted(k for k in base if k in merged and not torch.equal(base[k], merged[k]))
    assert changed and all(k.endswith(("q.weight", "v.weight")) for k in changed), changed
    assert not os.path.exists(os.path.join(result.model_dir, ADAPTER_DIR))  # save_adapter is off
