"""The job's stages, each resumable on its own:

1. `rationales`: the teacher answers every train and test input with the task's few-shot
   chain-of-thought prompt (or the released PaLM completions are read); replies are parsed
   into (rationale, label), failures counted by reason; validation is held out of train.
2. `train/<method>/<fraction>`: a T5 trained on the method's rows of a nested fraction of
   train, in one Ray Train run that measures validation accuracy `validations` times and keeps
   the best export (as the paper's HF trainer with load_best_model_at_end).
3. `evaluate`: label-only predictions on test, accuracy per method x fraction.

Files under the run directory: `rationales/{train,test}.parquet` and `summary.json`,
`train/<method>/<fraction>/{model/, result.json}`, `evaluate/<method>/<fraction>.json`.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from functools import partial

import pyarrow as pa

from engine.config.step_by_step import StepByStepConfig
from engine.data import RunDir
from engine.runner import StageResult
from engine.step_by_step.data import nested_fractions, parse_rows, train_valid_split, with_released_replies
from engine.step_by_step.evaluate import accuracy, label_accuracy, label_prompt, student_role
from engine.step_by_step.prompts import default_prompt_file, load_prompt
from engine.step_by_step.readers import TaskDataError, read_examples, read_jsonl_task
from engine.step_by_step.tasks import TASKS, Task, user_task

log = logging.getLogger("engine.step_by_step")

ROWS = pa.schema([("id", pa.string()), ("split", pa.string()), ("input", pa.string()), ("label", pa.string()),
                  ("choices", pa.list_(pa.string())), ("text", pa.string()), ("rationale", pa.string()),
                  ("teacher_label", pa.string()), ("parse_failure", pa.string())])


def task_of(cfg: StepByStepConfig) -> Task:
    return user_task(cfg.data.labels, cfg.data.answer_phrase) if cfg.data.task == "jsonl" else TASKS[cfg.data.task]


def structured_output(cfg: StepByStepConfig, task: Task) -> dict | None:
    t = cfg.teacher
    wanted = t.constraint == "regex" or (t.constraint == "auto" and t.role.backend == "vllm")
    return {"regex": task.constraint()} if wanted else None


# --- rationales ----------------------------------------------------------------------

def read_task(cfg: StepByStepConfig) -> tuple[dict[str, list[dict]], dict]:
    """{"train": rows, "test": rows} with the released completions as `text` when the teacher
    is `released`; -> (splits, data report)."""
    d, splits, report = cfg.data, {}, {}
    for split, limit in (("train", d.train_limit), ("test", d.test_limit)):
        if d.task == "jsonl":
            rows, loaded = read_jsonl_task(d.train_file if split == "train" else d.test_file, task_of(cfg), split)
            report[split] = loaded.as_dict()
        else:
            rows = read_examples(d.task, split, d.data_dir)
            if cfg.teacher.source == "released":
                rows = with_released_replies(rows, d.data_dir, d.task, split)
        splits[split] = [{"choices": [], **r} for r in rows[:limit]]
        if not splits[split]:
            raise TaskDataError(f"{d.task}: the {split} split has no usable rows")
    return splits, report


def ask_teacher(cfg: StepByStepConfig, run: RunDir, rows: list[dict], task: Task):
    """Each row with the teacher's reply as `text` (None when generation failed), in row order."""
    import ray

    from engine.llm import generate

    prompt = load_prompt(cfg.teacher.prompt_file or default_prompt_file(cfg.data.task))
    out, rec = generate(cfg.teacher.role, ray.data.from_items(rows), prompt.render, stage="rationales/teacher",
                        role_name="teacher", run_dir=run, structured_output=structured_output(cfg, task))
    replies = {r["id"]: r["text"] for r in out.select_columns(["id", "text"]).take_all()}
    return [{**row, "text": replies[row["id"]]} for row in rows], rec


