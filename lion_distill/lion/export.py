"""A Lion run's data as Hugging Face `datasets`: one `save_to_disk` folder per iteration and a
dataset card (README.md) at the top.

    lion-distill export RUN_DIR --to DIR [--push-to-hub NAME]

Each iteration's DatasetDict has a split per stage that ran:
- `imitation`: the train pool and the teacher's answers; `messages` is the OpenAI-format
  conversation the student trained on (system prompt, earlier turns, the teacher's answer),
- `discrimination`: the cache pool, both answers, the referee's scores, `gap` and `hard`
  (null where the referee's review failed: excluded, never a number),
- `generation`: the new instructions with their seed (`parent_id`, `seed_instruction`) and
  kind (`origin`: hard | easy).

A run exports itself to RUN_DIR/datasets when it ends (local run directories); the command
exports any run directory again, anywhere, or pushes it to the Hugging Face hub (one
configuration per iteration; the hub client's own login, HF_TOKEN, is used and not stored).
The card names the teacher, referee and generator, the run's config (key *variable names*
only: config.json never holds a secret, and any field named like a secret is redacted),
row counts and rejects; the licence is the user's to set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lion_distill.data import POOL_SCHEMA, RESPONSE_SCHEMA, RunDir
from lion_distill.data.conversations import user_turns
from lion_distill.data.schema import history_turns
from lion_distill.data.tables import first_per_id
from lion_distill.data.uri_secrets import redacted as uri_redacted
from lion_distill.lion.iteration import rel
from lion_distill.llm.prompts import instruction_messages
from lion_distill.memory import give_back_memory
from lion_distill.runner import check_format

ROLES = ("teacher", "referee", "generator", "student")
SECRET = re.compile(r"(api_?key|token|secret|password)(?!_env)", re.IGNORECASE)
ROWS = 1 << 16  # rows of a split made and written at a time
MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))


def iterations(run: RunDir) -> list[int]:
    """The iterations a run has pools for (iter_-1 holds only the base student's evaluation)."""
    found = [
        int(p.base_name[5:])
        for p in run.fs.get_file_info(pafs.FileSelector(run.root))
        if p.base_name.startswith("iter_") and p.base_name[5:].isdigit()
    ]
    return sorted(k for k in found if run.exists(rel(k, "train_pool.parquet")))


def imitation_split(run: RunDir, k: int) -> Iterator[pa.Table]:
    # The pool's own answers first (they win on a shared id), then a conversation's earlier turns'.
    answers = first_per_id(
        pa.concat_tables(
            [
                _answers(run, rel(k, "imitation", name))
                for name in ("teacher_responses.parquet", "teacher_turns.parquet")
            ]
        )
    )
    pool = run.read_table(rel(k, "train_pool.parquet"))
    at = _positions(pool["id"], answers)
    for start, rows in _slices(pool):
        table = _with(
            rows,
            answers,
            at.slice(start, rows.num_rows),
            {"text": "teacher_answer", "finish_reason": "teacher_finish_reason"},
        )
        yield _pool_columns(table.append_column(pa.field("messages", MESSAGES), _messages(table, answers)))


def _answers(run: RunDir, path: str) -> pa.Table:
    """A responses file's id, text and finish_reason (none where the file is absent)."""
    table = run.read_table(path, schema=RESPONSE_SCHEMA) if run.exists(path) else RESPONSE_SCHEMA.empty_table()
    return table.select(["id", "text", "finish_reason"])


def _slices(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """(start, rows): a pool ROWS rows at a time (one empty slice for an empty pool). A split is
    made and written a slice at a time, so a million-row split is never whole in memory."""
    return ((start, table.slice(start, ROWS)) for start in range(0, max(table.num_rows, 1), ROWS))


def _positions(keys: pa.ChunkedArray, other: pa.Table) -> pa.Array:
    """Where each key is `other`'s id (ids unique), null where none is: one hash of `other`'s
    ids for a whole pool, taken a slice at a time."""
    return pc.index_in(keys, value_set=other["id"].combine_chunks())


def _with(table: pa.Table, other: pa.Table, at: pa.Array, names: dict[str, str]) -> pa.Table:
    """`table` with `other`'s columns `names`, renamed to their values, from `other`'s rows `at`
    (null at a null position); `table`'s rows and order kept."""
    found = other.select(list(names)).take(at)
    for name, renamed in names.items():
        table = table.append_column(pa.field(renamed, other.schema.field(name).type), found[name])
    return table


def _is_conversation(table: pa.Table) -> np.ndarray:
    """Which rows are conversations (a system prompt or earlier turns), as numpy booleans."""
    return np.asarray(
        pc.or_(
            pc.fill_null(pc.greater(pc.utf8_length(table["system"]), 0), False),
            pc.fill_null(pc.greater(pc.utf8_length(table["history"]), 0), False),
        )
    )


def _messages(table: pa.Table, answers: pa.Table) -> pa.Array:
    """The conversation the student was shown, per row: each user turn followed by the teacher's
    answer to it (null while an answer is missing). A plain instruction's two messages are
    built column-wise; a conversation's in Python, from the answers to its turns only."""
    n, chat = table.num_rows, _is_conversation(table)
    instruction, given = table["instruction"].combine_chunks(), pc.fill_null(table["input"], "").combine_chunks()
    user = pc.if_else(pc.equal(given, ""), instruction, pc.binary_join_element_wise(instruction, given, "\n\n"))
    answer = table["teacher_answer"].combine_chunks()
    contents = pa.concat_arrays([user, answer]).take(
        pa.array(np.column_stack([np.arange(n), n + np.arange(n)]).ravel())
    )
    turns = pa.StructArray.from_arrays([pa.array(["user", "assistant"] * n), contents], names=["role", "content"])
    missing = pc.or_(pc.fill_null(pc.equal(answer, ""), True), pa.array(chat))
    plain = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2), pa.int32()), turns, mask=missing).cast(
        MESSAGES
    )
    if not chat.any():
        return plain
    rows = table.filter(pa.array(chat)).to_pylist()
    needed = {turn["id"] for row in rows for turn in user_turns(row)}
    by_id = {
        r["id"]: r
        for r in answers.filter(pc.is_in(answers["id"], value_set=pa.array(list(needed), pa.string()))).to_pylist()
    }
    conversations = pa.array([_conversation(row, by_id) for row in rows], MESSAGES)
    at = np.arange(n)
    at[chat] = n + np.arange(len(rows))
    return pa.concat_arrays([plain, conversations]).take(pa.array(at))


