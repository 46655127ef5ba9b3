"""Imitation: the teacher answers the train pool; the student is fine-tuned on those
answers (loss on the answer tokens only) and exported for the next stages.

A teacher answer cut short (`finish_reason` "length": `max_tokens`, or the engine's
context cap) is counted and, by default, left out of training: trained with an
end-of-sequence token it would teach the student to stop mid-answer. With
`lion.train_on_truncated` it is trained on without one."""
from __future__ import annotations

import logging

from engine.config import RunConfig
from engine.data import RunDir
from engine.lion.iteration import (
    answer, answered, known_teacher_answers, pool_ids_not_in, pools, rel, usage, write_responses, write_stage_metrics,
)
from engine.llm.prompts import instruction_messages
from engine.llm.serving import training

log = logging.getLogger("engine.lion")


def imitation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> tuple[dict, dict, dict]:
    """-> (state outputs: the new student checkpoint, counters, iteration summary)."""
    train_pool, _ = pools(run, k)
    known = known_teacher_answers(run, k - 1) if k else {}
    todo = train_pool.filter(pool_ids_not_in(train_pool, known)) if known else train_pool
    records, fresh = [], []
    if todo.num_rows:
        fresh, record = answer(cfg.teacher, todo, instruction_messages, stage="imitation/teacher",
                               role_name="teacher", run_dir=run)
        records.append(record)
    by_id = {**{r["id"]: r for r in fresh}, **{i: known[i] for i in train_pool.column("id").to_pylist() if i in known}}
    responses = [by_id[i] for i in train_pool.column("id").to_pylist()]
    write_responses(run, rel(k, "imitation", "teacher_responses.parquet"), responses)

    sft, truncated = sft_rows(train_pool.to_pylist(), by_id, cfg.lion.train_on_truncated)
    failed = sum(not answered(r) for r in responses)
    summary = {"imitation_rows": train_pool.num_rows, "imitation_answered": len(responses) - failed,
               "imitation_truncated": truncated}
    if len(sft) >= max(1, cfg.train.num_workers):  # every training worker needs a row
        result = _train(cfg, run, k, student_model, sft)
        result.record.stage = "imitation/train"  # one stage vocabulary across runs, whatever the Train run is named
        records.append(result.record)
        student_model = result.model_dir
    else:
        log.warning("iteration %d: %d answers to imitate, fewer than the %d training workers; the student stays %s",
                    k, len(sft), cfg.train.num_workers, student_model)
    log.info("iteration %d imitation: %d instructions, %d answers trained on, %d of them truncated (%s); student %s",
             k, train_pool.num_rows, len(sft), truncated, "trained without eos" if cfg.lion.train_on_truncated else "left out",
             student_model)
    write_stage_metrics(run, k, "imitation", records, {
        "lion/imitation_failed_answers": failed,
        "lion/imitation_truncated_answers": truncated})
    return {"student_model": student_model}, usage(records), summary


def sft_rows(pool_rows: list[dict], answers: dict[str, dict], train_on_truncated: bool = False) -> tuple[list[dict], int]:
    """-> (training rows, how many answers were truncated). A truncated answer is left out,
    or with `train_on_truncated` kept with `complete` False (trained without eos)."""
    sft, truncated = [], 0
    for row in pool_rows:
        response = answers[row["id"]]
        if not answered(response):
            continue
        complete = response.get("finish_reason") != "length"
        truncated += not complete
        if complete or train_on_truncated:
            sft.append({"instruction": row["instruction"], "input": row["input"], "response": response["text"],
                        "complete": complete})
    return sft, truncated


def _train(cfg: RunConfig, run: RunDir, k: int, student_model: str, sft: list[dict]):
    import ray.data

    from engine.train import train_causal_sft

    # Each iteration continues from the previous student, as in Lion's Algorithm 1.
    # Engines the student's training needs the GPUs of stop first (engine.llm.serving).
    with training():
        return train_causal_sft(cfg.train, student_model, ray.data.from_items(sft),
                                run.uri_of(rel(k, "imitation", "student")), name=f"{cfg.name}-iter{k}-imitation")