def rationales(cfg: StepByStepConfig, run: RunDir) -> StageResult:
    start, task = time.perf_counter(), task_of(cfg)
    splits, data_report = read_task(cfg)
    counters, spend = {}, {}
    if cfg.teacher.source == "generate":
        replied, rec = ask_teacher(cfg, run, splits["train"] + splits["test"], task)
        splits = {"train": replied[:len(splits["train"])], "test": replied[len(splits["train"]):]}
        spend = {"prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
                 "api_requests": rec.api_requests, "api_cached": rec.api_cached, "cost_usd": rec.cost_usd}
        counters.update(spend)
    parsed, failures = {}, {}
    for split, rows in splits.items():
        parsed[split], failures[split] = parse_rows(rows, task)
    train, valid = train_valid_split(parsed["train"], cfg.data.valid_fraction, cfg.data.seed)
    tables = {"train": [{**r, "split": "train"} for r in train] + [{**r, "split": "valid"} for r in valid],
              "test": [{**r, "split": "test"} for r in parsed["test"]]}
    for name, rows in tables.items():
        run.write_table(f"rationales/{name}.parquet", pa.Table.from_pylist(rows, schema=ROWS))
    test = parsed["test"]
    # Unparsed replies count as wrong: the teacher's line is what its answers are worth as labels.
    teacher_accuracy = accuracy([r["teacher_label"] for r in test], [r["label"] for r in test], task.name)
    summary = {"rows": {"train": len(train), "valid": len(valid), "test": len(test)},
               "parse_failures": {s: dict(c) for s, c in failures.items()},
               "teacher_test_accuracy": teacher_accuracy, "source": cfg.teacher.source, "spend": spend,
               "data": data_report, "seconds": time.perf_counter() - start}
    run.write_json("rationales/summary.json", summary)
    log.info("[rationales] %d train, %d valid, %d test rows; parse failures %s; teacher test accuracy %.3f",
             len(train), len(valid), len(test), summary["parse_failures"], teacher_accuracy)
    counters["rows"] = len(train) + len(valid) + len(test)
    return StageResult(counters=counters, summary=summary)


# --- train ---------------------------------------------------------------------------

def method_rows(rows: list[dict], method: str, label_source: str) -> list[dict]:
    """What each method learns from: gold labels (standard_finetune), the teacher's labels
    (standard_distill), labels plus the teacher's rationales (step_by_step). Rows the teacher
    could not answer carry nothing for the teacher's methods and are left out of them."""
    teacher_labels = method == "standard_distill" or (method == "step_by_step" and label_source == "teacher")
    needs_teacher = method != "standard_finetune"
    out = []
    for r in rows:
        if needs_teacher and r["parse_failure"]:
            continue
        row = {"id": r["id"], "input": r["input"], "label": r["teacher_label"] if teacher_labels else r["label"]}
        if method == "step_by_step":
            row["rationale"] = r["rationale"]
        out.append(row)
    return out


def epochs_for(cfg: StepByStepConfig, n_rows: int) -> int:
    """The paper's fixed step budget at every fraction, as whole epochs (at least one)."""
    if cfg.steps is None:
        return cfg.train.epochs
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps * max(1, cfg.train.num_workers)
    return max(1, math.ceil(cfg.steps * per_step / max(n_rows, 1)))


def predict(cfg: StepByStepConfig, model_dir: str, rows: list[dict], stage: str) -> list[str]:
    """Label-only predictions (the `predict: ` task; rationales are for training only), greedy,
    through the hf backend over a Ray Dataset; in row order."""
    import ray

    from engine.llm import generate

    s = cfg.student
    role = student_role(model_dir, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, replicas=s.replicas,
                        max_model_len=cfg.train.max_length)
    items = [{"id": r["id"], "input": r["input"]} for r in rows]
    out, _ = generate(role, ray.data.from_items(items), label_prompt, stage=stage, role_name="student")
    texts = {r["id"]: (r["text"] or "").strip() for r in out.select_columns(["id", "text"]).take_all()}
    return [texts[r["id"]] for r in rows]


