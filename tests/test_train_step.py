"""lion_distill.train's pure parts: token masks, collation, losses, schedule, FSDP units (no Ray)."""

import numpy as np
import pytest
import torch

from lion_distill.llm.prompts import alpaca_prompt
from lion_distill.train import batches, step


def _rows(**cols):
    return {k: np.asarray(v, dtype=object) for k, v in cols.items()}


def test_causal_labels_mask_prompt_and_keep_response_plus_eos(tiny_models):
    tok = batches.load_tokenizer(str(tiny_models.llama))
    batch = _rows(instruction=["Add the numbers.", "Say hi."], input=["2 and 3", ""], response=["5", "hi there"])
    out = batches.tokenize_causal(batch, tokenizer_path=str(tiny_models.llama), max_length=256)
    for i, (inst, inp, resp) in enumerate([("Add the numbers.", "2 and 3", "5"), ("Say hi.", "", "hi there")]):
        prompt = tok(alpaca_prompt(inst, inp))["input_ids"]
        target = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert out["input_ids"][i].tolist() == prompt + target
        assert out["labels"][i].tolist() == [batches.IGNORE] * len(prompt) + target
        assert (out["n_prompt_tokens"][i], out["n_target_tokens"][i]) == (len(prompt), len(target))
    padded = batches.collate_causal(out, pad_id=tok.pad_token_id)
    short = int(out["n_prompt_tokens"][1] + out["n_target_tokens"][1])
    assert padded["attention_mask"][1].tolist() == [1] * short + [0] * (padded["input_ids"].shape[1] - short)
    assert (padded["labels"][1, short:] == batches.IGNORE).all()  # padding never reaches the loss


def test_causal_unusable_rows_have_no_target(tiny_models):
    path = str(tiny_models.llama)
    out = batches.tokenize_causal(
        _rows(instruction=["x", "long " * 300, "y"], input=["", "", ""], response=["", "ok", "a b"]),
        tokenizer_path=path,
        max_length=96,
    )
    assert out["n_target_tokens"][0] == 0  # empty response
    assert out["n_target_tokens"][1] == 0  # the prompt alone fills max_length
    tok = batches.load_tokenizer(path)
    assert tok.eos_token_id in out["labels"][2].tolist()
    clipped = batches.tokenize_causal(
        _rows(instruction=["y"], input=[""], response=["word " * 100]), tokenizer_path=path, max_length=64
    )
    assert len(clipped["input_ids"][0]) == 64 and tok.eos_token_id not in clipped["labels"][0].tolist()
    # An answer its model was cut off in (complete False) ends without eos, whatever room is left.
    cut = batches.tokenize_causal(
        {
            **_rows(instruction=["y", "y"], input=["", ""], response=["a b", "a b"]),
            "complete": np.asarray([False, True]),
        },
        tokenizer_path=path,
        max_length=96,
    )
    assert tok.eos_token_id not in cut["labels"][0].tolist() and cut["labels"][1].tolist()[-1] == tok.eos_token_id


def test_seq2seq_multitask_pairs_and_collate(tiny_models):
    path = str(tiny_models.t5)
    tok = batches.load_tokenizer(path)
    batch = _rows(input=["2 + 3?", "Where do fish live?"], label=["5", "water"], rationale=["2 plus 3 is 5.", ""])
    out = batches.tokenize_seq2seq(batch, tokenizer_path=path, max_length=64, task="multitask")
    assert out["label_input_ids"][0].tolist() == tok(batches.LABEL_PREFIX + "2 + 3?")["input_ids"]
    assert out["rationale_input_ids"][0].tolist() == tok(batches.RATIONALE_PREFIX + "2 + 3?")["input_ids"]
    assert out["rationale_labels"][0].tolist() == tok("2 plus 3 is 5.")["input_ids"]
    assert out["n_target_tokens"][0] > 0 and out["n_target_tokens"][1] == 0  # no rationale: unusable for multitask
    standard = batches.tokenize_seq2seq(batch, tokenizer_path=path, max_length=64, task="standard")
    assert "rationale_input_ids" not in standard and (standard["n_target_tokens"] > 0).all()
    padded = batches.collate_seq2seq(out, pad_id=tok.pad_token_id)
    assert padded["task"].tolist() == [batches.LABEL_TASK] * 2 + [batches.RATIONALE_TASK] * 2
    assert padded["input_ids"].shape[0] == padded["labels"].shape[0] == 4


