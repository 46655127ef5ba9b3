"""One training step in plain torch: model setup (FSDP2), losses, optimizer, step.

Nothing here imports Ray, so GPU benchmarks and a `torchrun` job use exactly the
code that runs inside Ray Train. When torch.distributed is initialised, every
transformer block and then the root is wrapped with FSDP2 `fully_shard`
(parameters, gradients and optimizer state sharded across ranks; a QLoRA student's
4-bit weights stay whole on each rank, load_sharded); with bf16 mixed precision on GPU.
Without a process group the model trains as is.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lion_distill.train.flops import weights
from lion_distill.train.targets import IGNORE, LABEL_TASK, RATIONALE_TASK


def load_model(model_path: str, architecture: str, quantization=None, device: torch.device | None = None) -> nn.Module:
    """`quantization`: a transformers BitsAndBytesConfig (a QLoRA student's 4-bit base, lion_distill.train.lora)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForCausalLM if architecture == "causal" else AutoModelForSeq2SeqLM
    # fp32 master weights; on GPU the MixedPrecisionPolicy computes in bf16.
    if quantization is None:
        return cls.from_pretrained(model_path, dtype=torch.float32)
    # bitsandbytes quantises each weight as it is placed on its device, so the model loads straight
    # onto it; what stays unquantised (embeddings, norms, the head) is fp32 as above.
    return cls.from_pretrained(
        model_path,
        dtype=torch.float32,
        quantization_config=quantization,
        device_map={"": device or torch.device("cpu")},
    )


def load_sharded(
    model_path: str,
    architecture: str,
    device: torch.device,
    *,
    activation_checkpointing: bool = False,
    adapt=None,
    quantization=None,
) -> nn.Module:
    """The model, set up for training (setup_model), without every rank holding all of it.

    With a process group, every rank builds the model on the meta device (no memory) and
    shards it; rank 0 alone reads the weights and broadcasts each rank its shards
    (set_model_state_dict with broadcast_from_rank0). Host memory is one full fp32 copy
    on rank 0 plus a shard per rank, not a full copy per rank (8 x 28 GB for LLaMA-7B).
    Without one, the model is loaded and set up as it is. `adapt`: applied to the model before
    it is set up, on every rank alike (a LoRA adapter, lion_distill.train.lora).

    With `quantization` (QLoRA) every rank loads the base itself, its linear layers quantised to
    4 bits as they load, and FSDP2 leaves those 4-bit weights out (`ignored_params`): they stay
    whole on every rank, while the adapter and the unquantised rest are sharded as above (each rank
    initialises the adapter itself, alike under lion_distill.train.loop's seed, and keeps its own shard).
    At 4 bits the base is small (a 7B's linear layers in about 3.5 GB, QLoRA's point): a copy per
    rank costs little memory and spares all-gathering every layer's frozen base in each forward and
    again in backward. Sharded, the packed bytes would travel as a plain DTensor, which runs only
    because bitsandbytes rebuilds each Params4bit from the quantisation state its module keeps, in
    every forward."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig

    adapt = adapt or (lambda model: model)
    if quantization is not None or not dist.is_initialized():
        model = adapt(load_model(model_path, architecture, quantization, device))
        return setup_model(
            model,
            device,
            activation_checkpointing=activation_checkpointing,
            ignored_params=quantised_parameters(model) if quantization is not None else None,
        )
    cls = AutoModelForCausalLM if architecture == "causal" else AutoModelForSeq2SeqLM
    with torch.device("meta"):
        model = cls.from_config(AutoConfig.from_pretrained(model_path), dtype=torch.float32)
    try:
        model.generation_config = GenerationConfig.from_pretrained(model_path)  # the export writes it back
    except OSError:
        pass  # the model ships none: from_config's default stays
    model = adapt(model)
    full = adapt(load_model(model_path, architecture)) if dist.get_rank() == 0 else None
    owners = [parameter_owners(full) if full is not None else None]
    dist.broadcast_object_list(owners, src=0)
    tie_as_loaded(model, owners[0])
    setup_model(model, device, activation_checkpointing=activation_checkpointing, materialize=False)
    set_model_state_dict(
        model,
        full.state_dict() if full is not None else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    # Buffers outside the state dict (rotary frequencies) were only allocated: rank 0's are the truth.
    persistent = set(model.state_dict())
    reference = dict(full.named_buffers()) if full is not None else {}
    for name, buffer in model.named_buffers():
        if name not in persistent:
            if full is not None:
                buffer.copy_(reference[name])
            dist.broadcast(buffer, src=0)
    del full
    return model


def parameter_owners(model: nn.Module) -> dict[str, str]:
    """Each parameter's name -> the first name of the tensor it is: tied names share one."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}


def tie_as_loaded(model: nn.Module, owners: dict[str, str]) -> None:
    """Tie a model built from its config (on the meta device) as from_pretrained tied the loaded one
    (`owners`, parameter_owners of it). transformers 5 configures every T5 with its head tied to the
    embeddings (T5Config forces tie_word_embeddings), and from_pretrained unties a head the checkpoint
    holds with other values, as T5 v1.1's do; built from the config alone the model ties them, and
    loading both names into its one weight put the head's values in the embeddings."""
    built = parameter_owners(model)
    for name, owner in owners.items():
        if built[name] == owner:
            continue
        parent, _, attr = name.rpartition(".")
        module, current = model.get_submodule(parent), model.get_parameter(name)
        own = nn.Parameter(torch.empty_like(current), requires_grad=current.requires_grad)
        setattr(module, attr, own if owner == name else model.get_parameter(owner))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA student's
        getattr(base, "all_tied_weights_keys", {}).pop(name.removeprefix("base_model.model."), None)  # exported too


def quantised_parameters(model: nn.Module) -> set[nn.Parameter]:
    """bitsandbytes' 4-bit weights (Params4bit: two 4-bit values packed in each uint8, decoded by
    the quant_state they carry)."""
    from bitsandbytes.nn import Params4bit

    return {p for p in model.parameters() if isinstance(p, Params4bit)}


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated layers FSDP shards one by one: the classes the model itself
    declares unsplittable (LlamaDecoderLayer, T5Block...), else the children of
    any ModuleList whose members all share one class."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    return [
        child
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1
        for child in m
    ]


