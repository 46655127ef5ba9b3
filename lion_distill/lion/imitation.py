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
teacher's settings changed since, when only its complete answers are kept.

With `distill.mode: logit_kd` the teacher also scores its answers (its top-k log-probabilities at each
answer token, lion_distill.distill.signal), and the student learns those (lion_distill.train.kd_loss)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config import RunConfig
from lion_distill.data import RESPONSE_SCHEMA, RunDir
from lion_distill.data.conversations import is_conversation, user_turns
from lion_distill.data.pools import RowFiles
from lion_distill.data.remote import export_complete
from lion_distill.data.schema import TRAINING_ROW_SCHEMAS
from lion_distill.data.tables import first_per_id, in_order
from lion_distill.distill.signal import teacher_signal, with_signal
from lion_distill.errors import NothingToImitate, TooFewRows
from lion_distill.lion.conversations import conversation_sft, earlier_turns
from lion_distill.lion.iteration import known_teacher_answers, pool, pool_ids_not_in, rel, shown, write_stage_metrics
from lion_distill.lion.prompts import teacher_messages
from lion_distill.llm.answers import answer, answered, answered_mask, response_table, write_responses
from lion_distill.llm.prompts import prompt_format, training_row
from lion_distill.llm.serving import training
from lion_distill.llm.transient import stop_if_transient, transient_mask
from lion_distill.metrics import StageRecord, usage
from lion_distill.runner import StageResult

log = logging.getLogger("lion_distill.lion")

RESPONSES, TEACHER = "teacher_responses.parquet", "teacher.json"
TURNS = "teacher_turns.parquet"  # the teacher's answers to conversations' earlier user turns


def imitation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> StageResult:
    """-> the stage's result: outputs the new student checkpoint, counters, iteration summary."""
    train_pool = shown(pool(run, k, "train"), cfg.lion.show_input)
    responses, answers, records = teacher_answers(cfg, run, k, train_pool)
    fmt = prompt_format(cfg.student)
    sft, truncated = sft_table(train_pool, responses, answers, cfg.lion.train_on_truncated, fmt, cfg.teacher.reasoning)
    failed = responses.num_rows - pc.sum(answered_mask(responses).cast(pa.int64())).as_py() if responses.num_rows else 0
    check_trainable(cfg, k, train_pool.num_rows, sft.num_rows, truncated, failed)
    if cfg.distill.mode == "logit_kd" and sft.num_rows:
        sft = _with_teacher_signal(cfg, run, k, train_pool, responses, sft, records)
    trained = train_student(cfg, run, k, student_model, sft, records)
    student_model = trained or student_model
    log.info(
        "iteration %d imitation: %d instructions, %d answers trained on, %d of them truncated (%s); student %s",
        k,
        train_pool.num_rows,
        sft.num_rows,
        truncated,
        "trained without eos" if cfg.lion.train_on_truncated else "left out",
        student_model,
    )
    extra = {
        "lion/imitation_asked": train_pool.num_rows,
        "lion/imitation_failed_answers": failed,
        "lion/imitation_truncated_answers": truncated,
        "lion/imitation_trained": sft.num_rows,
        "lion/imitation_kept_student": int(trained is None),
    }
    write_stage_metrics(run, k, "imitation", records, extra)
    summary = {
        "imitation_rows": train_pool.num_rows,
        "imitation_answered": responses.num_rows - failed,
        "imitation_truncated": truncated,
        "imitation_trained": sft.num_rows,
        "imitation_kept_student": trained is None,
    }
    return StageResult({"student_model": student_model}, usage(records), summary)


def teacher_answers(
    cfg: RunConfig, run: RunDir, k: int, train_pool: pa.Table
) -> tuple[pa.Table, pa.Table, list[StageRecord]]:
    """-> (the teacher's answer to each train-pool instruction, in its order; every answer known,
    a conversation's earlier turns' included; the records of the calls that bought them). Those
    paid for before are reused; the rest are asked now, and all are written before training."""
    saved, records = saved_answers(cfg, run, k)
    # This attempt's saved answers first: they win over an earlier iteration's.
    known = first_per_id(
        pa.concat_tables([saved, known_teacher_answers(run, k - 1) if k else RESPONSE_SCHEMA.empty_table()])
    )
    todo = train_pool.filter(pool_ids_not_in(train_pool, known))
    # A conversation's earlier user turns are asked too (lion_distill.lion.conversations).
    todo = pa.concat_tables([todo, earlier_turns(train_pool, known)])
    answers = known
    if todo.num_rows:
        fresh, record = answer(
            cfg.teacher,
            todo,
            teacher_messages,
            stage="imitation/teacher",
            role_name="teacher",
            run_dir=run,
            parts=rel(k, "imitation", "parts"),
        )
        records.append(record)
        # Before anything is saved or trained: a failure that passes is asked again by the next attempt.
        stop_if_transient(f"iteration {k} imitation: the teacher", fresh)
        answers = pa.concat_tables([response_table(fresh), known])
    responses = in_order(answers, train_pool.column("id"))
    write_responses(run, rel(k, "imitation", RESPONSES), responses)
    turns = earlier_turns(train_pool)
    if turns.num_rows:
        write_responses(run, rel(k, "imitation", TURNS), in_order(answers, turns.column("id")))
    # With the figures of the call that bought them: a resumed stage reports them as its own.
    run.write_json(
        rel(k, "imitation", TEACHER), {"settings": _teacher_settings(cfg), "records": [asdict(r) for r in records]}
    )
    return responses, answers, records