def _conversation(row: dict, answers: dict[str, dict]) -> list[dict] | None:
    """The conversation the student was shown: each user turn followed by the teacher's answer
    to it (None while an answer is missing)."""
    turns = user_turns(row)
    texts = [answers.get(t["id"], {}).get("text") for t in turns]
    if not all(texts):
        return None
    messages = [m for m in instruction_messages(turns[0]) if m["role"] == "system"]
    for turn, text in zip(turns, texts):
        messages += [instruction_messages(turn)[-1], {"role": "assistant", "content": text}]
    return messages


JUDGED = {
    "teacher_score": "teacher_score",
    "student_score": "student_score",
    "gap": "gap",
    "hard": "hard",
    "status": "status",
    "failure_kind": "failure_kind",
}


def discrimination_split(run: RunDir, k: int) -> Iterator[pa.Table]:
    pool = run.read_table(rel(k, "cache_pool.parquet"))
    judged = first_per_id(run.read_table(rel(k, "discrimination", "judgments.parquet"), columns=["id", *JUDGED]))
    at = _positions(pool["id"], judged)
    answers = {
        role: _texts_in_pool_order(run, rel(k, "discrimination", f"{role}_responses.parquet"), pool["id"])
        for role in ("teacher", "student")
    }
    for start, table in _slices(pool):
        for role, texts in answers.items():
            table = table.append_column(f"{role}_answer", next(texts))
        yield _pool_columns(_with(table, judged, at.slice(start, table.num_rows), JUDGED))


def _texts_in_pool_order(run: RunDir, path: str, ids: pa.ChunkedArray) -> Iterator[pa.Array]:
    """A responses file's texts for the pool `ids`, a slice (`_slices`) at a time. Discrimination
    writes its answers in the pool's order: then the file is read a slice at a time alongside the
    pool, never whole; a file in another order (or absent) is looked up by id."""
    aligned = (
        run.exists(path) and pc.all(pc.equal(run.read_table(path, columns=["id"])["id"], ids)).as_py() is not False
    )
    if aligned and len(ids):
        source = pq.ParquetFile(run.path(path), filesystem=run.fs)
        yield from _exact_slices(
            (batch.column("text") for batch in source.iter_batches(batch_size=ROWS, columns=["text"])), ROWS
        )
        return
    answers = first_per_id(_answers(run, path))
    at = _positions(ids, answers)
    for start in range(0, max(len(ids), 1), ROWS):
        yield answers["text"].take(at.slice(start, ROWS)).combine_chunks()