def setup_model(
    model: nn.Module,
    device: torch.device,
    *,
    activation_checkpointing: bool = False,
    materialize: bool = True,
    ignored_params: set[nn.Parameter] | None = None,
) -> nn.Module:
    """Shard (when distributed) and place the model; returns the same module, now training.
    `materialize=False`: a model built on the meta device gets its (sharded) storage on
    `device`, uninitialised; load_sharded fills it. `ignored_params`: left out of FSDP2 (not
    sharded, their gradients not reduced), already on `device`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # the KV cache only serves generation
    if dist.is_initialized():
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        blocks = transformer_blocks(model)
        if not blocks:
            raise ValueError(f"{type(model).__name__}: found no transformer blocks to shard")
        for block in blocks:
            fully_shard(block, mp_policy=mp, ignored_params=ignored_params)
        fully_shard(model, mp_policy=mp, ignored_params=ignored_params)
    if materialize:
        model.to(device)  # after sharding: each rank moves only its own shards
    else:
        model.to_empty(device=device)
    model.train()
    return model


def autocast(device: torch.device):
    """bf16 compute for an unsharded model on GPU (FSDP2 casts by its policy instead)."""
    enabled = device.type == "cuda" and not dist.is_initialized()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def build_optimizer(model: nn.Module, cfg, total_steps: int):
    """AdamW (no decay on biases and norms) with transformers' linear warmup and then cosine
    (get_cosine_schedule_with_warmup, the HF Trainer's "cosine") or linear decay to zero
    (get_linear_schedule_with_warmup, its default "linear"), by `cfg.lr_schedule`."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=torch.cuda.is_available() or None,
    )
    # The schedule's first step is at lr 0: at least one step must come after the warmup, or a
    # short run (a Lion iteration's few new instructions: one step) would not train at all.
    warmup = min(math.ceil(cfg.warmup_ratio * total_steps), total_steps - 1)
    schedule = get_linear_schedule_with_warmup if cfg.lr_schedule == "linear" else get_cosine_schedule_with_warmup
    return optimizer, schedule(optimizer, warmup, total_steps)


