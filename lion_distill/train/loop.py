"""Ray Train wiring: tokenise with Ray Data, run `step.py` on every worker under a
`TorchTrainer`, checkpoint through `ray.train.report`, export in Hugging Face format.

The driver tokenises (`map_batches`), drops and counts rows that cannot teach
anything, numbers the rows 0..n-1 (a ROW column added block by block from the blocks'
row counts) and works out the schedule length; the token ids never reach it. They go to
Ray Train as its "train" dataset, not split: each epoch every rank streams it and keeps
only its share of one seeded global shuffle of that index (batches.epoch_order, rows_of),
so a resumed epoch skips exactly the rows trained before its checkpoint. The workers
only load, step and save.

With a `Validation` the workers score the model at its steps inside the one run (an export
scored on rank 0, validation.py) and `output_dir` keeps the best export; the optimizer and
schedule run uninterrupted. A re-run with the same `name` resumes from the last reported
checkpoint, validations so far included (Ray Train V2 keeps it under
`RunConfig(name, storage_path)`); so does a worker failure, up to `max_failures` times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import time
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.data.expressions import col
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from lion_distill.config.models import TrainConfig
from lion_distill.data.remote import is_uri, local_model
from lion_distill.errors import TooFewRows
from lion_distill.metrics import stage_timer, tracking
from lion_distill.metrics.curve import TrainingCurve
from lion_distill.train import batches, lora, step
from lion_distill.train.checkpoint import checkpoint_settings, load_checkpoint, publish_dir, save_checkpoint
from lion_distill.train.flops import device_peak_flops, mfu, model_flops
from lion_distill.train.kd_loss import KDLoss
from lion_distill.train.progress import progress_line, relayed
from lion_distill.train.result import TrainResult
from lion_distill.train.resume import refuse_changed_schedule, schedule_of
from lion_distill.train.teacher_signal import collate_teacher, tokenize_with_teacher
from lion_distill.train.validation import Validation, best_step, validation_steps

log = logging.getLogger("lion_distill.train")
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
TEACHER_COLUMNS = ("response_ids", "topk_ids", "topk_logprobs")  # a white-box row's (docs/design.md)
REQUIRED = {
    "causal": ("messages",),  # or Lion's layout, CAUSAL_ALPACA (docs/design.md "Data contracts")
    "standard": ("input", "label"),
    "multitask": ("input", "label", "rationale"),
}
CAUSAL_ALPACA = ("instruction", "input", "response")


def fit(
    cfg: TrainConfig,
    model_path: str,
    rows: ray.data.Dataset,
    output_dir: str,
    *,
    name: str,
    kind: str,
    validation: Validation | None = None,
    keep_empty_targets: bool = False,
    kd: KDLoss | None = None,
    top_k: int | None = None,
    tokenize_kwargs: dict | None = None,
) -> TrainResult:
    """`kind`: "causal" (SFT on conversations or instruction/input/response) or a seq2seq task
    ("multitask" | "standard"); a seq2seq task's targets are cut at `cfg.max_target_length` and,
    with `keep_empty_targets`, a blank one trains as the end-of-sequence token alone.
    `tokenize_kwargs`: more arguments of the tokenize function. `kd` (causal): logit distillation
    from the rows' teacher signal (TEACHER_COLUMNS, top `top_k` per token;
    lion_distill.train.teacher_signal) instead of SFT."""
    names = rows.schema().names
    required = CAUSAL_ALPACA if kind == "causal" and "messages" not in names else REQUIRED[kind]
    missing = [c for c in required + (TEACHER_COLUMNS if kd else ()) if c not in names]
    if missing:
        raise ValueError(f"training rows for {kind!r} lack column(s) {missing}; they have {rows.schema().names}")
    tokenize = (
        batches.tokenize_causal
        if kind == "causal"
        else partial(
            batches.tokenize_seq2seq,
            task=kind,
            max_target_length=cfg.max_target_length,
            keep_empty_targets=keep_empty_targets,
        )
    )
    if kd is not None:
        tokenize = partial(tokenize_with_teacher, k=top_k)
    pad_id = _pad_id(model_path)
    with stage_timer(name) as rec:
        fn_kwargs = {"tokenizer_path": model_path, "max_length": cfg.max_length, **(tokenize_kwargs or {})}
        usable, n_in = _usable_rows(rows, tokenize, fn_kwargs)
        n_usable = usable.count()
        rec.failed_rows = n_in - n_usable
        if rec.failed_rows:
            log.warning(
                "%s: %d of %d rows dropped (empty target, or prompt longer than max_length=%d)",
                name,
                rec.failed_rows,
                n_in,
                cfg.max_length,
            )
        ranks = max(1, cfg.num_workers)
        if n_usable < ranks:
            raise TooFewRows(f"{name}: {n_usable} usable rows cannot feed {ranks} workers")
        # A resume with other ranks or batches would silently skip or repeat rows (lion_distill.train.resume).
        refuse_changed_schedule(storage_path(output_dir), name, schedule_of(cfg, ranks, n_usable))
        # Every rank trains on n_usable // ranks rows an epoch (batches.epoch_order).
        micro_per_epoch = math.ceil((n_usable // ranks) / cfg.batch_size)
        loop_config = {
            "settings": training_settings(cfg, model_path, kind, n_usable),
            "train": cfg.model_dump(),
            "model_path": model_path,
            "output_dir": output_dir,
            "kind": kind,
            "pad_id": pad_id,
            "micro_per_epoch": micro_per_epoch,
            "steps_per_epoch": math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps),
            "n_rows": n_usable,
            "ranks": ranks,
            "validation": validation,
            "kd": kd,
            "top_k": top_k,
            "tracking": tracking.worker_target(name),  # rank 0 logs the per-step curve there
            "name": name,
        }
        with relayed(log) as lines:  # rank 0's training lines, logged here
            loop_config["progress"] = lines
            result = fit_within_deadline(_trainer(cfg, loop_config, output_dir, name, usable), cfg)
        m = result.return_value
        # Inside the timer, so the stage's log line carries these figures.
        rec.rows = m["samples"]
        rec.prompt_tokens, rec.completion_tokens = m["prompt_tokens"], m["target_tokens"]
        rec.gpus = cfg.num_workers * cfg.gpus_per_worker
        loop_s = max(m["loop_seconds"], 1e-9)
        tokens_per_s = (m["prompt_tokens"] + m["target_tokens"]) / loop_s
        rec.extra.update(
            {
                "samples_per_s": m["samples"] / loop_s,
                "tokens_per_s": tokens_per_s,
                "steps": m["step"],
                "resumed_from_step": m["resumed_from_step"],
                "train_loss_first": m["train_loss_first"],
                "train_loss_last": m["train_loss_last"],
            }
        )
        if validation is not None:
            rec.extra["best_step"] = m["best_step"]
        rec.extra["train_step_s"] = m["step_seconds"]
        if m.get("peak_flops") and rec.gpus:  # over the steps alone: no checkpoint, validation or data wait
            rec.extra["mfu"] = mfu(m["model_flops"], m["step_seconds"], m["peak_flops"] * rec.gpus)
    return TrainResult(model_dir=output_dir, record=rec, validations=m["validations"], best_step=m["best_step"])


# Settings a checkpoint's steps so far do not depend on: how the run is kept, logged and placed, and how
# long it goes on (a longer training, more epochs or max_steps, goes on from where the last one ended).
# Those that count a rank's place in the data are refused outright (lion_distill.train.resume).
UNTRAINED_SETTINGS = (
    "start_timeout_s",
    "log_every_steps",
    "gpus_per_worker",
    "keep_checkpoints",
    "max_failures",
    "checkpoint_every_steps",
    "epochs",
    "max_steps",
)


def training_settings(cfg: TrainConfig, model_path: str, kind: str, rows: int) -> str:
    """What a training's steps so far depend on, as a digest: a checkpoint made under another (a
    changed learning rate, batch size or model, other rows) is not resumed from: training starts over."""
    train = cfg.model_dump(mode="json", exclude=set(UNTRAINED_SETTINGS))
    return hashlib.sha256(json.dumps([train, model_path, kind, rows], sort_keys=True).encode()).hexdigest()[:16]


def _pad_id(model_path: str) -> int:
    tok = batches.load_tokenizer(model_path)
    # LLaMA tokenizers have no pad token; padded positions are masked either way.
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _usable_rows(rows: ray.data.Dataset, tokenize, fn_kwargs: dict) -> tuple[ray.data.MaterializedDataset, int]:
    """-> (the rows `tokenize` leaves a target in, tokenised, with their global row index batches.ROW
    in the rows' own order; how many rows came in). The order is kept (Ray Data otherwise hands
    blocks on as they finish), so the same rows get the same indices in every attempt: the
    seeded shuffle, and the rows a resumed run skips as already trained, depend on them. Set on
    the rows' context, which a Dataset seals at its creation and shares with those made from it."""
    rows.context.execution_options.preserve_order = True
    tokenized = rows.map_batches(tokenize, fn_kwargs=fn_kwargs).materialize()
    usable = _indexed(tokenized.filter(expr=col("n_target_tokens") > 0).materialize())
    return usable, tokenized.count()  # `tokenized` leaves the object store; `usable` holds what the workers read