def test_multitask_loss_is_label_loss_plus_weighted_rationale_loss():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 11)
    labels = torch.randint(0, 11, (4, 5))
    labels[0, 3:] = batches.IGNORE
    labels[3, 1:] = batches.IGNORE
    task = torch.tensor([0, 0, 1, 1])

    def by_hand(rows):  # mean token cross-entropy over the unmasked tokens of these rows
        logp = torch.log_softmax(logits[rows], -1)
        picked = [
            (-logp[i, t, labels[r, t]]) for i, r in enumerate(rows) for t in range(5) if labels[r, t] != batches.IGNORE
        ]
        return torch.stack(picked).mean()

    expected = by_hand([0, 1]) + 0.3 * by_hand([2, 3])
    assert torch.allclose(step.multitask_loss(logits, labels, task, 0.3), expected, atol=1e-6)
    assert torch.allclose(step.multitask_loss(logits[:2], labels[:2], task[:2], 0.3), by_hand([0, 1]), atol=1e-6)


def test_seq2seq_loss_matches_two_separate_t5_losses(tiny_models):
    from transformers import AutoModelForSeq2SeqLM

    path = str(tiny_models.t5)
    tok = batches.load_tokenizer(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    rows = _rows(
        input=["2 + 3?", "Where do fish live?"],
        label=["5", "water"],
        rationale=["2 plus 3 is 5.", "Fish swim in water."],
    )
    batch = batches.collate_seq2seq(
        batches.tokenize_seq2seq(rows, tokenizer_path=path, max_length=64, task="multitask"), pad_id=tok.pad_token_id
    )
    with torch.no_grad():
        combined = step.seq2seq_loss(model, batch, rationale_weight=0.5)
        separate = [
            model(
                input_ids=batch["input_ids"][sl], attention_mask=batch["attention_mask"][sl], labels=batch["labels"][sl]
            ).loss
            for sl in (slice(0, 2), slice(2, 4))
        ]
    assert torch.allclose(combined, separate[0] + 0.5 * separate[1], atol=1e-5)


def test_causal_loss_matches_transformers_loss(tiny_models):
    from transformers import AutoModelForCausalLM

    path = str(tiny_models.llama)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = batches.tokenize_causal(
        _rows(instruction=["Say hi.", "Add."], input=["", "1 2"], response=["hi", "3"]),
        tokenizer_path=path,
        max_length=128,
    )
    batch = batches.collate_causal(out, pad_id=0)
    with torch.no_grad():
        ours = step.causal_lm_loss(model, batch)
        theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_transformer_blocks_found_from_the_model(tiny_models):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    llama = AutoModelForCausalLM.from_pretrained(str(tiny_models.llama))
    t5 = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_models.t5))
    assert {type(b).__name__ for b in step.transformer_blocks(llama)} == {"LlamaDecoderLayer"}
    assert len(step.transformer_blocks(llama)) == llama.config.num_hidden_layers
    assert {type(b).__name__ for b in step.transformer_blocks(t5)} == {"T5Block"}
    assert len(step.transformer_blocks(t5)) == t5.config.num_layers + t5.config.num_decoder_layers


