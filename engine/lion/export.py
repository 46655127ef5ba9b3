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
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from engine.data import POOL_SCHEMA, RunDir
from engine.data.conversations import user_turns
from engine.data.schema import history_turns
from engine.lion.iteration import read_rows, rel
from engine.llm.prompts import instruction_messages

ROLES = ("teacher", "referee", "generator", "student")
SECRET = re.compile(r"(api_?key|token|secret|password)(?!_env)", re.IGNORECASE)
MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))


def iterations(run: RunDir) -> list[int]:
    """The iterations a run has pools for (iter_-1 holds only the base student's evaluation)."""
    found = [int(p.base_name[5:]) for p in run.fs.get_file_info(pafs.FileSelector(run.root))
             if p.base_name.startswith("iter_") and p.base_name[5:].isdigit()]
    return sorted(k for k in found if run.exists(rel(k, "train_pool.parquet")))


def _by_id(run: RunDir, path: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_rows(run, path)}


def imitation_split(run: RunDir, k: int) -> pa.Table | None:
    if not run.exists(rel(k, "imitation", "teacher_responses.parquet")):
        return None
    answers = {**_by_id(run, rel(k, "imitation", "teacher_turns.parquet")),
               **_by_id(run, rel(k, "imitation", "teacher_responses.parquet"))}
    rows = []
    for row in run.read_table(rel(k, "train_pool.parquet")).to_pylist():
        answer = answers.get(row["id"], {})
        rows.append({**row, "teacher_answer": answer.get("text"), "teacher_finish_reason": answer.get("finish_reason"),
                     "messages": _conversation(row, answers)})
    return _table(rows, {"messages": MESSAGES})


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


def discrimination_split(run: RunDir, k: int) -> pa.Table | None:
    if not run.exists(rel(k, "discrimination", "judgments.parquet")):
        return None
    teacher = _by_id(run, rel(k, "discrimination", "teacher_responses.parquet"))
    student = _by_id(run, rel(k, "discrimination", "student_responses.parquet"))
    judged = _by_id(run, rel(k, "discrimination", "judgments.parquet"))
    rows = []
    for row in run.read_table(rel(k, "cache_pool.parquet")).to_pylist():
        j = judged.get(row["id"], {})
        rows.append({**row, "teacher_answer": teacher.get(row["id"], {}).get("text"),
                     "student_answer": student.get(row["id"], {}).get("text"),
                     **{name: j.get(name) for name in ("teacher_score", "student_score", "gap", "hard", "status")}})
    return _table(rows, {"teacher_score": pa.float64(), "student_score": pa.float64(), "gap": pa.float64(),
                         "hard": pa.bool_()})


def generation_split(run: RunDir, k: int) -> pa.Table | None:
    if not run.exists(rel(k, "generation", "new_instructions.parquet")):
        return None
    seeds = {r["id"]: r for r in run.read_table(rel(k, "cache_pool.parquet")).to_pylist()}
    rows = [{**row, "seed_instruction": seeds.get(row["parent_id"], {}).get("instruction"),
             "seed_input": seeds.get(row["parent_id"], {}).get("input")}
            for row in run.read_table(rel(k, "generation", "new_instructions.parquet")).to_pylist()]
    return _table(rows, {})


def _table(rows: list[dict], types: dict) -> pa.Table:
    """Rows -> a table whose column types do not depend on which values happen to be null; a
    conversation's earlier turns as a list of {role, content}, as `messages` are."""
    types = {**types, "history": MESSAGES}
    rows = [{**row, "history": history_turns(row.get("history")) or None} for row in rows]
    names = list(dict.fromkeys(name for row in rows for name in row)) if rows else list(POOL_SCHEMA.names)
    fields = [pa.field(n, types[n]) if n in types else POOL_SCHEMA.field(n) if n in POOL_SCHEMA.names
              else pa.field(n, pa.string()) for n in names]
    return pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in fields]))


SPLITS = {"imitation": imitation_split, "discrimination": discrimination_split, "generation": generation_split}


