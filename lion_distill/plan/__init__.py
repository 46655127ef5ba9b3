"""What a run will cost, before it runs: requests, tokens, dollars and GPU-hours per stage.

    plan = lion_plan(cfg)               # lion_distill.plan.lion: no cluster, no request
    print(plan_table(plan)); run.write_json("plan.json", plan.as_dict())

A job's plan is a list of `Line`s, one per LLM call (or training run) of each stage, in
the order the stages run. Each job knows its own row counts; this module prices the
lines, states the assumptions and finds where a role's `budget_usd` would run out.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from lion_distill.config.models import RoleConfig
from lion_distill.data import RunDir


@dataclass
class Line:
    stage: str  # the runner's stage name: "iter_0/discrimination"
    call: str  # the stage record it prices: "discrimination/referee_retry1"
    role: str
    requests: float
    prompt_tokens: float  # for a training line: the tokens trained on, all epochs
    completion_tokens: float
    usd: float = 0.0
    gpu_hours: float | None = 0.0  # None: a local role whose throughput nobody stated or observed
    basis: str = ""  # where the figures came from, in a few words

    @property
    def family(self) -> str:
        return family(self.call)


@dataclass
class Plan:
    job: str
    run_dir: str
    lines: list[Line]
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stages the run directory already has

    def add(self, stage: str, lines: list[Line], completed: set) -> None:
        """A stage's lines, unless the run directory has it complete; a call of under half a
        request (a generator round with nearly nothing left to ask) is left out; a training
        line (no request at all) is kept."""
        if stage in completed:
            self.skipped.append(stage)
        else:
            self.lines += [ln for ln in lines if ln.requests >= 0.5 or ln.requests == 0]

    def totals(self) -> dict:
        known = [ln.gpu_hours for ln in self.lines if ln.gpu_hours is not None]
        return {
            "requests": sum(ln.requests for ln in self.lines),
            "prompt_tokens": sum(ln.prompt_tokens for ln in self.lines if ln.requests),
            "completion_tokens": sum(ln.completion_tokens for ln in self.lines),
            "usd": sum(ln.usd for ln in self.lines),
            "gpu_hours": sum(known),
            "gpu_hours_unknown": len(known) < len(self.lines),
        }

    def by_family(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for ln in self.lines:
            f = out.setdefault(ln.family, {"requests": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "usd": 0.0})
            for key in f:
                f[key] += getattr(ln, key)
        return out

    def as_dict(self) -> dict:
        return {
            "job": self.job,
            "run_dir": self.run_dir,
            "lines": [{**asdict(ln), "family": ln.family} for ln in self.lines],
            "by_family": self.by_family(),
            "totals": self.totals(),
            "assumptions": self.assumptions,
            "warnings": self.warnings,
            "skipped": self.skipped,
        }


def earlier_run(run_dir: str) -> tuple[RunDir | None, set[str]]:
    """-> (the run directory, if an earlier run left one, else None; the stages it completed).
    A filesystem URI is taken to exist: its state.json says what was done."""
    run = RunDir(run_dir) if "://" in run_dir or os.path.isdir(run_dir) else None
    return run, set((run.read_json("state.json", {}) if run else {}).get("completed", ()))


def family(call: str) -> str:
    """A call's family across rounds and retries: generation/generator_round2 -> generation/generator,
    eval/judge_truncated (a review asked again with the answer cut to fit) -> eval/judge."""
    return re.sub(r"_(?:(?:round|retry)\d+|truncated)$", "", call)


def price(role: RoleConfig, line: Line, tokens_per_s_per_gpu: float | None) -> Line:
    """Dollars from an API role's prices; GPU-hours for a local role from its throughput."""
    if role.backend == "openai":
        e = role.openai
        line.usd = (
            line.prompt_tokens * e.price_per_1k_prompt_tokens
            + line.completion_tokens * e.price_per_1k_completion_tokens
        ) / 1000.0
        line.gpu_hours = 0.0
    elif tokens_per_s_per_gpu:
        line.gpu_hours = (line.prompt_tokens + line.completion_tokens) / tokens_per_s_per_gpu / 3600.0
    else:
        line.gpu_hours = None
    return line


def budget_warnings(lines: list[Line], budgets: dict[str, float | None], spent: dict[str, float]) -> list[str]:
    """One warning per role whose `budget_usd` the plan runs past, naming the stage where it runs out."""
    warnings, running = [], dict(spent)
    for ln in lines:
        limit = budgets.get(ln.role)
        before = running.get(ln.role, 0.0)
        running[ln.role] = before + ln.usd
        if limit is not None and before <= limit < running[ln.role]:
            already = f" (${spent[ln.role]:.2f} of it spent before this plan)" if spent.get(ln.role) else ""
            warnings.append(
                f"{ln.role}: budget_usd ${limit:g} runs out in stage {ln.stage} ({ln.call}): "
                f"${running[ln.role]:.2f} planned by its end{already}; the role's requests after that fail as 'budget'"
            )
    return warnings


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "?"
    if unit == "$":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
    if unit == "h":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def plan_table(plan: Plan) -> str:
    """The plan as a fixed-width table, stage by stage, with totals, assumptions and warnings."""
    header = ["stage", "call", "role", "requests", "prompt tok", "completion tok", "USD", "GPU-h", "basis"]
    rows = [
        [
            ln.stage,
            ln.call,
            ln.role,
            _num(ln.requests),
            _num(ln.prompt_tokens),
            _num(ln.completion_tokens),
            _num(ln.usd, "$"),
            _num(ln.gpu_hours, "h"),
            ln.basis,
        ]
        for ln in plan.lines
    ]
    t = plan.totals()
    rows.append(
        [
            "total",
            "",
            "",
            _num(t["requests"]),
            _num(t["prompt_tokens"]),
            _num(t["completion_tokens"]),
            _num(t["usd"], "$"),
            _num(t["gpu_hours"], "h") + ("+?" if t["gpu_hours_unknown"] else ""),
            "",
        ]
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}

    def fmt(row):
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    out = [f"Plan for {plan.job} in {plan.run_dir}"]
    if plan.skipped:
        out.append(f"already complete, not priced: {', '.join(plan.skipped)}")
    out += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]
    out += ["", "Assumptions:", *(f"  - {a}" for a in plan.assumptions)]
    out += [f"WARNING: {w}" for w in plan.warnings]
    return "\n".join(out)