def _exact_slices(arrays: Iterator[pa.Array], rows: int) -> Iterator[pa.Array]:
    """Arrays of any lengths (a file's batches end at its row groups) as arrays of `rows` each, the last fewer."""
    held, count = [], 0
    for array in arrays:
        held.append(array)
        count += len(array)
        while count >= rows:
            joined = pa.concat_arrays(held)
            yield joined.slice(0, rows)
            held, count = [joined.slice(rows)], count - rows
    if count:
        yield pa.concat_arrays(held)


def generation_split(run: RunDir, k: int) -> Iterator[pa.Table]:
    new = run.read_table(rel(k, "generation", "new_instructions.parquet"))
    seeds = first_per_id(run.read_table(rel(k, "cache_pool.parquet"), columns=["id", "instruction", "input"]))
    at = _positions(new["parent_id"], seeds)
    for start, table in _slices(new):
        yield _pool_columns(
            _with(
                table,
                seeds,
                at.slice(start, table.num_rows),
                {"instruction": "seed_instruction", "input": "seed_input"},
            )
        )


def _pool_columns(table: pa.Table) -> pa.Table:
    """Every column nullable, its type not depending on which values happen to be null; a
    conversation's earlier turns as a list of {role, content}, as `messages` are (parsed
    for the rows that have them only)."""
    history = table["history"].combine_chunks()
    has = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(history), 0), False))
    turns = pa.array([history_turns(h) for h in history.filter(pa.array(has)).to_pylist()], MESSAGES)
    at = np.full(len(history), len(turns))  # past the parsed turns: the null appended below
    at[has] = np.arange(len(turns))
    table = table.set_column(
        table.schema.get_field_index("history"),
        pa.field("history", MESSAGES),
        pa.concat_arrays([turns, pa.nulls(1, MESSAGES)]).take(pa.array(at)),
    )
    fields = [
        pa.field(
            f.name, POOL_SCHEMA.field(f.name).type if f.name in POOL_SCHEMA.names and f.name != "history" else f.type
        )
        for f in table.schema
    ]
    return table.cast(pa.schema([f.with_nullable(True) for f in fields]))


# A split per stage that ran: its rows, made when the stage's last file is written.
SPLITS = {
    "imitation": (("imitation", "teacher_responses.parquet"), imitation_split),
    "discrimination": (("discrimination", "judgments.parquet"), discrimination_split),
    "generation": (("generation", "new_instructions.parquet"), generation_split),
}


