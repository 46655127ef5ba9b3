"""Student fine-tuning on Ray Train with FSDP2.

    result = train_causal_sft(cfg.train, "/models/llama-7b", rows, "runs/x/iter_0/student", name="iter_0_student")
    result.model_dir        # Hugging Face export for the vllm / hf backends
    result.record           # its StageRecord (lion_distill.metrics): timing, rows, samples and tokens per second

The function chooses the architecture (cfg.architecture is overridden to match).
`lion_distill.train.step` (plain torch) and `lion_distill.train.batches` import without Ray;
this module imports the Ray wiring only when a job is started, so they stay usable
where Ray is not installed (GPU benchmarks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from lion_distill.train.result import TrainResult
from lion_distill.train.validation import Validation

if TYPE_CHECKING:  # the step code imports without pydantic, pyarrow or Ray (benchmarks/gpu_smoke.py)
    import ray.data

    from lion_distill.config.models import TrainConfig
    from lion_distill.train.kd_loss import KDLoss

__all__ = ["TrainResult", "Validation", "delete_checkpoints", "train_causal_sft", "train_seq2seq_multitask"]


def train_causal_sft(
    cfg: TrainConfig,
    model_path: str,
    rows: ray.data.Dataset,
    output_dir: str,
    *,
    name: str,
    prompt_format: str | None = None,
    chat_template_kwargs: dict | None = None,
    kd: KDLoss | None = None,
    top_k: int | None = None,
) -> TrainResult:
    """Instruction tuning (Lion's imitation stage) on training rows in either layout
    (lion_distill.train.batches.tokenize_causal): `messages` through the chat template, the loss
    on the assistant turns; or `instruction`, `input`, `response` in Lion's Alpaca prompt, the
    loss on the response and eos. With `prompt_format`, the export says it in its model card
    (lion_distill.train.card), and an `alpaca` export gets a chat template of that layout. With
    `kd` (logit distillation, lion_distill.train.kd_loss) the rows also carry the teacher's answer
    ids and top `top_k` per token (`response_ids`, `topk_ids`, `topk_logprobs`), and the student
    learns those."""
    from lion_distill.train.loop import fit

    result = fit(
        cfg.model_copy(update={"architecture": "causal"}),
        model_path,
        rows,
        output_dir,
        name=name,
        kind="causal",
        tokenize_kwargs={"chat_template_kwargs": chat_template_kwargs or None},
        kd=kd,
        top_k=top_k,
    )
    if prompt_format is not None:
        from lion_distill.train.card import label_export

        label_export(output_dir, prompt_format, base_model=model_path, chat_template_kwargs=chat_template_kwargs)
    return result


def train_seq2seq_multitask(
    cfg: TrainConfig,
    model_path: str,
    rows: ray.data.Dataset,
    output_dir: str,
    *,
    name: str,
    task: Literal["multitask", "standard"] = "multitask",
    validation: Validation | None = None,
    keep_empty_targets: bool = False,
) -> TrainResult:
    """Distilling step-by-step: rows `input`, `label`, `rationale` (multitask only).
    "multitask": loss = cfg.label_weight * label loss + cfg.rationale_weight * rationale loss;
    "standard": the label-only fine-tuning / distillation baseline.
    `validation`: scored during the run; `output_dir` gets the best export, not the last.
    `keep_empty_targets`: a blank label or rationale trains (as the end-of-sequence token), as the
    reference trains every row, instead of leaving its row out."""
    from lion_distill.train.loop import fit

    if task not in ("multitask", "standard"):
        raise ValueError(f"task must be 'multitask' or 'standard', not {task!r}")
    return fit(
        cfg.model_copy(update={"architecture": "seq2seq"}),
        model_path,
        rows,
        output_dir,
        name=name,
        kind=task,
        validation=validation,
        keep_empty_targets=keep_empty_targets,
    )


def delete_checkpoints(output_dir: str) -> None:
    """The Ray Train checkpoints of the training that exported `output_dir`: sharded weights and
    optimizer state (about 12 bytes a parameter in fp32 with AdamW: 84 GB for a 7B, two kept), which
    only a training run that has not finished needs."""
    from lion_distill.train.checkpoint import delete_dir
    from lion_distill.train.loop import storage_path

    delete_dir(storage_path(output_dir))
