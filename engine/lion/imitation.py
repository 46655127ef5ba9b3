"""Imitation: the teacher answers the train pool; the student is fine-tuned on those
answers (loss on the answer tokens only) and exported for the next stages.

A teacher answer cut short (`finish_reason` "length": `max_tokens`, or the engine's
context cap) is counted and, by default, left out of training: trained with an
end-of-sequence token it would teach the student to stop mid-answer. With
`lion.train_on_truncated` it is trained on without one. When fewer than
`lion.min_imitation_fraction` of the instructions leave an answer to train on, the stage
stops with the cause instead of training on (nearly) nothing.

The teacher's answers are written before training starts: a resumed imitation (training
killed midway) trains on those same answers and asks the teacher nothing again, unless the
teacher's settings changed since, when only its complete answers are kept."""
from __future__ import annotations

import logging
from dataclasses import asdict

import pyarrow as pa
import pyarrow.compute as pc

from engine.config import RunConfig
from engine.data import RunDir
from engine.data.conversations import is_conversation
from engine.lion.conversations import conversation_sft, earlier_turns
from engine.lion.iteration import (
    answer, answered, known_teacher_answers, pools, read_rows, rel, usage, write_responses,
    write_stage_metrics,
)
from engine.lion.prompts import teacher_messages
from engine.llm.serving import training
from engine.metrics import StageRecord
from engine.train import delete_checkpoints

log = logging.getLogger("engine.lion")

RESPONSES, TEACHER = "teacher_responses.parquet", "teacher.json"
TURNS = "teacher_turns.parquet"  # the teacher's answers to conversations' earlier user turns


class NothingToImitate(ValueError):
    """Too few of an imitation's answers are trainable: the run would train on (nearly) nothing."""


def imitation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> tuple[dict, dict, dict]:
    """-> (state outputs: the new student checkpoint, counters, iteration summary)."""
    train_pool, _ = pools(run, k)
    saved, records = saved_answers(cfg, run, k)
    earlier = known_teacher_answers(run, k - 1).to_pylist() if k else []
    known = {**{r["id"]: r for r in earlier}, **saved}
    known_ids = pa.array(list(known), pa.string())
    todo = train_pool.filter(pc.invert(pc.is_in(train_pool.column("id"), value_set=known_ids))) if known else train_pool
    # A conversation's earlier user turns are asked too (engine.lion.conversations).
    todo = pa.concat_tables([todo, earlier_turns(train_pool, known)])
    fresh = []
    if todo.num_rows:
        fresh, record = answer(cfg.teacher, todo, teacher_messages, stage="imitation/teacher",
                               role_name="teacher", run_dir=run, parts=rel(k, "imitation", "parts"))
        fresh = fresh.to_pylist()
        records.append(record)
    by_id = {**known, **{r["id"]: r for r in fresh}}
    responses = [by_id[i] for i in train_pool.column("id").to_pylist()]
    write_responses(run, rel(k, "imitation", RESPONSES), responses)
    turns = earlier_turns(train_pool, {})
    if turns.num_rows:
        write_responses(run, rel(k, "imitation", TURNS), [by_id[i] for i in turns.column("id").to_pylist()])
    # With the figures of the call that bought them: a resumed stage reports them as its own.
    run.write_json(rel(k, "imitation", TEACHER), {"settings": _teacher_settings(cfg), "records": [asdict(r) for r in records]})

    sft, truncated = sft_rows(train_pool.to_pylist(), by_id, cfg.lion.train_on_truncated)
    failed = sum(not answered(r) for r in responses)
    check_trainable(cfg, k, train_pool.num_rows, len(sft), truncated, failed)
    summary = {"imitation_rows": train_pool.num_rows, "imitation_answered": len(responses) - failed,
               "imitation_truncated": truncated, "imitation_trained": len(sft)}
    if len(sft) >= max(1, cfg.train.num_workers):  # every training worker needs a row
        result = _train(cfg, run, k, student_model, sft)
        if not cfg.train.keep_checkpoints:  # the export is written: only an unfinished training needs them
            delete_checkpoints(result.model_dir)
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
        "lion/imitation_asked": train_pool.num_rows,
        "lion/imitation_failed_answers": failed,
        "lion/imitation_truncated_answers": truncated,
        "lion/imitation_trained": len(sft)})
    return {"student_model": student_model}, usage(records), summary


