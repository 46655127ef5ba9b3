"""The teacher token signal without Ray: engines' logprob maps into fixed-width top-k lists
(lion_distill.llm.token_signal), the teacher's ids and top k at the student's label positions
(lion_distill.train.teacher_signal), a scoring pass's rows (lion_distill.distill.signal), and the
logit-KD step on the tiny model (lion_distill.train.step)."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from lion_distill.config.models import LoraConfig
from lion_distill.distill.divergence import hard_by_divergence
from lion_distill.distill.signal import scoring_requests, with_signal
from lion_distill.lion.prompts import teacher_messages
from lion_distill.llm.token_signal import SignalError, prompt_topk, signal_table, topk_of_steps
from lion_distill.train import batches, lora, step
from lion_distill.train.kd_loss import KDLoss
from lion_distill.train.teacher_signal import (
    TEACHER_IDS,
    TEACHER_LOGPROBS,
    collate_teacher,
    last_span,
    tokenize_with_teacher,
    with_teacher_tokens,
)

K = 3


def test_an_engines_candidates_become_the_top_k_most_likely_first_with_the_tokens_own():
    steps = [
        {5: -0.1, 7: -2.5, 9: -3.0, 11: -1.2},  # the token (7) inside the top 3
        {3: {"logprob": -0.5, "rank": 1}, 4: {"logprob": -1.5, "rank": 2}, 6: {"logprob": -2.0}, 8: -4.0},  # outside
    ]
    out = topk_of_steps(steps, [7, 8], K)
    assert out["topk_ids"] == [[5, 11, 7], [3, 4, 6]]
    np.testing.assert_allclose(out["topk_logprobs"], [[-0.1, -1.2, -2.5], [-0.5, -1.5, -2.0]], rtol=1e-6)
    np.testing.assert_allclose(out["token_logprobs"], [-2.5, -4.0], rtol=1e-6)
    # prompt_logprobs over prompt + answer: the first entry is None, the answer's are the last ones.
    assert prompt_topk([None, {1: -0.3, 2: -1.0, 3: -2.0}, *steps], 2, [7, 8], K) == out
    with pytest.raises(SignalError, match="fewer than top_k=3"):
        topk_of_steps([{5: -0.1, 7: -2.5}], [7], K)
    with pytest.raises(SignalError, match="2 positions"):
        topk_of_steps(steps, [7], K)
    table = signal_table([{"id": "a", "token_ids": [7, 8], **out, "source": "scoring"}], K)
    assert table.schema.field("topk_ids").type == pa.list_(pa.list_(pa.int32(), K))


def test_the_last_trained_turn_is_found():
    labels = np.array([-100, -100, 4, 5, -100, -100, 8, 9, 10])
    assert last_span(labels) == (6, 9)
    assert last_span(np.array([-100, 3, 4])) == (1, 3) and last_span(np.array([-100, -100])) == (2, 2)


def _training_rows(tok, answers: list[list[int]]) -> dict:
    rng = np.random.default_rng(0)
    topk = [[[int(t), *rng.integers(0, 50, K - 1)] for t in ids] for ids in answers]
    lp = [[[-0.5, -1.5, -2.5] for _ in ids] for ids in answers]
    return {
        "instruction": np.asarray(["Add the numbers.", "Say hi."], dtype=object),
        "input": np.asarray(["2 and 3", ""], dtype=object),
        "response": np.asarray([tok.decode(a) for a in answers], dtype=object),
        "complete": np.asarray([True, False]),
        "response_ids": np.asarray([np.asarray(a) for a in answers], dtype=object),
        "topk_ids": np.asarray([np.asarray(t) for t in topk], dtype=object),
        "topk_logprobs": np.asarray([np.asarray(x) for x in lp], dtype=object),
    }


def test_the_teachers_ids_and_top_k_sit_at_the_label_positions(tiny_models):
    path = str(tiny_models.llama)
    tok = batches.load_tokenizer(path)
    answers = [tok("five", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], [11, 12, 13, 14]]
    batch = _training_rows(tok, answers)
    out = tokenize_with_teacher(batch, tokenizer_path=path, max_length=256, k=K)
    for i, answer in enumerate(answers):
        labels = out["labels"][i]
        learnt = labels[labels != batches.IGNORE]
        assert learnt.tolist() == answer  # the teacher's own ids, not a re-tokenisation of the text
        assert out["input_ids"][i][-len(answer) :].tolist() == answer
        assert out["n_target_tokens"][i] == len(answer)
        ids = out[TEACHER_IDS][i].reshape(-1, K)
        assert ids[:, 0].tolist() == answer and len(out[TEACHER_LOGPROBS][i]) == len(answer) * K
    # Cut at max_length: the answer and its top k alike.
    short = tokenize_with_teacher(batch, tokenizer_path=path, max_length=len(out["input_ids"][1]) - 2, k=K)
    assert short["n_target_tokens"][1] == 2 and len(short[TEACHER_IDS][1]) == 2 * K
    padded = batches.collate_causal(out, pad_id=tok.pad_token_id)
    teacher = collate_teacher(out, padded["labels"], K)
    at = padded["labels"] != batches.IGNORE
    assert torch.equal(teacher[TEACHER_IDS][..., 0][at], padded["labels"][at])
    assert bool(torch.isnan(teacher[TEACHER_LOGPROBS][~at]).all()) and not bool(
        torch.isnan(teacher[TEACHER_LOGPROBS][at]).any()
    )
    # A row without a teacher answer keeps its text target, every position learnt by cross-entropy.
    plain = {**batch, "response_ids": np.asarray([np.asarray([]), np.asarray(answers[1])], dtype=object)}
    mixed = tokenize_with_teacher(plain, tokenizer_path=path, max_length=256, k=K)
    assert mixed["n_target_tokens"][0] > 0 and bool(np.isnan(mixed[TEACHER_LOGPROBS][0]).all())


def test_a_chat_row_learns_the_teachers_ids_in_its_last_assistant_turn(tiny_models):
    path = str(tiny_models.llama)
    answer = [41, 42, 43]
    turns = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi", "complete": True}]
    batch = {
        "messages": np.asarray([json.dumps(turns)], dtype=object),
        "response_ids": np.asarray([np.asarray(answer)], dtype=object),
        "topk_ids": np.asarray([np.asarray([[t, 1, 2] for t in answer])], dtype=object),
        "topk_logprobs": np.asarray([np.asarray([[-0.1, -2.0, -3.0]] * 3)], dtype=object),
    }
    out = tokenize_with_teacher(batch, tokenizer_path=path, max_length=256, k=K)
    labels = out["labels"][0]
    assert labels[labels != batches.IGNORE].tolist() == answer and out["input_ids"][0][-3:].tolist() == answer


def test_a_rows_earlier_sequences_learn_by_cross_entropy_its_last_from_the_teacher():
    """A template that rewrites earlier turns gives one sequence per assistant turn (lion_distill.train.chat):
    the teacher's answer is the row's last turn, so only the row's last sequence takes its signal."""
    out = {
        "input_ids": [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4, 5, 6, 7]), np.array([8, 9])],
        "labels": [np.array([-100, -100, 3, 4]), np.array([-100, -100, 3, 4, -100, 6, 7]), np.array([-100, 9])],
    }
    batch = {
        "response_ids": [np.array([60, 61, 62]), np.array([70])],
        "topk_ids": [np.array([[60, 1, 2], [61, 1, 2], [62, 1, 2]]), np.array([[70, 1, 2]])],
        "topk_logprobs": [np.full((3, K), -1.0), np.full((1, K), -1.0)],
    }
    got = with_teacher_tokens(batch, out, [0, 0, 1], max_length=64, k=K)
    assert got["input_ids"][0].tolist() == [1, 2, 3, 4] and bool(np.isnan(got[TEACHER_LOGPROBS][0]).all())
    assert got["input_ids"][1].tolist() == [1, 2, 3, 4, 5, 60, 61, 62]
    assert np.isnan(got[TEACHER_LOGPROBS][1]).tolist() == [True] * 2 * K + [False] * 3 * K  # earlier turn: CE
    assert got[TEACHER_IDS][1].reshape(-1, K)[2:, 0].tolist() == [60, 61, 62]
    assert got["input_ids"][2].tolist() == [8, 70] and got["n_target_tokens"].tolist() == [2, 5, 1]


