"""The job's stages, each resumable on its own:

1. `rationales`: the teacher answers every train, dev (e-SNLI, ANLI) and test input with the
   task's few-shot chain-of-thought prompt (or the released PaLM completions are read, and
   checked to belong to their examples); replies are parsed into (rationale, label), failures
   counted by reason.
2. `train/<cell>`: for each cell of the grid (lion_distill.step_by_step.grid: method x fraction x
   label source x seed x student), a T5 trained on the method's rows of a nested fraction of
   train for exactly `steps` optimizer steps, in one Ray Train run. `validation: best` measures
   validation accuracy `validations` times and keeps the best export; `validation: reference`
   scores test every `eval_steps` and keeps the last export, as the reference code (whose
   Trainer evaluates on test and saves no checkpoint to pick from).
3. `evaluate`: label-only predictions on test, accuracy per cell.

Files under the run directory: `rationales/{train,test}.parquet` and `summary.json`,
`train/<cell>/{model/, result.json}`, `evaluate/<cell>.json`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from functools import partial

import pyarrow as pa

from lion_distill.config.step_by_step import StepByStepConfig
from lion_distill.data import RunDir
from lion_distill.errors import TaskDataError, TeacherFailed, count_by_kind
from lion_distill.llm.responses import is_error
from lion_distill.llm.transient import stop_if_transient
from lion_distill.runner import StageResult
from lion_distill.step_by_step.data import (
    alignment_problem,
    fraction_split,
    method_rows,
    parse_rows,
    row_counts,
    student_inputs,
    with_released_replies,
)
from lion_distill.step_by_step.evaluate import accuracy, checked_predictions, label_accuracy, label_prompt, student_role
from lion_distill.step_by_step.grid import Cell, cells
from lion_distill.step_by_step.prompts import default_prompt_file, load_prompt
from lion_distill.step_by_step.readers import DEV_SPLIT, read_examples, read_jsonl_task
from lion_distill.step_by_step.tasks import TASKS, Task, user_task

log = logging.getLogger("lion_distill.step_by_step")

ROWS = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("input", pa.string()),
        ("label", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("text", pa.string()),
        ("rationale", pa.string()),
        ("teacher_label", pa.string()),
        ("parse_failure", pa.string()),
        ("premise", pa.string()),  # NLI only: the reference's student input is premise</s>hypothesis
        ("hypothesis", pa.string()),
    ]
)


def task_of(cfg: StepByStepConfig) -> Task:
    return user_task(cfg.data.labels, cfg.data.answer_phrase) if cfg.data.task == "jsonl" else TASKS[cfg.data.task]


def structured_output(cfg: StepByStepConfig, task: Task) -> dict | None:
    t = cfg.teacher
    wanted = t.constraint == "regex" or (t.constraint == "auto" and t.role.backend == "vllm")
    return {"regex": task.constraint(t.max_rationale_chars)} if wanted else None


# --- rationales ----------------------------------------------------------------------


def read_task(cfg: StepByStepConfig) -> tuple[dict[str, list[dict]], dict]:
    """{"train": rows, "test": rows} (and "valid", the official dev split, for e-SNLI and ANLI)
    with the released completions as `text` when the teacher is `released`; -> (splits, data
    report)."""
    d, splits, report = cfg.data, {}, {}
    names = ["train", "test"] + ([DEV_SPLIT[d.task]] if d.task in DEV_SPLIT else [])
    for split in names:
        limit = {"train": d.train_limit, "test": d.test_limit}.get(split)
        if d.task == "jsonl":
            path = d.train_file if split == "train" else d.test_file
            rows, loaded = read_jsonl_task(path, task_of(cfg), split)
            report[split] = loaded.as_dict()
            if cfg.teacher.source == "released" and not all("text" in r for r in rows):
                raise TaskDataError(
                    f"{path}: teacher.source released reads each row's `completion` (a teacher's "
                    f"reply); {sum('text' not in r for r in rows)} rows have none"
                )
        else:
            rows = read_examples(d.task, split, d.folder())
            if cfg.teacher.source == "released":
                rows = with_released_replies(rows, d.folder(), d.task, split)
        splits[split] = [{"choices": [], **r} for r in rows[:limit]]
        if not splits[split]:
            raise TaskDataError(f"{d.task}: the {split} split has no usable rows")
    return splits, report


def ask_teacher(cfg: StepByStepConfig, run: RunDir, rows: list[dict], task: Task):
    """-> (each row with the teacher's reply as `text`, None when generation failed, in row order;
    the call's record; its failed requests by kind and the first message of each kind)."""
    import ray

    from lion_distill.llm import generate

    prompt = load_prompt(cfg.teacher.prompt_file or default_prompt_file(cfg.data.task))
    out, rec = generate(
        cfg.teacher.role,
        ray.data.from_items(rows),
        prompt.render,
        stage="rationales/teacher",
        role_name="teacher",
        run_dir=run,
        structured_output=structured_output(cfg, task),
    )
    answered = out.select_columns(["id", "text", "finish_reason", "error_kind", "error"]).take_all()
    # A failure that passes is no "no reply", even where every request failed: the stage stops and
    # the next run asks it again (the answered ones from the response cache).
    stop_if_transient("rationales/teacher", pa.Table.from_pylist(answered))
    problem = teacher_failed(answered)
    if problem:
        raise TeacherFailed(problem)
    replies = {r["id"]: r["text"] for r in answered}
    failures = count_by_kind((r["error_kind"], r["error"]) for r in answered if is_error(r["finish_reason"]))
    return [{**row, "text": replies[row["id"]]} for row in rows], rec, failures


def teacher_failed(answered: list[dict]) -> str | None:
    """One line when every request failed (after the backend's retries), naming the first
    failure; a stage that went on would train on no rationale at all. Some failures are
    counted as `no_reply` parse failures instead."""
    if not answered or any(r["text"] is not None for r in answered):
        return None
    return (
        f"rationales/teacher: all {len(answered)} requests failed; the first: "
        f"{answered[0]['error_kind']}: {answered[0]['error']}. "
        "Nothing was written: fix the cause and run again (the stage starts over)"
    )


def rationales(cfg: StepByStepConfig, run: RunDir) -> StageResult:
    start, task = time.perf_counter(), task_of(cfg)
    splits, data_report = read_task(cfg)
    spend, teacher_failures = {}, ({}, {})
    if cfg.teacher.source == "generate":
        splits, spend, teacher_failures = teacher_replies(cfg, run, splits, task)
    parsed, failures = parsed_splits(cfg, splits, task)
    dev = parsed.get("valid", [])
    tables = {
        "train": [{**r, "split": "train"} for r in parsed["train"]] + [{**r, "split": "valid"} for r in dev],
        "test": [{**r, "split": "test"} for r in parsed["test"]],
    }
    for name, rows in tables.items():
        run.write_table(f"rationales/{name}.parquet", pa.Table.from_pylist(rows, schema=ROWS))
    test = parsed["test"]
    # Unparsed replies count as wrong: the teacher's line is what its answers are worth as labels.
    teacher_accuracy = accuracy([r["teacher_label"] for r in test], [r["label"] for r in test], task.name, cfg.accuracy)
    summary = {
        "rows": {split: len(rows) for split, rows in parsed.items()},
        "parse_failures": {s: dict(c) for s, c in failures.items()},
        "teacher_failed_by_kind": teacher_failures[0],  # requests that failed: their rows are no_reply
        "teacher_failure_examples": teacher_failures[1],
        "teacher_test_accuracy": teacher_accuracy,
        "source": cfg.teacher.source,
        "spend": spend,
        "data": data_report,
        "seconds": time.perf_counter() - start,
    }
    run.write_json("rationales/summary.json", summary)
    log.info(
        "[rationales] rows %s; parse failures %s; teacher test accuracy %.3f",
        summary["rows"],
        summary["parse_failures"],
        teacher_accuracy,
    )
    return StageResult(counters={**spend, "rows": sum(summary["rows"].values())}, summary=summary)


def teacher_replies(cfg: StepByStepConfig, run: RunDir, splits: dict[str, list[dict]], task: Task):
    """Every split's rows with the teacher's replies, asked in one call -> (the splits, the call's
    spend, its failed requests by kind with the first message of each)."""
    names = list(splits)
    replied, rec, failures = ask_teacher(cfg, run, [r for n in names for r in splits[n]], task)
    bounds = [0]
    for n in names:
        bounds.append(bounds[-1] + len(splits[n]))
    spend = {
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "api_requests": rec.api_requests,
        "api_cached": rec.api_cached,
        "cost_usd": rec.cost_usd,
    }
    return {n: replied[a:b] for n, a, b in zip(names, bounds, bounds[1:])}, spend, failures


def parsed_splits(cfg: StepByStepConfig, splits: dict[str, list[dict]], task: Task):
    """-> (each split's rows parsed into rationale and label, parse failures by reason per split).
    Released completions must belong to their examples (alignment_problem)."""
    parsed, failures = {}, {}
    for split, rows in splits.items():
        parsed[split], failures[split] = parse_rows(rows, task)
        if cfg.teacher.source == "released":
            d = cfg.data
            where = (
                (d.train_file if split == "train" else d.test_file)
                if d.task == "jsonl"
                else f"{d.folder()}/{d.task} {split}"
            )
            problem = alignment_problem(parsed[split], task, where)
            if problem:
                raise TaskDataError(problem)
    return parsed, failures


# --- train ---------------------------------------------------------------------------


def cell_rows(cfg: StepByStepConfig, run: RunDir, cell: Cell) -> tuple[list[dict], list[dict], dict]:
    """(training rows, validation rows, what became of the fraction's rows: row_counts). Both
    with the student's inputs (data.nli_input); training rows with the method's labels, and so
    validation rows, except that `validation_labels: gold_dev` scores against the official dev
    split's gold labels where there is one."""
    eos = student_eos(cfg, cell.student)
    table = student_inputs(run.read_table("rationales/train.parquet").to_pylist(), cfg.data.nli_input, eos)
    dev = [r for r in table if r["split"] == "valid"] or None
    train, valid = fraction_split(
        [r for r in table if r["split"] == "train"], cell.fraction, cfg.data.valid_fraction, cell.seed, dev
    )
    unparsed, method, labels = cfg.unparsed_rows, cell.method, cell.label_source
    if dev and cfg.validation_labels == "gold_dev":
        scored = [{"id": r["id"], "input": r["input"], "label": r["label"]} for r in valid]
    else:
        scored = method_rows(valid, method, labels, unparsed)
    return method_rows(train, method, labels, unparsed), scored, row_counts(train, method, labels, unparsed)


def student_eos(cfg: StepByStepConfig, student: str) -> str | None:
    """The student tokenizer's end-of-sequence token, which joins premise and hypothesis with
    `data.nli_input: eos_joined` (T5: "</s>"); None where no input needs it."""
    from lion_distill.train.batches import load_tokenizer

    return load_tokenizer(student).eos_token if cfg.data.nli_input == "eos_joined" else None


def validation_for(cfg: StepByStepConfig, run: RunDir, valid: list[dict], task: Task, eos: str | None = None):
    """best: the cell's validation rows, `validations` times, the best export kept; reference:
    test every `eval_steps` (or as often as `validations` where no step budget is set), the last
    export kept. `eos`: student_eos, for the test rows' inputs."""
    from lion_distill.train import Validation

    s = cfg.student
    if cfg.validation == "reference":
        scored = student_inputs(run.read_table("rationales/test.parquet").to_pylist(), cfg.data.nli_input, eos)
        count, keep = math.ceil(cfg.steps / cfg.eval_steps) if cfg.steps else cfg.validations, "last"
    else:
        scored, count, keep = valid, cfg.validations, "best"
    return Validation(
        count=count,
        keep=keep,
        score=partial(
            label_accuracy,
            inputs=[v["input"] for v in scored],
            labels=[v["label"] for v in scored],
            task=task.name,
            batch_size=s.batch_size,
            max_new_tokens=s.max_new_tokens,
            max_model_len=cfg.train.max_length,
            match=cfg.accuracy,
        ),
    )


def train_cell(cfg: StepByStepConfig, run: RunDir, cell: Cell) -> StageResult:
    from lion_distill.train import train_seq2seq_multitask

    start, task = time.perf_counter(), task_of(cfg)
    rows, valid, counts = cell_rows(cfg, run, cell)
    if not rows or not valid:
        raise ValueError(
            f"{cell.key}: {len(rows)} training and {len(valid)} validation rows "
            "(the teacher's labels exist only for replies that parsed; see rationales/summary.json)"
        )
    slug = f"train/{cell.key}"
    train = cfg.train.model_copy(update={"max_steps": cfg.steps, "seed": cfg.train.seed + cell.seed})
    result = train_seq2seq_multitask(
        train,
        cell.student,
        _dataset(rows),
        run.uri_of(slug, "model"),
        name=slug.replace("/", "-"),
        task="multitask" if cell.method == "step_by_step" else "standard",
        validation=validation_for(cfg, run, valid, task, student_eos(cfg, cell.student)),
        keep_empty_targets=cfg.unparsed_rows == "keep",
    )
    summary = cell_summary(cfg, cell, len(rows), len(valid), counts, result)
    summary["seconds"] = time.perf_counter() - start
    run.write_json(f"{slug}/result.json", summary)
    scored_on = "test" if cfg.validation == "reference" else "valid"
    log.info(
        "[%s] %d rows, %d steps, %s accuracy %s, kept step %d",
        slug,
        len(rows),
        summary["steps"],
        scored_on,
        {v["step"]: round(v[f"{scored_on}_accuracy"], 4) for v in summary["validations"]},
        result.best_step,
    )
    return StageResult(
        outputs={f"model/{cell.key}": result.model_dir},
        counters={"train_samples": result.record.rows},
        summary={cell.key: summary},
    )


def cell_summary(cfg: StepByStepConfig, cell: Cell, rows: int, valid_rows: int, counts: dict, result) -> dict:
    """A trained cell's result.json: its grid coordinates, its validations, what was kept."""
    scored_on = "test" if cfg.validation == "reference" else "valid"
    validations = [
        {
            "step": v["step"],
            "epoch": v["epoch"],
            f"{scored_on}_accuracy": v["score"],
            "train_loss": v["train_loss"],
            "lr": v["lr"],
        }
        for v in result.validations
    ]
    return {
        "method": cell.method,
        "label_source": cell.label_source,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "student": cell.student,
        "rows": rows,
        "row_counts": counts,
        "valid_rows": valid_rows,
        "validation": cfg.validation,
        "steps": result.record.extra["steps"],
        "epochs": round(result.validations[-1]["epoch"], 2),
        "validations": validations,
        "best_step": result.best_step,
        "model_dir": result.model_dir,
        "samples": result.record.rows,
        # what `--plan` prices the next run's training GPU-hours with
        "tokens_per_s": result.record.extra.get("tokens_per_s"),
        "gpus": result.record.gpus,
    }


def _dataset(rows: list[dict]):
    import ray

    return ray.data.from_items(rows)


def predict(cfg: StepByStepConfig, model_dir: str, rows: list[dict], stage: str) -> list[str]:
    """Label-only predictions (the `predict: ` task; rationales are for training only), greedy,
    through the hf backend over a Ray Dataset; in row order. A failed generation raises."""
    import ray

    from lion_distill.llm import generate

    s = cfg.student
    role = student_role(
        model_dir,
        max_new_tokens=s.max_new_tokens,
        batch_size=s.batch_size,
        replicas=s.replicas,
        max_model_len=cfg.train.max_length,
    )
    items = [{"id": r["id"], "input": r["input"]} for r in rows]
    out, _ = generate(role, ray.data.from_items(items), label_prompt, stage=stage, role_name="student")
    texts = {r["id"]: r["text"] for r in out.select_columns(["id", "text"]).take_all()}
    return checked_predictions([texts.get(r["id"]) for r in rows], stage)


# --- evaluate ------------------------------------------------------------------------


def evaluate(cfg: StepByStepConfig, run: RunDir, models: dict[str, str]) -> StageResult:
    """Test accuracy of each cell's kept model; a model already scored (a resumed stage) is not re-run."""
    start, task = time.perf_counter(), task_of(cfg)
    test = run.read_table("rationales/test.parquet").to_pylist()
    gold = [r["label"] for r in test]
    scored = []
    for cell in cells(cfg):
        rel = f"evaluate/{cell.key}.json"
        result = run.read_json(rel)
        if result is None:
            model = models[f"model/{cell.key}"]
            shown = student_inputs(test, cfg.data.nli_input, student_eos(cfg, model))
            predictions = predict(cfg, model, shown, f"evaluate/{cell.key}")
            result = {"accuracy": accuracy(predictions, gold, task.name, cfg.accuracy), "predictions": predictions}
            run.write_json(rel, result)
        scored.append(
            {
                "key": cell.key,
                "series": cell.series,
                "fraction": cell.fraction,
                "seed": cell.seed,
                "student": cell.student,
                "accuracy": result["accuracy"],
            }
        )
    teacher = run.read_json("rationales/summary.json")["teacher_test_accuracy"]
    log.info("[evaluate] test accuracy %s; teacher %.4f", {c["key"]: round(c["accuracy"], 4) for c in scored}, teacher)
    return StageResult(
        summary={
            "cells": scored,
            "teacher_test_accuracy": teacher,
            "test_rows": len(test),
            "label_shares": dict(Counter(gold).most_common(5)),
            "seconds": time.perf_counter() - start,
        }
    )