def redacted(obj):
    """A config with any field named like a secret (not a `*_env` variable name), and any credential
    in a URI (lion_distill.data.uri_secrets), redacted."""
    if isinstance(obj, dict):
        return {key: "<redacted>" if SECRET.search(key) and value else redacted(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [redacted(v) for v in obj]
    return uri_redacted(obj) if isinstance(obj, str) else obj


def card(run: RunDir, counts: dict[int, dict[str, int]]) -> str:
    """The dataset card: models, config, counts and rejects; the licence is left to the user."""
    config = redacted(run.read_json("config.json", {}))
    state = run.read_json("state.json", {})
    data = run.read_json("data_report.json", {})
    lines = [
        "---",
        "license: other  # set yours: your seed data's licence and the teacher's terms of use",
        "---",
        "",
        f"# {config.get('name', 'Lion run')}: Lion adversarial distillation data",
        "",
        f"Exported from the run directory `{uri_redacted(run.uri)}` (state: {'done' if state.get('done') else 'in progress'}).",
        "Each `iter_<k>` folder is a `datasets.DatasetDict` (`datasets.load_from_disk`) with a split per stage.",
        "",
        "## Models",
        "",
        "| role | backend | model |",
        "| --- | --- | --- |",
    ]
    for role in ROLES:
        spec = config.get(role) or {}
        lines.append(f"| {role} | {spec.get('backend', '')} | {spec.get('model', '')} |")
    lines += [
        "",
        "## Rows",
        "",
        "| iteration | imitation | discrimination (hard) | generation |",
        "| --- | --- | --- | --- |",
    ]
    for k, splits in counts.items():
        hard = f" ({splits['hard']})" if "hard" in splits else ""
        lines.append(
            f"| {k} | {splits.get('imitation', '')} | {splits.get('discrimination', '')}{hard} | "
            f"{splits.get('generation', '')} |"
        )
    lines += [
        "",
        "## Seed data and rejects",
        "",
        f"{data.get('rows_in', '?')} records read, {data.get('rows_kept', '?')} kept, "
        f"{data.get('rows_rejected', '?')} rejected: {json.dumps(data.get('rejects', {}))}.",
        "",
    ]
    rejects = {
        k: {
            key.split("/", 1)[1]: v
            for key, v in run.read_json(rel(k, "metrics.json"), {}).items()
            if key.startswith("generation_rejects/")
        }
        for k in counts
    }
    lines += [f"Generation rejects, iteration {k}: {json.dumps(r)}." for k, r in rejects.items() if r]
    lines += [
        "",
        "## Licence",
        "",
        "Left to you: the seed data's licence and the teacher's terms of use decide it.",
        "",
        "## Config",
        "",
        "Key variables are named, never their values.",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _save(slices: Iterator[pa.Table], folder: Path) -> tuple[int, int]:
    """A split's slices as one `datasets.load_from_disk` folder, written a slice at a time.
    -> (rows, rows whose `hard` is true).

    `Dataset.save_to_disk` needs the whole table: it writes the folder's state.json and
    dataset_info.json here from the first row, and its one data file is then rewritten by
    the writer it uses itself (datasets.arrow_writer.ArrowWriter) from every slice.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter

    first = next(slices)
    # One data file, an empty split's too (datasets' default writes none for it, and then
    # load_from_disk fails on the folder).
    datasets.Dataset(first.slice(0, 1)).save_to_disk(str(folder), num_shards=1)
    (data_file,) = json.loads((folder / datasets.config.DATASET_STATE_JSON_FILENAME).read_text())["_data_files"]
    writer = ArrowWriter(
        features=datasets.Features.from_arrow_schema(first.schema), path=str(folder / data_file["filename"])
    )
    rows = hard = 0
    try:
        for table in chain([first], slices):
            writer.write_table(table.cast(first.schema))
            rows += table.num_rows
            if "hard" in table.column_names:
                hard += pc.sum(pc.fill_null(table["hard"], False)).as_py() or 0
        writer.finalize()
    finally:
        writer.close()
    return rows, hard


def export_run(
    run_dir: str, to: str, push_to_hub: str | None = None, public: bool = False
) -> dict[int, dict[str, int]]:
    """Write each iteration's DatasetDict to `to`/iter_<k> and the card to `to`/README.md;
    with `push_to_hub`, push them to that hub dataset repository, made private unless `public`
    (a teacher's answers may not be the user's to publish). -> row counts per iteration."""
    import datasets

    datasets.disable_progress_bars()
    run, out = RunDir(run_dir), Path(to)
    check_format(run)  # another format's columns would not read as this one's
    counts = {}
    for k in iterations(run):
        splits, hard = {}, {}
        for name, (made, split) in SPLITS.items():
            if run.exists(rel(k, *made)):
                splits[name], hard_rows = _save(split(run, k), out / f"iter_{k}" / name)
                give_back_memory()  # the split's pool-sized tables: the next split does not start on top of them
                if name == "discrimination":
                    hard["hard"] = hard_rows
        if splits:  # the list of splits DatasetDict.save_to_disk writes: load_from_disk reads the folder as one
            (out / f"iter_{k}" / datasets.config.DATASETDICT_JSON_FILENAME).write_text(
                json.dumps({"splits": list(splits)})
            )
            counts[k] = {**splits, **hard}
    (out / "README.md").write_text(card(run, counts), encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import HfApi

        # The card first: each push then adds its configuration to the card's metadata.
        api = HfApi()
        api.create_repo(push_to_hub, repo_type="dataset", private=not public, exist_ok=True)
        api.upload_file(
            path_or_fileobj=str(out / "README.md"), path_in_repo="README.md", repo_id=push_to_hub, repo_type="dataset"
        )
        for k in counts:  # memory-mapped from the folders just written
            datasets.load_from_disk(str(out / f"iter_{k}")).push_to_hub(
                push_to_hub, config_name=f"iter_{k}", private=not public
            )
    return counts