def _teacher_settings(cfg: RunConfig) -> dict:
    """What the teacher's answers depend on: a change makes its saved truncated answers stale."""
    t = cfg.teacher
    return {"model": t.model, "max_model_len": t.max_model_len, "sampling": t.sampling.model_dump(mode="json")}


def saved_answers(cfg: RunConfig, run: RunDir, k: int) -> tuple[dict[str, dict], list[StageRecord]]:
    """This imitation's teacher answers from an earlier attempt (training killed midway), by id,
    and the records of the calls that made them. Under the same teacher settings all of them, as
    they were; under changed settings only the complete answers, and no record (a larger
    max_tokens must be able to complete the answers it cut)."""
    saved = run.read_json(rel(k, "imitation", TEACHER)) or {}
    rows = [r for name in (RESPONSES, TURNS) for r in read_rows(run, rel(k, "imitation", name))]
    if saved.get("settings") == _teacher_settings(cfg):
        return {r["id"]: r for r in rows}, [StageRecord(**record) for record in saved["records"]]
    return {r["id"]: r for r in rows if answered(r) and r.get("finish_reason") != "length"}, []


def check_trainable(cfg: RunConfig, k: int, asked: int, trained: int, truncated: int, failed: int) -> None:
    """Stop the stage when fewer than `lion.min_imitation_fraction` of the answers are trainable."""
    least = cfg.lion.min_imitation_fraction
    if asked and trained < least * asked:
        cause = (f"{truncated} answers were cut at the teacher's max_tokens ({cfg.teacher.sampling.max_tokens}) or its "
                 f"context and left out (lion.train_on_truncated: {str(cfg.lion.train_on_truncated).lower()})"
                 if truncated else f"{failed} answers failed or were empty")
        raise NothingToImitate(
            f"iteration {k} imitation: only {trained} of {asked} teacher answers are trainable, fewer than "
            f"lion.min_imitation_fraction ({least:g}): {cause}; raise teacher.sampling.max_tokens or set "
            "lion.train_on_truncated: true")


def sft_rows(pool_rows: list[dict], answers: dict[str, dict], train_on_truncated: bool = False) -> tuple[list[dict], int]:
    """-> (training rows, how many answers were truncated). A truncated answer is left out,
    or with `train_on_truncated` kept with `complete` False (trained without eos)."""
    sft, truncated = [], 0
    for row in pool_rows:
        if is_conversation(row):
            chat, cut = conversation_sft(row, answers, train_on_truncated)
            truncated += cut
            sft += [chat] if chat else []
            continue
        response = answers[row["id"]]
        if not answered(response):
            continue
        complete = response.get("finish_reason") != "length"
        truncated += not complete
        if complete or train_on_truncated:
            sft.append({"instruction": row["instruction"], "input": row["input"], "response": response["text"],
                        "complete": complete, "messages": ""})
    return sft, truncated


def _train(cfg: RunConfig, run: RunDir, k: int, student_model: str, sft: list[dict]):
    import ray.data

    from engine.train import train_causal_sft

    # Each iteration continues from the previous student, as in Lion's Algorithm 1.
    # Engines the student's training needs the GPUs of stop first (engine.llm.serving).
    with training():
        return train_causal_sft(cfg.train, student_model, ray.data.from_items(sft),
                                run.uri_of(rel(k, "imitation", "student")), name=f"{cfg.name}-iter{k}-imitation")
