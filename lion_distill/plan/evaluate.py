"""The evaluation plan: what an `eval` section pays, in the evaluation job and inside a Lion run.

Row counts follow lion_distill.evaluate: a reference role (where no answers file is given) answers
every question once per run directory; each evaluation has its candidate answer every question
and the judge review every pair in both orders, asking again for the share it could not read,
once per retry. The judge's prompt holds the question, the reference answer (counted from the
answers file where there is one) and the candidate's reply.
"""

from __future__ import annotations

import numpy as np

from lion_distill.config.evaluate import EvalConfig, EvalJobConfig
from lion_distill.config.models import PlanConfig, RoleConfig
from lion_distill.errors import CandidateError
from lion_distill.evaluate.evaluation import PROMPTS
from lion_distill.evaluate.job import candidate_role
from lion_distill.evaluate.questions import load_questions, read_reference_answers
from lion_distill.judging.referee import referee_messages
from lion_distill.judging.rubrics import rubric_for
from lion_distill.llm.ledger import spent_by_role
from lion_distill.llm.prompts import prompt_format
from lion_distill.plan import Line, Plan, budget_warnings, earlier_run, price
from lion_distill.plan.observed import Estimates, Observed
from lion_distill.plan.tokens import counter_for, sample


class EvalEstimates(Estimates):
    """Per-request tokens of an evaluation's calls, from the questions, the reference answers,
    the roles' tokenizers and what earlier evaluations in the run directory measured."""

    def __init__(self, cfg: EvalConfig, priors: PlanConfig, seen: Observed):
        super().__init__(seen, priors)
        self.cfg = cfg
        self.questions = load_questions(cfg.questions, cfg.seed)[0]
        self.rows = sample(self.questions)
        judge = counter_for(cfg.judge, "judge", priors)
        self.note(f"eval: {len(self.questions):,} questions; judge tokens counted with {judge.source}")
        if cfg.reference.answers is not None:
            texts = read_reference_answers(cfg.reference, self.questions)
            reference_reply = float(np.mean([judge.count(t) for t in sample(texts)]))
            self.note(f"eval: reference answers from {cfg.reference.answers}, no request")
        else:
            reference_reply = self.reply_tokens(cfg.reference.role, "reference", "eval/reference")[0]
        frames = [referee_messages(q, "", "", rubric_for(cfg.judge_prompt, q["category"])) for q in self.rows]
        self.judge_frame = judge.mean(frames) + reference_reply
        self.judge_retry = self.share(
            "rows/eval/judge_retry1",
            "rows/eval/judge",
            priors.referee_failure_rate,
            "judge reviews unreadable, asked again per retry",
        )

    def _line(
        self,
        stage: str,
        call: str,
        role: RoleConfig,
        role_name: str,
        requests: float,
        prompt: float,
        reply: tuple[float, str],
    ) -> Line:
        line = Line(stage, call, role_name, requests, requests * prompt, requests * reply[0], basis=reply[1])
        return price(role, line, self.throughput(role_name, call))

    def reference(self, stage: str) -> list[Line]:
        """The reference role's answers (none where they come from a file)."""
        role = self.cfg.reference.role
        if role is None:
            return []
        prompt = counter_for(role, "reference", self.priors).mean([PROMPTS["chat"](q) for q in self.rows])
        return [
            self._line(
                stage,
                "eval/reference",
                role,
                "reference",
                len(self.questions),
                prompt,
                self.reply_tokens(role, "reference", "eval/reference"),
            )
        ]

    def teacher(self, stage: str, role: RoleConfig) -> list[Line]:
        """A Lion run's teacher answers the questions once (lion_distill.evaluate.nll: the judge-free gap)."""
        prompt = counter_for(role, "teacher", self.priors).mean([PROMPTS["chat"](q) for q in self.rows])
        return [
            self._line(
                stage,
                "eval/teacher",
                role,
                "teacher",
                len(self.questions),
                prompt,
                self.reply_tokens(role, "teacher", "eval/teacher"),
            )
        ]

    def candidate(self, stage: str, role: RoleConfig, role_name: str, prompt_format: str) -> list[Line]:
        """One evaluation: the candidate answers, the judge reviews both orders, then its retries."""
        n, judge = len(self.questions), self.cfg.judge
        prompt = counter_for(role, role_name, self.priors).mean([PROMPTS[prompt_format](q) for q in self.rows])
        answers = self.reply_tokens(role, role_name, "eval/candidate")
        review = self.reply_tokens(judge, "judge", "eval/judge")
        lines = [
            self._line(stage, "eval/candidate", role, role_name, n, prompt, answers),
            self._line(stage, "eval/judge", judge, "judge", 2 * n, self.judge_frame + answers[0], review),
        ]
        pairs = float(n)
        for attempt in range(1, self.cfg.judge_retries + 1):
            pairs *= self.judge_retry
            lines.append(
                self._line(
                    stage,
                    f"eval/judge_retry{attempt}",
                    judge,
                    "judge",
                    2 * pairs,
                    self.judge_frame + answers[0],
                    review,
                )
            )
        return lines


def evaluate_plan(cfg: EvalJobConfig) -> Plan:
    """-> the evaluation job's Plan: the reference's answers, then each candidate's evaluation."""
    run, completed = earlier_run(cfg.run_dir)
    seen = Observed.read(run, [f"eval/{c.name}/metrics.json" for c in cfg.eval.candidates])
    est = EvalEstimates(cfg.eval, cfg.plan, seen)
    plan = Plan("evaluate", cfg.run_dir, [], assumptions=est.assumptions)
    plan.add("questions", est.reference("questions"), completed)
    roles = {"judge": cfg.eval.judge, "reference": cfg.eval.reference.role}
    for c in cfg.eval.candidates:
        roles[c.name] = _candidate_role(c, plan.assumptions)
        plan.add(
            f"candidate/{c.name}",
            est.candidate(f"candidate/{c.name}", roles[c.name], c.name, c.prompt or prompt_format(roles[c.name])),
            completed,
        )
    budgets = {name: role.openai.budget_usd for name, role in roles.items() if role is not None and role.openai}
    plan.warnings = budget_warnings(plan.lines, budgets, spent_by_role(run) if run else {})
    return plan


def _candidate_role(candidate, assumptions: list[str]) -> RoleConfig:
    """The candidate's role; a Lion run that has no student yet (the plan may come first) is
    priced as a local model with the default sampling settings, and the plan says so."""
    try:
        return candidate_role(candidate)
    except CandidateError as e:
        assumptions.append(f"{candidate.name}: priced as a local model with default sampling ({e})")
        return RoleConfig(backend="vllm", model=candidate.lion_run)
