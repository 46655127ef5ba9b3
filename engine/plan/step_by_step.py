"""The step-by-step plan: what the `rationales` stage pays, from the task's rows and the few-shot prompt.

A generating teacher answers every train and test row once (`rationales/teacher`); the released
PaLM rationales cost nothing. The training stages send no request: they are listed with the
tokens they train on (steps x batch, or epochs over the fraction) and no GPU-hours, which this
job's config has no throughput for.
"""
from __future__ import annotations

from engine.config.models import PlanConfig
from engine.config.step_by_step import StepByStepConfig
from engine.plan import Line, Plan, budget_warnings, price
from engine.plan.tokens import counter_for, sample


def step_by_step_plan(cfg: StepByStepConfig) -> Plan:
    from engine.step_by_step.prompts import default_prompt_file, load_prompt
    from engine.step_by_step.stages import read_task

    splits, _ = read_task(cfg)
    rows = splits["train"] + splits["test"]
    plan = Plan("step_by_step", cfg.run_dir, [], assumptions=[f"{len(splits['train']):,} train and "
                                                              f"{len(splits['test']):,} test rows"])
    if cfg.teacher.source == "generate":
        role, priors = cfg.teacher.role, PlanConfig()
        counter = counter_for(role, "teacher", priors)
        prompt = load_prompt(cfg.teacher.prompt_file or default_prompt_file(cfg.data.task))
        per_prompt = counter.mean([prompt.render(r) for r in sample(rows)])
        plan.assumptions += [f"teacher: tokens counted with {counter.source}",
                             f"teacher: max_tokens ({role.sampling.max_tokens}) completion tokens a reply"]
        line = Line("rationales", "rationales/teacher", "teacher", len(rows), len(rows) * per_prompt,
                    len(rows) * role.sampling.max_tokens, basis="max_tokens")
        plan.lines.append(price(role, line, None))
        if role.openai is not None:
            plan.warnings = budget_warnings(plan.lines, {"teacher": role.openai.budget_usd}, {})
    else:
        plan.assumptions.append("teacher: the released PaLM rationales, no request")
    t = cfg.train
    for method in cfg.methods:
        for fraction in sorted(cfg.fractions):
            examples = cfg.steps * t.batch_size * t.gradient_accumulation_steps if cfg.steps else \
                t.epochs * fraction * len(splits["train"])
            plan.lines.append(Line(f"train/{method}/{fraction:g}", f"train/{method}", "student", 0,
                                   examples * t.max_length, 0, gpu_hours=None,
                                   basis=f"{examples:,.0f} examples x max_length {t.max_length} (upper bound)"))
    return plan