TRAINED = "train.json"  # the training that made the exported student: what it depended on, and its record


def train_student(
    cfg: RunConfig, run: RunDir, k: int, student_model: str, sft: pa.Table, records: list[StageRecord]
) -> str | None:
    """The student trained on `sft` (its export), its record added to `records`; None where nothing
    can be trained (fewer usable rows than training workers: the previous student stays, as
    `lion.min_imitation_fraction` allows). An export this same training made before (the stage was
    killed before it was recorded) is taken as it is: a stage whose export exists does not retrain."""
    fingerprint = _training_fingerprint(cfg, student_model, sft)
    saved = run.read_json(rel(k, "imitation", TRAINED)) or {}
    student = run.uri_of(rel(k, "imitation", "student"))
    if saved.get("fingerprint") == fingerprint and export_complete(run.fs, run.path(rel(k, "imitation", "student"))):
        log.info("iteration %d imitation: %s was exported by this same training; not trained again", k, student)
        records.append(StageRecord(**saved["record"]))
        return student
    try:
        if sft.num_rows < max(1, cfg.train.num_workers):  # every training worker needs a row
            raise TooFewRows(f"{sft.num_rows} answers to imitate cannot feed {cfg.train.num_workers} workers")
        result = _train(cfg, run, k, student_model, sft)
    except TooFewRows as e:
        log.warning("iteration %d imitation: %s; the student stays %s", k, e, student_model)
        return None
    result.record.stage = "imitation/train"  # one stage vocabulary across runs, whatever the Train run is named
    records.append(result.record)
    run.write_json(rel(k, "imitation", TRAINED), {"fingerprint": fingerprint, "record": asdict(result.record)})
    return result.model_dir


def _with_teacher_signal(
    cfg: RunConfig, run: RunDir, k: int, train_pool: pa.Table, responses: pa.Table, sft: pa.Table, records: list
) -> pa.Table:
    """The training rows with the teacher's token signal of their answers (lion_distill.distill.signal),
    scored once and kept in iter_k/imitation/signal/ (a resumed imitation reads it back)."""
    trained = train_pool.filter(pc.is_in(train_pool.column("id"), value_set=sft.column("id").combine_chunks()))
    signal, record = teacher_signal(
        cfg.teacher,
        cfg.distill,
        trained,
        responses,
        teacher_messages,
        run=run,
        stage="imitation/signal",
        parts=rel(k, "imitation", "signal"),
    )
    records.append(record)
    return with_signal(sft, signal)


