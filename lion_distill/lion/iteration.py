"""What the three stages share: where an iteration's files go, which teacher answers are
already paid for, and each stage's figures (asking a role is lion_distill.llm.answers).

Run directory layout (one folder per iteration):

    state.json                      which stage of which iteration is complete
    iter_<k>/train_pool.parquet     the instructions the teacher answers for imitation
    iter_<k>/cache_pool.parquet     every instruction so far: discrimination judges these
    iter_<k>/imitation/             teacher_responses.parquet, student/ (Hugging Face export),
                                    train_rows/ (the training input, while the student trains)
    iter_<k>/<stage>/parts/         each LLM call's answers, block by block (lion_distill.llm.parts),
                                    and its requests/ while it runs
    iter_<k>/discrimination/        teacher_responses.parquet, student_responses.parquet, judgments.parquet
    iter_<k>/generation/            replies.parquet, new_instructions.parquet
    iter_<k>/<stage>/metrics.json   that stage's figures; iter_<k>/metrics.json merges them
    llm_cache/                      the openai backend's response cache and usage ledger
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import RESPONSE_SCHEMA, RunDir, read_pool
from lion_distill.data.tables import first_per_id, kept
from lion_distill.llm.answers import answered_mask
from lion_distill.llm.serving import take_engine_metrics
from lion_distill.metrics import Metrics, StageRecord


def rel(k: int, *parts: str) -> str:
    return "/".join([f"iter_{k}", *parts])


def known_teacher_answers(run: RunDir, upto: int) -> pa.Table:
    """Every successful teacher answer from iterations <= `upto`, one per instruction id (the
    first written), in RESPONSE_SCHEMA: a paid answer is reused, never bought twice
    (whatever backend serves the teacher)."""
    tables = [
        run.read_table(path, schema=RESPONSE_SCHEMA)
        for k in range(upto + 1)
        for stage in ("imitation", "discrimination")
        if run.exists(path := rel(k, stage, "teacher_responses.parquet"))
    ]
    known = pa.concat_tables([RESPONSE_SCHEMA.empty_table(), *tables])
    return first_per_id(kept(known, answered_mask(known)))


def pool_ids_not_in(pool: pa.Table, known: pa.Table) -> pa.ChunkedArray:
    """A mask of the pool rows whose id has no row in `known`."""
    return pc.invert(pc.is_in(pool.column("id"), value_set=known.column("id").combine_chunks()))


def pool(run: RunDir, k: int, name: str) -> pa.Table:
    """Iteration k's `train` or `cache` pool: a stage reads the one it uses only."""
    return read_pool(run, rel(k, f"{name}_pool.parquet"))


def shown(rows: pa.Table, show_input: bool) -> pa.Table:
    """Pool rows as the roles are shown them: with `lion.show_input` off, every `input` blank, as
    Lion's scripts ask the instruction alone. Ids, and the pools written, keep the input."""
    if show_input:
        return rows
    at = rows.schema.get_field_index("input")
    field = rows.schema.field(at)
    return rows.set_column(at, field, pa.repeat(pa.scalar("", field.type), rows.num_rows))


def write_stage_metrics(run: RunDir, k: int, stage: str, records: list[StageRecord], extra: dict) -> dict:
    """The stage's figures to iter_k/<stage>/metrics.json, merged into iter_k/metrics.json."""
    figures = Metrics(records).as_dict()
    figures.update(extra)
    figures.update(take_engine_metrics())  # engine_starts, engine_start_s/<role> during this stage
    run.write_json(rel(k, stage, "metrics.json"), figures)
    merge_iteration_metrics(run, k)
    return figures


def merge_iteration_metrics(run: RunDir, k: int) -> None:
    """iter_k/metrics.json: the iteration's stages' figures, engine starts summed over them.
    An evaluation stage (lion_distill.evaluate, which writes its own metrics.json) adds its
    engine starts only: the student's engine may start there."""
    merged = {}
    for name in ("imitation", "discrimination", "generation", "eval"):
        for key, value in run.read_json(rel(k, name, "metrics.json"), {}).items():
            if key.startswith("engine_start"):
                merged[key] = merged.get(key, 0) + value
            elif name != "eval":
                merged[key] = value
    run.write_json(rel(k, "metrics.json"), merged)