def train_method(cfg: StepByStepConfig, run: RunDir, method: str, fraction: float) -> StageResult:
    from engine.train import Validation, train_seq2seq_multitask

    start, task = time.perf_counter(), task_of(cfg)
    table = run.read_table("rationales/train.parquet").to_pylist()
    train = [r for r in table if r["split"] == "train"]
    subset = nested_fractions(train, cfg.fractions, cfg.data.seed)[fraction]
    rows = method_rows(subset, method, cfg.label_source)
    valid = method_rows([r for r in table if r["split"] == "valid"], method, cfg.label_source)
    if not rows or not valid:
        raise ValueError(f"{method} at {fraction:g}: {len(rows)} training and {len(valid)} validation rows "
                         "(the teacher's methods use only replies that parsed; see rationales/summary.json)")
    slug = f"train/{method}/{fraction:g}"
    epochs = epochs_for(cfg, len(rows))
    s = cfg.student
    validation = Validation(count=cfg.validations, score=partial(
        label_accuracy, inputs=[v["input"] for v in valid], labels=[v["label"] for v in valid], task=task.name,
        batch_size=s.batch_size, max_new_tokens=s.max_new_tokens, max_model_len=cfg.train.max_length))
    result = train_seq2seq_multitask(cfg.train.model_copy(update={"epochs": epochs}), s.model, _dataset(rows),
                                     run.uri_of(slug, "model"), name=slug.replace("/", "-"),
                                     task="multitask" if method == "step_by_step" else "standard", validation=validation)
    # Ray Train's checkpoints hold optimizer state (twice the model); only an unfinished stage needs them.
    shutil.rmtree(run.path(slug, "ray_train"), ignore_errors=True)
    validations = [{"step": v["step"], "epoch": v["epoch"], "valid_accuracy": v["score"], "train_loss": v["train_loss"],
                    "lr": v["lr"]} for v in result.validations]
    summary = {"method": method, "fraction": fraction, "rows": len(rows), "valid_rows": len(valid), "epochs": epochs,
               "steps": result.record.extra["steps"], "validations": validations, "best_step": result.best_step,
               "model_dir": result.model_dir, "samples": result.record.rows, "seconds": time.perf_counter() - start,
               # what `--plan` prices the next run's training GPU-hours with
               "tokens_per_s": result.record.extra.get("tokens_per_s"), "gpus": result.record.gpus}
    run.write_json(f"{slug}/result.json", summary)
    log.info("[%s] %d rows, %d epochs, valid accuracy %s, kept step %d", slug, len(rows), epochs,
             {v["step"]: round(v["valid_accuracy"], 4) for v in validations}, result.best_step)
    return StageResult(outputs={f"model/{method}/{fraction:g}": result.model_dir},
                       counters={"train_samples": result.record.rows},
                       summary={f"{method}/{fraction:g}": summary})


def _dataset(rows: list[dict]):
    import ray

    return ray.data.from_items(rows)


# --- evaluate ------------------------------------------------------------------------

def evaluate(cfg: StepByStepConfig, run: RunDir, models: dict[str, str]) -> StageResult:
    """Test accuracy of each kept model; a model already scored (a resumed stage) is not re-run."""
    start, task = time.perf_counter(), task_of(cfg)
    test = run.read_table("rationales/test.parquet").to_pylist()
    gold = [r["label"] for r in test]
    scores: dict[str, dict[str, float]] = {}
    for method in cfg.methods:
        for fraction in cfg.fractions:
            rel = f"evaluate/{method}/{fraction:g}.json"
            result = run.read_json(rel)
            if result is None:
                predictions = predict(cfg, models[f"model/{method}/{fraction:g}"], test, f"evaluate/{method}/{fraction:g}")
                result = {"accuracy": accuracy(predictions, gold, task.name), "predictions": predictions}
                run.write_json(rel, result)
            scores.setdefault(method, {})[f"{fraction:g}"] = result["accuracy"]
    teacher = run.read_json("rationales/summary.json")["teacher_test_accuracy"]
    log.info("[evaluate] test accuracy %s; teacher %.4f", scores, teacher)
    return StageResult(summary={"accuracy": scores, "teacher_test_accuracy": teacher, "test_rows": len(test),
                                "label_shares": dict(Counter(gold).most_common(5)),
                                "seconds": time.perf_counter() - start})
