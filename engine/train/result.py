"""What a training job hands back (Ray-free, so importing it costs nothing)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.metrics import StageRecord


@dataclass
class TrainResult:
    model_dir: str  # Hugging Face export: safetensors + tokenizer, loadable as is by transformers and vLLM
    record: StageRecord  # seconds, rows=samples, failed_rows; extra: samples_per_s, tokens_per_s, losses, steps, mfu