def _indexed(ds: ray.data.MaterializedDataset) -> ray.data.MaterializedDataset:
    """The materialized rows with their global row index batches.ROW, 0..n-1 in block order, added by
    one task per block: only the blocks' row counts reach the driver, never their rows."""
    parts = [
        (entry, piece)
        for bundle in ds.iter_internal_ref_bundles()
        for entry, piece in zip(bundle.blocks, bundle.slices)
    ]
    spans = [
        (0, entry.metadata.num_rows) if piece is None else (piece.start_offset, piece.end_offset)
        for entry, piece in parts
    ]
    offsets = batches.block_offsets([end - start for start, end in spans])
    return ray.data.from_arrow_refs(
        [
            _with_row_index.remote(entry.ref, start, end, int(offset))
            for (entry, _), (start, end), offset in zip(parts, spans, offsets)
        ]
    )


@ray.remote
def _with_row_index(block, start: int, end: int, offset: int):
    from ray.data.block import BlockAccessor

    table = BlockAccessor.for_block(block).to_arrow().slice(start, end - start)
    return table.append_column(batches.ROW, pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64)))


def _trainer(cfg: TrainConfig, loop_config: dict, output_dir: str, name: str, rows: ray.data.Dataset) -> TorchTrainer:
    gpu = cfg.gpus_per_worker > 0
    return TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        # Every rank streams all the rows and keeps its share (_train_worker): not split.
        datasets={"train": rows},
        dataset_config=DataConfig(datasets_to_split=[]),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=gpu, resources_per_worker={"GPU": cfg.gpus_per_worker} if gpu else None
        ),
        run_config=RunConfig(
            name=name,
            **_storage(output_dir),
            # A start that times out (fit_within_deadline) ends the run at once.
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def fit_within_deadline(trainer: TorchTrainer, cfg: TrainConfig):
    """trainer.fit(), its workers given `start_timeout_s` to get their resources. Ray Train
    waits that long for its workers' placement group (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S,
    which it hands from the driver to its controller) and, by default, then tries again
    forever; with no controller retries (_trainer) the timeout ends the run, named here."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from lion_distill.llm.fit import WaitedTooLong

    previous = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = str(cfg.start_timeout_s)
    try:
        return trainer.fit()
    except ControllerError as e:
        if not isinstance(e.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        each = {"CPU": 1, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
        total, free = ray.cluster_resources(), ray.available_resources()
        cluster = "the cluster has " + " and ".join(f"{total.get(r, 0):g} {r}s ({free.get(r, 0):g} free)" for r in each)
        raise WaitedTooLong(
            "train", f"{cfg.num_workers} workers x {each}", cfg.start_timeout_s, cluster, what="its workers' resources"
        ) from None
    finally:
        if previous is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = previous


def storage_path(output_dir: str) -> str:
    """Ray Train's checkpoints live beside the export, inside the run directory (a local path,
    or a URI with its query kept)."""
    base, sep, query = output_dir.partition("?") if is_uri(output_dir) else (posixpath.abspath(output_dir), "", "")
    return posixpath.join(posixpath.dirname(base.rstrip("/")), "ray_train") + sep + query


def _storage(output_dir: str) -> dict:
    """RunConfig's storage: in an object store through the URI's own pyarrow filesystem (its
    endpoint and options reach Ray Train; credentials come from each node's environment)."""
    location = storage_path(output_dir)
    if not is_uri(location):
        return {"storage_path": location}
    fs, path = pafs.FileSystem.from_uri(location)
    return {"storage_path": path, "storage_filesystem": fs}


def _report_checkpoint(model, optimizer, scheduler, state: dict, metrics: dict) -> None:
    """Every rank writes its shard to a local folder; Ray uploads them into one checkpoint."""
    folder = tempfile.mkdtemp(prefix="ckpt-")
    try:
        save_checkpoint(folder, model, optimizer, scheduler, state, lora.checkpoint_options(model))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_worker(config: dict) -> dict:
    config = {**config, "model_path": local_model(config["model_path"])}  # in an object store: this node's copy
    cfg = TrainConfig(**config["train"])
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    model = step.load_sharded(
        config["model_path"],
        cfg.architecture,
        device,
        activation_checkpointing=cfg.activation_checkpointing,
        adapt=lora.adapter(cfg.lora, cfg.architecture),
        quantization=lora.quantization(cfg.lora, device),
    )
    total_steps, epochs = schedule_length(config["steps_per_epoch"], cfg.epochs, cfg.max_steps)
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps)
    validation: Validation | None = config["validation"]
    validate_at = set(validation_steps(total_steps, validation.count)) if validation else set()
    state = {
        "step": 0,
        "epoch": 0,
        "micro_in_epoch": 0,
        "train_loss_first": None,
        "train_loss_last": None,
        "validations": [],
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            if checkpoint_settings(folder) == config["settings"]:
                state = load_checkpoint(folder, model, optimizer, scheduler, lora.checkpoint_options(model))
            else:  # another config's (or rows') trajectory: not this one's to go on with
                log.warning("%s: its checkpoint was made with other train settings; training starts over", folder)
    state["settings"] = config["settings"]
    resumed_from, micro_per_epoch = state["step"], config["micro_per_epoch"]
    collate = partial(
        batches.collate_causal if config["kind"] == "causal" else batches.collate_seq2seq, pad_id=config["pad_id"]
    )
    kd = config.get("kd")
    if kd is not None:
        collate = partial(_with_teacher, collate, k=config["top_k"])
    tasks = 2 if config["kind"] == "multitask" else 1
    shard = ray.train.get_dataset_shard("train")  # the whole dataset (in local mode, the Dataset itself)
    rank = dist.get_rank() if dist.is_initialized() else 0
    curve = TrainingCurve(config.get("tracking"), rank)
    counts = torch.zeros(4, dtype=torch.float64)  # samples, prompt tokens, target tokens, model FLOPs
    flops, step_seconds = model_flops(model), 0.0  # MFU's numerator and the steps' own time
    start = time.perf_counter()
    world = dist.get_world_size() if dist.is_initialized() else 1
    for epoch in range(state["epoch"], epochs):
        micro = 0
        order = batches.epoch_order(config["n_rows"], config["ranks"], rank, cfg.seed, epoch)
        rows = batches.rows_of(shard.iter_batches(batch_format="numpy", batch_size=None), order)  # in `order`'s order
        collated = (collate(b) for b in batches.micro_batches(rows, np.arange(len(order)), cfg.batch_size))
        for window in accumulation_windows(collated, cfg.gradient_accumulation_steps):
            if state["step"] >= total_steps:  # max_steps reached mid-epoch
                break
            micro += len(window)
            if micro <= state["micro_in_epoch"]:  # consumed before the checkpoint we resumed from
                continue
            began = time.perf_counter()
            # One normaliser for the whole accumulated batch, on every rank: its answer tokens.
            tokens = _all_ranks(sum(step.target_tokens(b, cfg.architecture) for b in window), device)
            loss = 0.0
            for batch in window:
                loss += step.backward(model, batch, cfg, device, tokens=tokens, world=world, kd=kd)
                counts += _batch_counts(batch, config["kind"], tasks, flops.batch(batch))
            lr = scheduler.get_last_lr()[0]
            grad_norm = step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
            loss = float(_all_ranks(torch.tensor([loss], dtype=torch.float64), device)[0]) / world
            step_seconds += time.perf_counter() - began  # the step synchronised: backward and the norm are read
            curve.log({"train/loss": loss, "train/learning_rate": lr, "train/grad_norm": grad_norm}, state["step"] + 1)
            state.update(step=state["step"] + 1, micro_in_epoch=micro, train_loss_last=loss)
            if state["train_loss_first"] is None:
                state["train_loss_first"] = loss
            if cfg.log_every_steps and state["step"] % cfg.log_every_steps == 0:
                _post_progress(config, state, total_steps, counts, time.perf_counter() - start, resumed_from, device)
            if state["step"] in validate_at:  # before the checkpoint, so a resumed run knows the best so far
                _validate(
                    model, optimizer, scheduler, validation, config, state, epoch + micro / micro_per_epoch, device
                )
            if state["step"] % cfg.checkpoint_every_steps == 0 and micro != micro_per_epoch:
                _report_checkpoint(model, optimizer, scheduler, state, {"step": state["step"], "loss": loss})
        if micro != micro_per_epoch and state["step"] < total_steps:
            raise RuntimeError(f"epoch {epoch}: {micro} micro-batches, the schedule expected {micro_per_epoch}")
        state.update(epoch=epoch + 1, micro_in_epoch=0)
        _report_checkpoint(
            model, optimizer, scheduler, state, {"step": state["step"], "loss": state["train_loss_last"]}
        )
    loop_seconds = time.perf_counter() - start
    curve.close()
    counts = _all_ranks(counts, device)
    if validation is None:
        _export(model, cfg, config["model_path"], config["output_dir"], device)
    samples, prompt_tokens, target_tokens = (int(x) for x in counts[:3].tolist())
    return {  # Ray Train hands rank 0's return value to the driver
        "step": state["step"],
        "resumed_from_step": resumed_from,
        "samples": samples,
        "prompt_tokens": prompt_tokens,
        "target_tokens": target_tokens,
        "loop_seconds": loop_seconds,
        "train_loss_first": state["train_loss_first"],
        "train_loss_last": state["train_loss_last"],
        "params": step.parameter_count(model),
        "model_flops": float(counts[3]),
        "step_seconds": step_seconds,
        "peak_flops": device_peak_flops(),
        "validations": state["validations"],
        "best_step": best_step(state["validations"], validation.keep if validation else "best"),
    }


def _with_teacher(collate, batch: dict, k: int) -> dict:
    """A micro-batch's tensors and the teacher's top k at its label positions."""
    tensors = collate(batch)
    return {**tensors, **collate_teacher(batch, tensors["labels"], k)}


def _post_progress(
    config: dict, state: dict, total_steps: int, counts: torch.Tensor, seconds: float, resumed_from: int, device
) -> None:
    """The training line, posted by rank 0. Every rank calls this at the same step: the token
    count is every rank's (a collective)."""
    tokens = float(_all_ranks(counts.clone(), device)[1:3].sum())  # prompt + target; a copy: all_reduce is in place
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        line = progress_line(
            config["name"],
            state["step"],
            total_steps,
            state["train_loss_last"],
            tokens,
            seconds,
            state["step"] - resumed_from,
        )
        config["progress"].post.remote(line)


def _export(model, cfg: TrainConfig, model_path: str, output_dir: str, device: torch.device) -> None:
    lora.export(
        model,
        model_path,
        output_dir,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        save_adapter=cfg.lora is not None and cfg.lora.save_adapter,
    )


def _validate(
    model, optimizer, scheduler, validation: Validation, config: dict, state: dict, epoch: float, device: torch.device
) -> None:
    """Export the current weights (a collective), score them on rank 0, and publish the export
    as `output_dir` when it beats every earlier validation; appends to state["validations"]."""
    candidate = os.path.join(tempfile.gettempdir(), f"candidate-{os.getpid()}-{state['step']}")
    _export(model, TrainConfig(**config["train"]), config["model_path"], candidate, device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        score = validation.score(candidate) if rank == 0 else 0.0
        score = float(_all_ranks(torch.tensor([score], dtype=torch.float64), device)[0])  # rank 0's, on every rank
        if rank == 0 and validation.kept(score, state["validations"]):
            publish_dir(candidate, config["output_dir"])
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    adam = next(iter(optimizer.state.values()), {})
    state["validations"].append(
        {
            "step": state["step"],
            "epoch": round(epoch, 4),
            "score": score,
            "train_loss": state["train_loss_last"],
            "lr": scheduler.get_last_lr()[0],
            "optimizer_steps": int(adam.get("step", 0)),
        }
    )
    log.info(
        "step %d: validation score %.4f (best %.4f)",
        state["step"],
        score,
        max(v["score"] for v in state["validations"]),
    )


def schedule_length(steps_per_epoch: int, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(optimizer steps, epochs begun): `epochs` whole epochs, or exactly `max_steps` steps, the
    last epoch cut where the budget ends (the HF Trainer's max_steps)."""
    if max_steps is None:
        return steps_per_epoch * epochs, epochs
    return max_steps, math.ceil(max_steps / steps_per_epoch)


def accumulation_windows(batches, steps: int):
    """Micro-batches in groups of `steps`, one optimizer step each; the epoch's last group
    may be shorter."""
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == steps:
            yield window
            window = []
    if window:
        yield window


def _all_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum over ranks (on CPU); NCCL reduces only device tensors."""
    if not dist.is_initialized():
        return values
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def _batch_counts(batch: dict, kind: str, tasks: int, flops: float) -> torch.Tensor:
    targets = int((batch["labels"] != batches.IGNORE).sum())
    context = int(batch["attention_mask"].sum())
    if kind == "causal":  # the prompt is the unmasked rest of the one sequence
        context -= targets
    return torch.tensor([batch["input_ids"].shape[0] // tasks, context, targets, flops], dtype=torch.float64)