def _training_fingerprint(cfg: RunConfig, student_model: str, sft: pa.Table) -> str:
    """What an imitation's training depends on: its settings, the student it starts from, its rows."""
    digest = hashlib.sha256(
        json.dumps(
            [cfg.train.model_dump(mode="json"), cfg.distill.model_dump(mode="json"), student_model], sort_keys=True
        ).encode()
    )
    for start in range(0, sft.num_rows, SFT_CHUNK_ROWS):
        digest.update(json.dumps(sft.slice(start, SFT_CHUNK_ROWS).to_pylist(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _teacher_settings(cfg: RunConfig) -> dict:
    """What the teacher's answers depend on: a change makes its saved truncated answers stale."""
    t = cfg.teacher
    settings = {"model": t.model, "max_model_len": t.max_model_len, "sampling": t.sampling.model_dump(mode="json")}
    return settings | ({"chat_template_kwargs": t.chat_template_kwargs} if t.chat_template_kwargs else {})


def saved_answers(cfg: RunConfig, run: RunDir, k: int) -> tuple[pa.Table, list[StageRecord]]:
    """This imitation's teacher answers from an earlier attempt (training killed midway) and the
    records of the calls that made them. Under the same teacher settings all of them, as they
    were; under changed settings only the complete answers, and no record (a larger max_tokens
    must be able to complete the answers it cut)."""
    saved = run.read_json(rel(k, "imitation", TEACHER)) or {}
    rows = pa.concat_tables(
        [RESPONSE_SCHEMA.empty_table()]
        + [
            run.read_table(path, schema=RESPONSE_SCHEMA)
            for name in (RESPONSES, TURNS)
            if run.exists(path := rel(k, "imitation", name))
        ]
    )
    rows = rows.filter(pc.invert(transient_mask(rows)))  # never an answer (files of an older engine had them)
    if saved.get("settings") == _teacher_settings(cfg):
        return rows, [StageRecord(**record) for record in saved["records"]]
    complete = pc.invert(pc.fill_null(pc.equal(rows.column("finish_reason"), "length"), False))
    return rows.filter(pc.and_(answered_mask(rows), complete)), []


def check_trainable(cfg: RunConfig, k: int, asked: int, trained: int, truncated: int, failed: int) -> None:
    """Stop the stage when fewer than `lion.min_imitation_fraction` of the answers are trainable."""
    least = cfg.lion.min_imitation_fraction
    if asked and trained < least * asked:
        cause = (
            f"{truncated} answers were cut at the teacher's max_tokens ({cfg.teacher.sampling.max_tokens}) or its "
            f"context and left out (lion.train_on_truncated: {str(cfg.lion.train_on_truncated).lower()}); raise "
            "teacher.sampling.max_tokens or set lion.train_on_truncated: true"
            if truncated
            else f"{failed} answers failed or were empty (the stage's metrics.json and report count them by reason)"
        )
        raise NothingToImitate(
            f"iteration {k} imitation: only {trained} of {asked} teacher answers are trainable, fewer than "
            f"lion.min_imitation_fraction ({least:g}): {cause}"
        )


def sft_rows(
    pool_rows: list[dict],
    answers: dict[str, dict],
    train_on_truncated: bool = False,
    prompt_format: str = "alpaca",
    reasoning: str = "drop",
) -> tuple[list[dict], int]:
    """-> (training rows in `prompt_format`'s layout, how many answers were truncated). A truncated
    answer is left out, or with `train_on_truncated` kept with `complete` False (trained without
    an end of turn). `chat`: a `messages` conversation, the teacher's thinking on its assistant
    turn with `reasoning` "keep"; `alpaca`: Lion's instruction, input, response, complete."""
    sft, truncated = [], 0
    for row in pool_rows:
        if is_conversation(row):
            if prompt_format != "chat":  # preflight refuses such a run (lion_distill.preflight)
                raise ValueError(f"row id={row['id']!r}: a conversation trains only in student.prompt_format chat")
            chat, cut = conversation_sft(row, answers, train_on_truncated, reasoning)
            truncated += cut
            sft += [{**chat, "id": row["id"]}] if chat else []
            continue
        response = answers[row["id"]]
        if not answered(response):
            continue
        complete = response.get("finish_reason") != "length"
        truncated += not complete
        if not (complete or train_on_truncated):
            continue
        sft.append(training_row(row, response, prompt_format, reasoning))
    return sft, truncated


SFT_CHUNK_ROWS = 8192  # pool rows made into training rows at once: Python rows for a chunk, never the pool


def sft_table(
    train_pool: pa.Table,
    responses: pa.Table,
    answers: pa.Table,
    train_on_truncated: bool = False,
    prompt_format: str = "alpaca",
    reasoning: str = "drop",
) -> tuple[pa.Table, int]:
    """sft_rows over the pool a chunk at a time -> (the training rows as a table, how many answers
    were truncated). `responses` are aligned with the pool; `answers` also hold a conversation's
    earlier turns' answers, which only its chunk reads."""
    schema, tables, truncated = TRAINING_ROW_SCHEMAS[prompt_format], [], 0
    for start in range(0, train_pool.num_rows, SFT_CHUNK_ROWS):
        rows = train_pool.slice(start, SFT_CHUNK_ROWS).to_pylist()
        by_id = {r["id"]: r for r in responses.slice(start, SFT_CHUNK_ROWS).to_pylist()}
        turns = [t["id"] for row in rows if is_conversation(row) for t in user_turns(row)[:-1]]
        if turns:
            found = answers.filter(pc.is_in(answers.column("id"), value_set=pa.array(turns, pa.string())))
            by_id = {**{r["id"]: r for r in first_per_id(found).to_pylist()}, **by_id}
        sft, cut = sft_rows(rows, by_id, train_on_truncated, prompt_format, reasoning)
        tables.append(pa.Table.from_pylist(sft, schema=schema))
        truncated += cut
    return pa.concat_tables([schema.empty_table(), *tables]), truncated


def _train(cfg: RunConfig, run: RunDir, k: int, student_model: str, sft: pa.Table):
    from lion_distill.train import train_causal_sft
    from lion_distill.train.kd_loss import KDLoss

    # Each iteration continues from the previous student, as in Lion's Algorithm 1.
    # Engines the student's training needs the GPUs of stop first (lion_distill.llm.serving).
    # A file per chunk of rows, so the training input's tokenisation spreads over the cluster.
    rows = RowFiles(run, rel(k, "imitation", "train_rows"))
    for start in range(0, sft.num_rows, SFT_CHUNK_ROWS):
        rows.add(sft.slice(start, SFT_CHUNK_ROWS))
    kd = KDLoss.of(cfg.distill) if cfg.distill.mode == "logit_kd" else None
    with training():
        result = train_causal_sft(
            cfg.train,
            student_model,
            rows.dataset(),
            run.uri_of(rel(k, "imitation", "student")),
            name=f"{cfg.name}-iter{k}-imitation",
            kd=kd,
            top_k=cfg.distill.top_k,
            prompt_format=prompt_format(cfg.student),
            chat_template_kwargs=cfg.student.chat_template_kwargs,
        )
    rows.remove()
    return result
