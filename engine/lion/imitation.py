"""Imitation: the teacher answers the train pool; the student is fine-tuned on those
answers (loss on the answer tokens only) and exported for the next stages."""
from __future__ import annotations

import logging

from engine.config import RunConfig
from engine.data import RunDir, pool_to_dataset
from engine.lion.iteration import (
    answered, collect, known_teacher_answers, pool_ids_not_in, pools, rel, usage, write_responses,
    write_stage_metrics,
)
from engine.llm import generate
from engine.llm.prompts import instruction_messages
from engine.llm.serving import training

log = logging.getLogger("engine.lion")


def imitation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> tuple[dict, dict, dict]:
    """-> (state outputs: the new student checkpoint, counters, iteration summary)."""
    import ray.data

    train_pool, _ = pools(run, k)
    known = known_teacher_answers(run, k - 1) if k else {}
    todo = train_pool.filter(pool_ids_not_in(train_pool, known)) if known else train_pool
    records, fresh = [], []
    if todo.num_rows:
        answers, record = generate(cfg.teacher, pool_to_dataset(todo), instruction_messages,
                                   stage="imitation/teacher", role_name="teacher", run_dir=run)
        records.append(record)
        fresh = collect(answers)
    by_id = {**{r["id"]: r for r in fresh}, **{i: known[i] for i in train_pool.column("id").to_pylist() if i in known}}
    responses = [by_id[i] for i in train_pool.column("id").to_pylist()]
    write_responses(run, rel(k, "imitation", "teacher_responses.parquet"), responses)

    sft = [{"instruction": row["instruction"], "input": row["input"], "response": by_id[row["id"]]["text"]}
           for row in train_pool.to_pylist() if answered(by_id[row["id"]])]
    summary = {"imitation_rows": train_pool.num_rows, "imitation_answered": len(sft)}
    if sft:
        result = _train(cfg, run, k, student_model, ray.data.from_items(sft))
        result.record.stage = "imitation/train"  # one stage vocabulary across runs, whatever the Train run is named
        records.append(result.record)
        student_model = result.model_dir
    else:
        log.warning("iteration %d: no answered instructions to imitate; the student stays %s", k, student_model)
    write_stage_metrics(run, k, "imitation", records, {"lion/imitation_failed_answers": len(responses) - len(sft)})
    return {"student_model": student_model}, usage(records), summary


def _train(cfg: RunConfig, run: RunDir, k: int, student_model: str, rows):
    from engine.train import train_causal_sft

    # Each iteration continues from the previous student, as in Lion's Algorithm 1.
    # Engines the student's training needs the GPUs of stop first (engine.llm.serving).
    with training():
        return train_causal_sft(cfg.train, student_model, rows, run.path(rel(k, "imitation", "student")),
                                name=f"{cfg.name}-iter{k}-imitation")