def test_the_schedule_is_transformers_cosine_with_warmup():
    from transformers import get_cosine_schedule_with_warmup

    from lion_distill.config.models import TrainConfig

    cfg = TrainConfig(learning_rate=1.0, warmup_ratio=0.2)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=10)
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0), 2, 10)
    ours, theirs = [], []
    for _ in range(10):
        ours.append(scheduler.get_last_lr()[0])
        theirs.append(reference.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        reference.optimizer.step()
        reference.step()
    assert ours == pytest.approx(theirs) and ours[0] == 0.0 and ours[2] == 1.0


def _grads(model) -> torch.Tensor:
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grads


def _micro_batches(path: str, responses: list[str]) -> list[dict]:
    tok = batches.load_tokenizer(path)
    out = batches.tokenize_causal(
        _rows(instruction=["Say it."] * len(responses), input=[""] * len(responses), response=responses),
        tokenizer_path=path,
        max_length=128,
    )
    return [
        batches.collate_causal({k: v[i : i + 1] for k, v in out.items()}, pad_id=tok.pad_token_id)
        for i in range(len(responses))
    ]


def test_accumulated_loss_weighs_every_answer_token_alike_across_micro_batches_and_ranks(tiny_models):
    """A 1-token and a 30-token answer in two micro-batches (or on two ranks) give the
    gradient of one batch holding both: the mean over all 31+ answer tokens, not the
    mean of two means, which weighs the short answer's token 30 times up."""
    from lion_distill.config.models import TrainConfig

    path = str(tiny_models.llama)
    cfg = TrainConfig(gradient_accumulation_steps=2)
    model = step.load_model(path, "causal")
    short, long = _micro_batches(path, ["yes", " ".join(["word"] * 30)])
    both = batches.collate_causal(
        _joined(path, ["yes", " ".join(["word"] * 30)]), pad_id=batches.load_tokenizer(path).pad_token_id
    )
    step.batch_loss(model, both, "causal", 1.0).backward()
    expected = _grads(model)
    tokens = step.target_tokens(short, "causal") + step.target_tokens(long, "causal")
    assert tokens.item() == step.target_tokens(both, "causal").item()
    cpu = torch.device("cpu")
    # Two micro-batches on one rank.
    loss = sum(step.backward(model, b, cfg, cpu, tokens=tokens) for b in (short, long))
    assert torch.allclose(_grads(model), expected, atol=1e-6)
    assert loss == pytest.approx(step.batch_loss(model, both, "causal", 1.0).item(), rel=1e-5)
    # One micro-batch on each of two ranks: FSDP averages the ranks' gradients.
    per_rank = []
    for b in (short, long):
        step.backward(model, b, cfg, cpu, tokens=tokens, world=2)
        per_rank.append(_grads(model))
    assert torch.allclose((per_rank[0] + per_rank[1]) / 2, expected, atol=1e-6)


def _joined(path: str, responses: list[str]) -> dict:
    return batches.tokenize_causal(
        _rows(instruction=["Say it."] * len(responses), input=[""] * len(responses), response=responses),
        tokenizer_path=path,
        max_length=128,
    )


def test_seq2seq_tokens_are_counted_per_task():
    labels = torch.tensor(
        [[5, 6, batches.IGNORE], [7, batches.IGNORE, batches.IGNORE], [1, 2, 3], [4, 4, batches.IGNORE]]
    )
    batch = {
        "labels": labels,
        "task": torch.tensor([batches.LABEL_TASK, batches.LABEL_TASK, batches.RATIONALE_TASK, batches.RATIONALE_TASK]),
    }
    assert step.target_tokens(batch, "seq2seq").tolist() == [3.0, 5.0]
    logits = torch.randn(4, 3, 11)
    # Normalised by the counts of a larger accumulated batch: each task's sum over them.
    scaled = step.multitask_loss(logits, labels, batch["task"], 0.5, torch.tensor([6.0, 10.0]))
    assert torch.allclose(scaled, step.multitask_loss(logits, labels, batch["task"], 0.5) / 2, atol=1e-6)


def test_accumulation_windows_end_with_a_short_one():
    from lion_distill.train.loop import accumulation_windows

    assert [len(w) for w in accumulation_windows(range(7), 3)] == [3, 3, 1]
    assert [len(w) for w in accumulation_windows(range(6), 3)] == [3, 3]


def test_plain_torch_steps_lower_the_loss_without_ray(tiny_models):
    from lion_distill.config.models import TrainConfig

    path = str(tiny_models.llama)
    cfg = TrainConfig(learning_rate=1e-3, warmup_ratio=0.0, batch_size=4)
    model = step.setup_model(step.load_model(path, "causal"), torch.device("cpu"))
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=6)
    out = batches.tokenize_causal(
        _rows(
            instruction=[f"Count to {i}." for i in range(4)],
            input=[""] * 4,
            response=[" ".join(map(str, range(i + 1))) for i in range(4)],
        ),
        tokenizer_path=path,
        max_length=128,
    )
    batch = batches.collate_causal(out, pad_id=0)
    losses = []
    for _ in range(6):
        losses.append(step.backward(model, batch, cfg, torch.device("cpu")))
        step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    assert losses[-1] < losses[0] - 1.0