def target_tokens(batch: dict, architecture: str) -> torch.Tensor:
    """The answer tokens a micro-batch adds to the loss, per task (float64): [answer] for
    a causal model (labels shifted, as causal_lm_loss reads them), [label, rationale] for
    a seq2seq one."""
    labels = batch["labels"]
    if architecture == "causal":
        return (labels[:, 1:] != IGNORE).sum().reshape(1).double()
    mask = labels != IGNORE
    return torch.stack([mask[batch["task"] == t].sum() for t in (LABEL_TASK, RATIONALE_TASK)]).double()


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (in fp32) summed over the tokens whose label is not IGNORE, divided by
    `tokens`; by default their own count, the mean."""
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total / (tokens if tokens is not None else (labels != IGNORE).sum())


def causal_lm_loss(model: nn.Module, batch: dict, tokens: torch.Tensor | None = None) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # token t predicts token t+1
    return masked_token_loss(logits[:, :-1], batch["labels"][:, 1:], None if tokens is None else tokens[0])


def multitask_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task: torch.Tensor,
    rationale_weight: float,
    tokens: torch.Tensor | None = None,
    label_weight: float = 1.0,
) -> torch.Tensor:
    """Distilling step-by-step: label_weight * label loss + rationale_weight * rationale loss,
    each over its own task's target tokens (0.5 and 0.5: the reference's alpha 0.5); a batch of
    label rows only is the standard loss, unweighted. `tokens`: [label, rationale] token counts
    to divide by; by default this batch's, the means."""
    label, rationale = (None, None) if tokens is None else tokens
    loss = masked_token_loss(logits[task == LABEL_TASK], labels[task == LABEL_TASK], label)
    if bool((task == RATIONALE_TASK).any()):
        loss = label_weight * loss + rationale_weight * masked_token_loss(
            logits[task == RATIONALE_TASK], labels[task == RATIONALE_TASK], rationale
        )
    return loss


def seq2seq_loss(
    model: nn.Module,
    batch: dict,
    rationale_weight: float,
    tokens: torch.Tensor | None = None,
    label_weight: float = 1.0,
) -> torch.Tensor:
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
    ).logits
    return multitask_loss(logits, batch["labels"], batch["task"], rationale_weight, tokens, label_weight)


def batch_loss(
    model: nn.Module,
    batch: dict,
    architecture: str,
    rationale_weight: float,
    tokens: torch.Tensor | None = None,
    label_weight: float = 1.0,
) -> torch.Tensor:
    if architecture == "causal":
        return causal_lm_loss(model, batch, tokens)
    return seq2seq_loss(model, batch, rationale_weight, tokens, label_weight)


def backward(
    model: nn.Module,
    batch: dict,
    cfg,
    device: torch.device,
    *,
    tokens: torch.Tensor | None = None,
    world: int = 1,
) -> float:
    """Forward + backward of one micro-batch; returns its share of the step's loss.

    `tokens`: the answer tokens (per task, target_tokens) of the whole accumulated batch
    on all `world` ranks. The micro-batch's summed loss is divided by them, so every
    answer token weighs the same however tokens fall into micro-batches and ranks (as
    transformers does since 4.46); x world because FSDP averages gradients over ranks.
    Default: this micro-batch alone, its mean.

    FSDP reduce-scatters every micro-batch's gradients, so what accumulates is each rank's
    shard. Skipping that until the last micro-batch (`set_requires_gradient_sync(False)`)
    saves the communication but keeps an unsharded fp32 copy of every gradient on every rank
    (FSDP2's unsharded_accumulated_grad): 28 GB more per GPU for a 7B student, out of memory
    on 40 GB cards."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    tokens = target_tokens(batch, cfg.architecture) if tokens is None else tokens
    with autocast(device):
        loss = (
            batch_loss(
                model, batch, cfg.architecture, cfg.rationale_weight, tokens.clamp(min=1).to(device), cfg.label_weight
            )
            * world
        )
    loss.backward()
    return loss.detach().item()


def optimizer_step(model: nn.Module, optimizer, scheduler, max_grad_norm: float) -> float:
    """Clip, step, schedule; returns the gradient norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def parameter_count(model: nn.Module) -> int:
    """The model's weights; a 4-bit one (bitsandbytes) counts its unpacked shape, not its bytes."""
    return sum(weights(p) for p in model.parameters())