def iteration_tables(run: RunDir, k: int) -> dict[str, pa.Table]:
    return {name: table for name, split in SPLITS.items() if (table := split(run, k)) is not None}


def redacted(obj):
    """A config with any field named like a secret (not a `*_env` variable name) redacted."""
    if isinstance(obj, dict):
        return {key: "<redacted>" if SECRET.search(key) and value else redacted(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [redacted(v) for v in obj]
    return obj


def card(run: RunDir, counts: dict[int, dict[str, int]]) -> str:
    """The dataset card: models, config, counts and rejects; the licence is left to the user."""
    config = redacted(run.read_json("config.json", {}))
    state = run.read_json("state.json", {})
    data = run.read_json("data_report.json", {})
    lines = ["---", "license: other  # set yours: your seed data's licence and the teacher's terms of use", "---", "", f"# {config.get('name', 'Lion run')}: Lion adversarial distillation data", "",
              f"Exported from the run directory `{run.uri}` (state: {'done' if state.get('done') else 'in progress'}).",
              "Each `iter_<k>` folder is a `datasets.DatasetDict` (`datasets.load_from_disk`) with a split per stage.", "",
              "## Models", "", "| role | backend | model |", "| --- | --- | --- |"]
    for role in ROLES:
        spec = config.get(role) or {}
        lines.append(f"| {role} | {spec.get('backend', '')} | {spec.get('model', '')} |")
    lines += ["", "## Rows", "", "| iteration | imitation | discrimination (hard) | generation |", "| --- | --- | --- | --- |"]
    for k, splits in counts.items():
        hard = f" ({splits['hard']})" if "hard" in splits else ""
        lines.append(f"| {k} | {splits.get('imitation', '')} | {splits.get('discrimination', '')}{hard} | "
                     f"{splits.get('generation', '')} |")
    lines += ["", "## Seed data and rejects", "",
              f"{data.get('rows_in', '?')} records read, {data.get('rows_kept', '?')} kept, "
              f"{data.get('rows_rejected', '?')} rejected: {json.dumps(data.get('rejects', {}))}.", ""]
    rejects = {k: {key.split("/", 1)[1]: v for key, v in run.read_json(rel(k, "metrics.json"), {}).items()
                   if key.startswith("generation_rejects/")} for k in counts}
    lines += [f"Generation rejects, iteration {k}: {json.dumps(r)}." for k, r in rejects.items() if r]
    lines += ["", "## Licence", "", "Left to you: the seed data's licence and the teacher's terms of use decide it.", "",
              "## Config", "", "Key variables are named, never their values.", "", "```json",
              json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def export_run(run_dir: str, to: str, push_to_hub: str | None = None) -> dict[int, dict[str, int]]:
    """Write each iteration's DatasetDict to `to`/iter_<k> and the card to `to`/README.md;
    with `push_to_hub`, push them to that hub dataset repository. -> row counts per iteration."""
    import datasets

    datasets.disable_progress_bars()
    run, out = RunDir(run_dir), Path(to)
    counts, folders = {}, {}
    for k in iterations(run):
        tables = iteration_tables(run, k)
        if not tables:
            continue
        folder = datasets.DatasetDict({name: datasets.Dataset(table) for name, table in tables.items()})
        folder.save_to_disk(str(out / f"iter_{k}"))
        folders[k] = folder
        counts[k] = {name: t.num_rows for name, t in tables.items()}
        if "discrimination" in tables:
            counts[k]["hard"] = sum(bool(h) for h in tables["discrimination"].column("hard").to_pylist())
    (out / "README.md").write_text(card(run, counts), encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import HfApi

        # The card first: each push then adds its configuration to the card's metadata.
        api = HfApi()
        api.create_repo(push_to_hub, repo_type="dataset", exist_ok=True)
        api.upload_file(path_or_fileobj=str(out / "README.md"), path_in_repo="README.md", repo_id=push_to_hub,
                        repo_type="dataset")
        for k, folder in folders.items():
            folder.push_to_hub(push_to_hub, config_name=f"iter_{k}")
    return counts