def test_step_code_imports_without_ray():
    import subprocess
    import sys

    code = "import sys, lion_distill.train.step, lion_distill.train.batches; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    # What benchmarks/gpu_smoke.py runs on a lent GPU, where only torch, transformers, peft and
    # bitsandbytes are installed: not even pydantic or pyarrow.
    smoke = "lion_distill.train.step, lion_distill.train.flops, lion_distill.train.lora, lion_distill.tiny"
    code = f"import sys, {smoke}; sys.exit(bool({{'ray', 'pydantic', 'pyarrow'}} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_predict_labels_answers_the_label_task_and_accuracy_is_exact(tiny_models, tmp_path):
    """A T5 taught one fixed label and one long rationale (step.py, no Ray): predict_labels
    must return the label, never the rationale, and accuracy is exactly 1 and 0."""
    from transformers import AutoTokenizer

    from lion_distill.config.models import TrainConfig
    from lion_distill.step_by_step import accuracy, predict_labels

    path = str(tiny_models.t5)
    torch.manual_seed(0)
    cfg = TrainConfig(architecture="seq2seq", learning_rate=1e-2, warmup_ratio=0.0, rationale_weight=1.0)
    model = step.setup_model(step.load_model(path, "seq2seq"), torch.device("cpu"))
    optimizer, scheduler = step.build_optimizer(model, cfg, total_steps=60)
    inputs = [f"Is {n} a number?" for n in range(8)]
    rows = _rows(input=inputs, label=["yes"] * 8, rationale=["it is written with digits only so it is one"] * 8)
    batch = batches.collate_seq2seq(
        batches.tokenize_seq2seq(rows, tokenizer_path=path, max_length=64, task="multitask"),
        pad_id=batches.load_tokenizer(path).pad_token_id,
    )
    for _ in range(60):
        step.backward(model, batch, cfg, torch.device("cpu"))
        step.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
    model.save_pretrained(tmp_path / "t5")
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "t5")
    predictions = predict_labels(str(tmp_path / "t5"), inputs, max_new_tokens=16)
    assert predictions == ["yes"] * 8
    assert accuracy(predictions, ["yes"] * 8, "cqa") == 1.0 and accuracy(predictions, ["no"] * 8, "cqa") == 0.0
    assert accuracy(predictions, ["yes", "no"] * 4, "cqa") == 0.5