@pytest.mark.parametrize("student", ["full", "lora"])
def test_a_logit_kd_step_learns_the_teachers_distribution(tiny_models, student):
    """One micro-batch, many steps: the student's divergence from a fixed teacher top-k falls, fully
    fine-tuned and through a LoRA adapter alike (the loss is the ordinary step's)."""
    path = str(tiny_models.llama)
    tok = batches.load_tokenizer(path)
    batch = _training_rows(tok, [[21, 22, 23, 24], [31, 32, 33]])
    out = tokenize_with_teacher(batch, tokenizer_path=path, max_length=128, k=K)
    padded = batches.collate_causal(out, pad_id=tok.pad_token_id)
    tensors = {**padded, **collate_teacher(out, padded["labels"], K)}
    torch.manual_seed(0)
    model = step.load_model(path, "causal")
    if student == "lora":
        model = lora.adapter(LoraConfig(r=8, alpha=16.0, target_modules="all-linear"), "causal")(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    kd = KDLoss()
    losses = []
    for _ in range(12):
        loss = step.causal_lm_loss(model, tensors, kd=kd)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < (0.5 if student == "full" else 0.85) * losses[0], losses  # an adapter learns slower
    # Without the teacher's top k in the batch the same call is the cross-entropy.
    torch.testing.assert_close(step.causal_lm_loss(model, padded, kd=kd), step.causal_lm_loss(model, padded))


def test_scoring_requests_are_the_teachers_prompt_and_the_answer_with_its_end(tiny_models):
    path = str(tiny_models.llama)
    tok = batches.load_tokenizer(path)
    rows = [{"id": "a", "instruction": "Say hi.", "input": ""}, {"id": "b", "instruction": "Count.", "input": "3"}]
    answers = [{"text": "hi there", "finish_reason": "stop"}, {"text": "one two", "finish_reason": "length"}]
    requests = scoring_requests(rows, answers, teacher_messages, path).to_pylist()
    rendered = tok.apply_chat_template(teacher_messages(rows[0]), tokenize=False, add_generation_prompt=True)
    assert requests[0]["prompt_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert requests[0]["answer_ids"] == tok("hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert requests[1]["answer_ids"] == tok("one two", add_special_tokens=False)["input_ids"]  # cut: no end
    training = pa.table({"id": ["b", "a"], "response": ["one two", "hi there"]})
    signal = pa.table(
        {
            "id": ["a", "b"],
            "token_ids": [[1], [2]],
            "topk_ids": [[[1, 2, 3]], [[2, 3, 4]]],
            "topk_logprobs": [[[-1.0, -2.0, -3.0]], [[-1.0, -2.0, -3.0]]],
        }
    )
    joined = with_signal(training, signal)
    assert joined.column("response_ids").to_pylist() == [[2], [1]]  # by id, in the training rows' order
    assert json.loads(json.dumps(joined.column("topk_ids").to_pylist()))[0] == [[2, 3, 4]]


def test_hard_instructions_are_the_most_divergent_or_those_past_tau():
    gaps = [0.5, 2.0, None, 1.0, 3.0]
    assert hard_by_divergence(gaps, tau=None, share=0.5) == [False, True, None, False, True]
    assert hard_by_divergence(gaps, tau=1.0, share=0.5) == [False, True, None, True, True]
    assert hard_by_divergence([0.1], tau=None, share=0.2) == [True]  # at least one
    assert hard_by_divergence([None], tau=None, share=0.5) == [None]
