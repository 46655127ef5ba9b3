"""The distill job's plan: the teacher answers the pool, scores its answers (logit_kd), the student
trains on them, and each evaluation (before and after) is priced by lion_distill.plan.evaluate."""

from __future__ import annotations

from lion_distill.config.distill import DistillRunConfig
from lion_distill.data import read_pool
from lion_distill.job_inputs import sampled_pool
from lion_distill.llm.ledger import spent_by_role
from lion_distill.llm.prompts import instruction_messages, prompt_format, student_prompt
from lion_distill.plan import Line, Plan, budget_warnings, earlier_run, price
from lion_distill.plan.evaluate import EvalEstimates
from lion_distill.plan.observed import Estimates, Observed
from lion_distill.plan.signal import signal_line
from lion_distill.plan.tokens import counter_for, sample


def distill_plan(cfg: DistillRunConfig) -> Plan:
    """-> the run's Plan; reads the pool files (or the run directory's pool), sends nothing."""
    run, completed = earlier_run(cfg.run_dir)
    seen = Observed.read(run, [f"{stage}/metrics.json" for stage in ("teacher", "signal", "train")])
    pool = (read_pool(run, "pool.parquet") if run is not None and run.exists("pool.parquet") else None) or sampled_pool(
        cfg.data, cfg.train.seed
    )[0]
    rows, n, fmt = sample(pool.to_pylist()), pool.num_rows, prompt_format(cfg.student)
    teacher, student = counter_for(cfg.teacher, "teacher", cfg.plan), counter_for(cfg.student, "student", cfg.plan)
    est = Estimates(seen, cfg.plan, [f"pool: {n:,} instructions; teacher tokens counted with {teacher.source}"])
    prompt = teacher.mean([instruction_messages(r) for r in rows])
    reply, basis = est.reply_tokens(cfg.teacher, "teacher", "teacher")
    plan = Plan("distill", cfg.run_dir, [], assumptions=est.assumptions)
    evaluation = (
        EvalEstimates(cfg.eval, cfg.plan, Observed.read(run, ["eval/before/metrics.json"])) if cfg.eval else None
    )
    if evaluation:
        before = evaluation.reference("eval/before") + evaluation.teacher("eval/before", cfg.teacher)
        plan.add("eval/before", before + evaluation.candidate("eval/before", cfg.student, "student", fmt), completed)
    answers = Line("teacher", "teacher", "teacher", n, n * prompt, n * reply, basis=basis)
    plan.add("teacher", [price(cfg.teacher, answers, est.throughput("teacher", "teacher"))], completed)
    if cfg.distill.mode == "logit_kd":
        line, note = signal_line(
            "signal", "signal", cfg.teacher, cfg.distill, n, prompt, reply, est.throughput("teacher", "signal")
        )
        plan.add("signal", [line], completed)
        est.note(note)
    plan.add(
        "train", [_train_line(cfg, seen, n, student.mean([student_prompt(r, fmt) for r in rows]) + reply)], completed
    )
    if evaluation:
        plan.add("eval/after", evaluation.candidate("eval/after", cfg.student, "student", fmt), completed)
        plan.assumptions += [a for a in evaluation.assumptions if a not in plan.assumptions]
    roles = {"teacher": cfg.teacher, **({"judge": cfg.eval.judge} if cfg.eval else {})}
    budgets = {name: role.openai.budget_usd for name, role in roles.items() if role.openai}
    plan.warnings = budget_warnings(plan.lines, budgets, spent_by_role(run) if run else {})
    return plan


def _train_line(cfg: DistillRunConfig, seen: Observed, rows: int, per_example: float) -> Line:
    t = cfg.train
    tokens = t.epochs * rows * min(t.max_length, per_example)
    line = Line("train", "train", "student", 0, tokens, 0, basis=f"{t.epochs} epochs of the answers")
    gpus = t.num_workers * t.gpus_per_worker
    observed = seen.mean("tokens_per_s/train")
    per_gpu = observed / gpus if observed and gpus else cfg.plan.train_tokens_per_s_per_gpu
    line.gpu_hours = 0.0 if not gpus else (tokens / per_gpu / 3600 if per_gpu else None)
    return line
