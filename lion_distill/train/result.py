"""What a training job hands back (Ray-free, so importing it costs nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lion_distill.metrics import StageRecord


@dataclass
class TrainResult:
    model_dir: str  # Hugging Face export: safetensors + tokenizer, loadable as is by transformers and vLLM
    record: StageRecord  # seconds, rows=samples, failed_rows; extra: samples_per_s, tokens_per_s, losses, steps, mfu
    # With a Validation: each one's step, epoch, score, train_loss, lr, optimizer_steps; model_dir
    # then holds the export of best_step.
    validations: list[dict] = field(default_factory=list)
    best_step: int | None = None
