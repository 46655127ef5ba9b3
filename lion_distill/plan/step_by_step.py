"""The step-by-step plan: what the `rationales` stage pays, from the task's rows and the few-shot
prompt, and what the training grid trains on.

A generating teacher answers every train, dev and test row once (`rationales/teacher`); the
released PaLM rationales cost nothing. Each training stage (one per cell of the grid: method x
fraction x label source x seed x student) sends no request: it is listed with the tokens it
trains on (steps x batch, or epochs over the fraction, at most `max_length` an example, the
rationale task's too) and GPU-hours from the run directory's measured training throughput, else
`plan.train_tokens_per_s_per_gpu`. Validation and test predictions are not priced.
"""

from __future__ import annotations

from lion_distill.config.step_by_step import StepByStepConfig
from lion_distill.data import RunDir
from lion_distill.plan import Line, Plan, budget_warnings, earlier_run, price
from lion_distill.plan.tokens import counter_for, sample


def step_by_step_plan(cfg: StepByStepConfig) -> Plan:
    from lion_distill.step_by_step.grid import cells
    from lion_distill.step_by_step.prompts import default_prompt_file, load_prompt
    from lion_distill.step_by_step.stages import read_task

    run, completed = earlier_run(cfg.run_dir)
    splits, _ = read_task(cfg)
    rows = [r for split in splits.values() for r in split]
    grid = cells(cfg)
    plan = Plan(
        "step_by_step",
        cfg.run_dir,
        [],
        assumptions=[
            ", ".join(f"{len(v):,} {k}" for k, v in splits.items()) + " rows",
            f"{len(grid)} training runs (methods x fractions x label sources x seeds x students)",
        ],
    )
    if cfg.teacher.source == "generate":
        role, priors = cfg.teacher.role, cfg.plan
        counter = counter_for(role, "teacher", priors)
        prompt = load_prompt(cfg.teacher.prompt_file or default_prompt_file(cfg.data.task))
        per_prompt = counter.mean([prompt.render(r) for r in sample(rows)])
        reply = role.sampling.max_tokens * priors.completion_fraction
        plan.assumptions += [
            f"teacher: tokens counted with {counter.source}",
            f"teacher: {priors.completion_fraction:g} x max_tokens ({role.sampling.max_tokens}) "
            "completion tokens a reply",
        ]
        line = Line(
            "rationales",
            "rationales/teacher",
            "teacher",
            len(rows),
            len(rows) * per_prompt,
            len(rows) * reply,
            basis="max_tokens",
        )
        plan.add("rationales", [price(role, line, priors.tokens_per_s_per_gpu.get("teacher"))], completed)
        if role.openai is not None:
            plan.warnings = budget_warnings(plan.lines, {"teacher": role.openai.budget_usd}, {})
    else:
        plan.assumptions.append("teacher: the released PaLM rationales, no request")
    per_gpu = _train_tokens_per_s_per_gpu(cfg, run, [c.key for c in grid], plan.assumptions)
    t, gpus = cfg.train, cfg.train.num_workers * cfg.train.gpus_per_worker
    for cell in grid:
        tasks = 2 if cell.method == "step_by_step" else 1  # the rationale task doubles the sequences
        examples = (
            cfg.steps * t.batch_size * t.gradient_accumulation_steps * max(1, t.num_workers)
            if cfg.steps
            else t.epochs * cell.fraction * len(splits["train"])
        )
        tokens = examples * tasks * t.max_length
        hours = 0.0 if not gpus else (tokens / per_gpu / 3600 if per_gpu else None)
        stage = f"train/{cell.key}"
        plan.add(
            stage,
            [
                Line(
                    stage,
                    f"train/{cell.method}",
                    "student",
                    0,
                    tokens,
                    0,
                    gpu_hours=hours,
                    basis=f"{examples:,.0f} examples x {tasks} task(s) x max_length {t.max_length} (upper bound)",
                )
            ],
            completed,
        )
    return plan


def _train_tokens_per_s_per_gpu(
    cfg: StepByStepConfig, run: RunDir | None, keys: list[str], assumptions: list[str]
) -> float | None:
    """Measured in this run directory's finished training stages, else the plan's prior."""
    results = [run.read_json(f"train/{key}/result.json", {}) if run else {} for key in keys]
    seen = [r["tokens_per_s"] / r["gpus"] for r in results if r.get("tokens_per_s") and r.get("gpus")]
    observed = sum(seen) / len(seen) if seen else None
    if observed:
        assumptions.append(f"student: {observed:,.0f} training tokens/s a GPU (observed)")
        return observed
    prior = cfg.plan.train_tokens_per_s_per_gpu
    assumptions.append(
        f"student: {prior:,.0f} training tokens/s a GPU (plan prior)"
        if prior
        else "student: no training throughput known (plan.train_tokens_per_s_per_gpu): GPU-hours '?'"
    )
    return prior