def test_each_epoch_is_one_seeded_global_shuffle_dealt_to_the_ranks():
    n, ranks = 23, 2
    epoch0 = [batches.epoch_order(n, ranks, r, seed=42, epoch=0) for r in range(ranks)]
    assert all(len(o) == n // ranks for o in epoch0)
    assert not set(epoch0[0]) & set(epoch0[1])  # no row on two ranks; one row (the remainder) left out
    # Deterministic: a resumed epoch sees exactly the same order, so skipping k micro-batches skips those rows.
    assert all((batches.epoch_order(n, ranks, r, 42, 0) == epoch0[r]).all() for r in range(ranks))
    # Global: a pool ordered hard-first is mixed, and the next epoch has another order.
    assert not (np.sort(epoch0[0]) == epoch0[0]).all()
    assert not (batches.epoch_order(n, ranks, 0, 42, 1) == epoch0[0]).all()
    assert sorted(batches.epoch_order(n, 1, 0, 42, 3)) == list(range(n))
    columns = {"input_ids": np.empty(n, dtype=object), "n_target_tokens": np.arange(n)}
    columns["input_ids"][:] = [np.arange(i + 1) for i in range(n)]
    micro = list(batches.micro_batches(columns, epoch0[1], 4))
    assert [len(b["n_target_tokens"]) for b in micro] == [4, 4, 3]
    assert [len(x) - 1 for b in micro for x in b["input_ids"]] == list(epoch0[1])


def test_a_rank_keeps_its_share_of_the_streamed_rows_in_epoch_order():
    """What a Ray Train rank does with the dataset streamed past it (loop._train_worker): the
    global row index numbers the blocks' rows from their counts, and of every batch the rank
    keeps only the rows epoch_order deals it, in that order, whatever order the blocks arrive in."""
    n, ranks, counts = 23, 3, [5, 0, 7, 4, 7]
    offsets = batches.block_offsets(counts)
    assert list(offsets) == [0, 5, 5, 12, 16]
    tokens = [np.arange(3 if 12 <= i < 16 else i % 5 + 1) + 100 * i for i in range(n)]  # ragged; equal in block 12..15
    blocks = []
    for offset, count in zip(offsets, counts):
        index = np.arange(offset, offset + count)
        ids = np.empty(count, dtype=object)
        ids[:] = [tokens[i] for i in index]
        if count == 4:  # Ray hands equal-length rows of a batch as one 2-D array
            ids = np.stack([tokens[i] for i in index])
        blocks.append({batches.ROW: index, "input_ids": ids, "n_target_tokens": index * 10})
    shares = []
    for rank in range(ranks):
        order = batches.epoch_order(n, ranks, rank, seed=7, epoch=2)
        rows = batches.rows_of(reversed(blocks), order)  # the blocks in another order than the index
        assert set(rows) == {"input_ids", "n_target_tokens"} and rows["input_ids"].dtype == object
        assert list(rows["n_target_tokens"]) == list(order * 10)
        assert all(np.array_equal(x, tokens[i]) for x, i in zip(rows["input_ids"], order))
        assert all(x.base is None for x in rows["input_ids"])  # copies: no row keeps its whole block alive
        shares.append(set(order))
    assert len(set.union(*shares)) == ranks * (n // ranks)
    with pytest.raises(ValueError, match="1 of the 3 rows"):  # the last block, rows 16..22, never came
        batches.rows_of(blocks[:-1], [0, 22, 5])
    with pytest.raises(ValueError, match="twice"):
        batches.rows_of(blocks + blocks[:1], np.arange(3))


@pytest.mark.parametrize("total_steps", [1, 2, 3])
def test_a_short_run_has_a_step_that_learns(total_steps):
    # Warmup starts at lr 0: a run whose every step were warmup (one step at 3% warmup, as an
    # iteration imitating a handful of new instructions) would train nothing at all.
    from lion_distill.config.models import TrainConfig

    optimizer, scheduler = step.build_optimizer(
        torch.nn.Linear(2, 2), TrainConfig(learning_rate=1.0, warmup_ratio=0.03), total_steps
    )
    rates = []
    for _ in range(total_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert max(rates) > 0.5


def test_validation_steps_and_the_kept_one():
    from lion_distill.train.validation import Validation, best_step, improved, validation_steps

    assert validation_steps(12, 3) == [4, 8, 12] and validation_steps(10, 3) == [4, 7, 10]
    assert validation_steps(2, 5) == [1, 2] and validation_steps(7, 1) == [7]  # the last is always the run's end
    history = [{"step": 4, "score": 0.5}, {"step": 8, "score": 0.75}, {"step": 12, "score": 0.75}]
    assert improved(0.5, []) and not improved(0.75, history) and improved(0.8, history)
    assert best_step(history) == 8 and best_step([]) is None  # a tie keeps the earlier export
    with pytest.raises(ValueError, match="at least 1"):
        Validation(count=0, score=len)
