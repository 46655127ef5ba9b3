"""How far the student is from the teacher, without a judge: the student's mean negative
log-likelihood per answer token of the teacher's answers to the evaluation questions
(teacher-forced, asked in the format the student is trained in, `student.prompt_format`),
beside the teacher's on the same answers (asked in its chat template): the floor imitation can
approach. No API call and no judge: a small judge is near chance (benchmarks/RESULTS.md),
this measure is not.

Run directory (beside the evaluation's own files, lion_distill.evaluate.evaluation):

    eval/teacher_answers.parquet   the teacher's answers to the questions, asked once per run
    eval/teacher_nll.json          the floor, computed once per run
    <out>/nll.json                 the student's figure and the floor, also in <out>/metrics.json

The NLL runs as a Ray task beside the engines (a GPU when the cluster has one: the
student's training GPUs are free while it is evaluated), with transformers, so it needs
the models as folders a worker can load; a teacher served by an API has no floor.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from lion_distill.config import RoleConfig
from lion_distill.data import RunDir
from lion_distill.llm.answers import answer, answered, read_rows, write_responses
from lion_distill.llm.prompts import instruction_messages
from lion_distill.train.batches import IGNORE, collate_causal, load_tokenizer, tokenize_causal
from lion_distill.train.step import masked_token_loss

log = logging.getLogger("lion_distill.evaluate")

TEACHER_ANSWERS = "eval/teacher_answers.parquet"
TEACHER_NLL = "eval/teacher_nll.json"


def answer_rows(questions: list[dict], answers: list[dict]) -> list[dict]:
    """Training-shaped rows (instruction, input, response, complete) of the usable answers."""
    return [
        {
            "instruction": q["instruction"],
            "input": q["input"],
            "response": a["text"],
            "complete": a.get("finish_reason") != "length",
        }
        for q, a in zip(questions, answers)
        if answered(a)
    ]


@torch.inference_mode()
def mean_nll(
    model_path: str,
    rows: list[dict],
    template: str,
    *,
    max_length: int = 2048,
    batch_size: int = 8,
    chat_template_kwargs: dict | None = None,
) -> dict:
    """-> {"nll": mean NLL per answer token (its end of turn included, as trained), "tokens",
    "answers"} of `model_path` on the rows' responses, asked in `template` ("alpaca" | "chat":
    lion_distill.train.batches.tokenize_causal, the training's own tokenisation)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_path)
    columns = {k: [r[k] for r in rows] for k in ("instruction", "input", "response", "complete")}
    encoded = tokenize_causal(
        columns,
        tokenizer_path=model_path,
        max_length=max_length,
        template=template,
        chat_template_kwargs=chat_template_kwargs,
    )
    keep = [i for i, n in enumerate(encoded["n_target_tokens"]) if n > 0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total, tokens = 0.0, 0
    for start in range(0, len(keep), batch_size):
        idx = keep[start : start + batch_size]
        batch = collate_causal({k: [encoded[k][i] for i in idx] for k in ("input_ids", "labels")}, pad_id=pad)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total += float(masked_token_loss(logits[:, :-1], labels, torch.tensor(1.0, device=device)))  # the sum
        tokens += int((labels != IGNORE).sum())
    return {"nll": total / tokens if tokens else None, "tokens": tokens, "answers": len(keep)}


def _remote_nll(role: RoleConfig, rows: list[dict], template: str) -> dict:
    """mean_nll of a role's model in a Ray task: on a GPU where the cluster has one."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus)(mean_nll)
    return ray.get(task.remote(role.model, rows, template, chat_template_kwargs=role.chat_template_kwargs))


def teacher_answers(teacher: RoleConfig, questions: list[dict], run: RunDir) -> tuple[list[dict], list]:
    """The teacher's answers to the questions (chat messages, as in imitation), asked once per
    run directory -> (answers in question order, the records of this call)."""
    if run.exists(TEACHER_ANSWERS):
        return read_rows(run, TEACHER_ANSWERS), []
    rows = [{"id": q["id"], "instruction": q["instruction"], "input": q["input"]} for q in questions]
    answers, record = answer(
        teacher, rows, instruction_messages, stage="eval/teacher", role_name="teacher", run_dir=run
    )
    answers = answers.to_pylist()
    write_responses(run, TEACHER_ANSWERS, answers)
    return answers, [record]


def nll_gap(
    teacher: RoleConfig, student: RoleConfig, prompt_format: str, questions: list[dict], run: RunDir, out: str
) -> tuple[dict, list]:
    """-> ({"student_nll", "teacher_nll", "nll_answers", "nll_tokens"}, records): the student's
    NLL on the teacher's answers, asked in `prompt_format`, and the teacher's own (None for a
    teacher served by an API)."""
    answers, records = teacher_answers(teacher, questions, run)
    rows = answer_rows(questions, answers)
    floor = run.read_json(TEACHER_NLL)
    if floor is None:
        floor = {"nll": None} if teacher.backend == "openai" else _remote_nll(teacher, rows, "chat")
        run.write_json(TEACHER_NLL, floor)
    student_nll = _remote_nll(student, rows, prompt_format)
    figures = {
        "student_nll": student_nll["nll"],
        "teacher_nll": floor["nll"],
        "nll_answers": student_nll["answers"],
        "nll_tokens": student_nll["tokens"],
    }
    run.write_json(f"{out}/nll.json", figures)
    log.info(
        "%s: student NLL %s on %d teacher answers (%d tokens); the teacher's own %s",
        out,
        _fmt(figures["student_nll"]),
        student_nll["answers"],
        student_nll["tokens"],
        _fmt(figures["teacher_nll"]),
    )
    return figures, records


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
