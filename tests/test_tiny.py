import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from lion_distill.local_models import resolve_local_models
from lion_distill.tiny import build_tiny_models


def test_build_is_cached_by_configuration(tiny_models, tmp_path):
    assert build_tiny_models() == tiny_models  # same configuration, same folders, no rebuild
    assert tiny_models.llama.name.startswith("llama-") and (tiny_models.llama / "config.json").is_file()
    assert (
        json.loads((tiny_models.llama / "config.json").read_text())["head_dim"] == 64
    )  # vLLM's CPU attention needs it


class _Named(BaseModel):
    model: str
    candidates: list[dict] = []


def test_local_names_resolve_wherever_they_sit_and_a_bad_one_names_its_field(tiny_models):
    cfg = _Named(model="tiny://llama", candidates=[{"model": "tiny://t5"}, {"model": "org/hub-model"}])
    resolved = resolve_local_models(cfg)
    assert resolved == _Named(
        model=str(tiny_models.llama), candidates=[{"model": str(tiny_models.t5)}, {"model": "org/hub-model"}]
    )
    hub = _Named(model="org/hub-model")
    assert resolve_local_models(hub) is hub  # nothing named: the config as it was
    with pytest.raises(ValueError, match=r"candidates\[0\]\.model: unknown tiny model 'tiny://gpt'"):
        resolve_local_models(_Named(model="x", candidates=[{"model": "tiny://gpt"}]))
    with pytest.raises(ValueError, match=r"^model: unknown model 'smol://large'"):
        resolve_local_models(_Named(model="smol://large"))


def test_tiny_llama_chats_and_generates(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models.llama)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|assistant|>\n")
    model = AutoModelForCausalLM.from_pretrained(tiny_models.llama)
    batch = tok(
        [prompt, "Name a fruit"], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and batch.input_ids.shape[1] < out.shape[1] <= batch.input_ids.shape[1] + 8
    assert tok.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True).strip()


def test_tiny_t5_generates(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models.t5)
    ids = tok(["[label] Which is heavier, a kilo of iron or of feathers?"], return_tensors="pt")
    assert ids.input_ids[0, -1].item() == tok.eos_token_id  # like a real T5 tokenizer
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.t5)
    with torch.no_grad():
        loss = model(**ids, labels=tok(["neither"], return_tensors="pt").input_ids).loss
    assert torch.isfinite(loss)
    assert model.generate(**ids, max_new_tokens=4, min_new_tokens=2).shape[1] >= 3


VLLM_SCRIPT = """
import sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":  # vLLM starts its workers with spawn
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    out = llm.generate(["Give three tips for staying healthy."] * 4, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    print("TOKENS", [len(o.outputs[0].token_ids) for o in out])
"""


def test_tiny_llama_generates_through_vllm(tiny_models, tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent(VLLM_SCRIPT))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_models.llama)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TOKENS [8, 8, 8, 8]" in proc.stdout
