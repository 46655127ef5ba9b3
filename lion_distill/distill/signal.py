"""The teacher token signal of answers a stage already has (docs/design.md, "Data contracts"): for
each answered row, the prompt the teacher was asked (its chat template over `to_prompt(row)`) and the
answer's tokens, scored by the teacher in one prefill (lion_distill.llm.scoring), written as parts
under the stage's folder and resumed block by block.

    signal, record = teacher_signal(cfg.teacher, cfg.distill, rows, answers, teacher_messages,
                                    run=run, stage="imitation/signal", parts="iter_0/imitation/signal")

The answer's tokens are the teacher tokenizer's of its text, with the end-of-sequence token after an
answer that stopped (not one cut at max_tokens): the scored ids are then exactly the ids the student
trains on (`response_ids`), one teacher distribution for each.
"""

from __future__ import annotations

import pyarrow as pa

from lion_distill.config.models import DistillConfig, RoleConfig
from lion_distill.data import RunDir
from lion_distill.data.tables import in_order
from lion_distill.llm.parts import read_answers
from lion_distill.llm.scoring import score, scoring_folder
from lion_distill.llm.token_signal import signal_schema
from lion_distill.metrics import StageRecord
from lion_distill.train.batches import load_tokenizer

CHUNK_ROWS = 4096  # rows tokenised at once on the driver
REQUEST_SCHEMA = pa.schema(
    [("id", pa.string()), ("prompt_ids", pa.list_(pa.int32())), ("answer_ids", pa.list_(pa.int32()))]
)
TRAINING_COLUMNS = {"token_ids": "response_ids", "topk_ids": "topk_ids", "topk_logprobs": "topk_logprobs"}


def teacher_tokenizer(teacher: RoleConfig, distill: DistillConfig) -> str:
    """Where the teacher's tokenizer is: distill.teacher_tokenizer, else the teacher's model."""
    return distill.teacher_tokenizer or teacher.model


def scoring_requests(rows: list[dict], answers: list[dict], to_prompt, tokenizer_path: str) -> pa.Table:
    """Pool rows and their answers (text, finish_reason) -> (id, prompt_ids, answer_ids)."""
    tok = load_tokenizer(tokenizer_path)
    texts = [tok.apply_chat_template(to_prompt(r), tokenize=False, add_generation_prompt=True) for r in rows]
    prompts = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    bodies = tok([a["text"] for a in answers], add_special_tokens=False)["input_ids"] if answers else []
    ends = [[tok.eos_token_id] if a.get("finish_reason") != "length" else [] for a in answers]
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "prompt_ids": prompts,
            "answer_ids": [body + end for body, end in zip(bodies, ends)],
        },
        schema=REQUEST_SCHEMA,
    )


def teacher_signal(
    teacher: RoleConfig,
    distill: DistillConfig,
    rows: pa.Table,
    answers: pa.Table,
    to_prompt,
    *,
    run: RunDir,
    stage: str,
    parts: str,
) -> tuple[pa.Table, StageRecord]:
    """The signal of each row's answer (`answers`: id, text, finish_reason; every row answered), in
    the rows' order. Rows are turned into requests a chunk at a time; the pass skips the ids its
    parts hold (lion_distill.llm.scoring)."""
    answers = in_order(answers, rows.column("id"))
    tokenizer = teacher_tokenizer(teacher, distill)
    requests = pa.concat_tables(
        [REQUEST_SCHEMA.empty_table()]
        + [
            scoring_requests(
                rows.slice(start, CHUNK_ROWS).to_pylist(),
                answers.slice(start, CHUNK_ROWS).select(["text", "finish_reason"]).to_pylist(),
                to_prompt,
                tokenizer,
            )
            for start in range(0, rows.num_rows, CHUNK_ROWS)
        ]
    )
    signal, record = score(
        teacher, requests, top_k=distill.top_k, stage=stage, role_name="teacher", run_dir=run, parts=parts
    )
    return in_order(signal, rows.column("id")), record


def read_signal(run: RunDir, teacher: RoleConfig, distill: DistillConfig, *, stage: str, parts: str) -> pa.Table:
    """What teacher_signal wrote for this stage, read back from its parts (an empty table if none)."""
    folder = scoring_folder(parts, teacher, stage, distill.top_k)
    names = signal_schema(distill.top_k).names
    return read_answers(run, folder, names) or signal_schema(distill.top_k).empty_table()


def with_signal(training: pa.Table, signal: pa.Table) -> pa.Table:
    """Training rows (with `id`) plus their teacher's `response_ids`, `topk_ids`, `topk_logprobs`."""
    found = in_order(signal, training.column("id"))
    for source, name in TRAINING_COLUMNS.items():
        training = training.append_column(name, found.column(source))
    return training
