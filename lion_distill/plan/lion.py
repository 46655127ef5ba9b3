"""The Lion plan: every stage of every iteration priced from the config and the pools.

Row counts follow the loop (lion_distill.lion): the teacher answers the train pool (the seed pool,
then each iteration's new instructions); answers it failed are asked again in discrimination;
the student answers the cache pool, which grows by the new instructions; the referee reviews
every cache-pool pair twice and asks again for the share it could not read, once per retry;
the generator is asked for the missing instructions each round, of which a share is kept.
With an `eval` section, each evaluation of the student is priced by lion_distill.plan.evaluate.
Shares and reply lengths are the run directory's own where it has measured them, else the
priors in the config's `plan` section (stated in the plan).
"""

from __future__ import annotations

import math
from itertools import cycle

from lion_distill.config import RunConfig
from lion_distill.data import RunDir, read_pool
from lion_distill.judging.referee import referee_messages
from lion_distill.judging.rubrics import rubric_for
from lion_distill.lion.generator import KINDS, generator_messages, seed_token_cap
from lion_distill.lion.prompts import teacher_messages
from lion_distill.llm.ledger import spent_by_role
from lion_distill.llm.prompts import prompt_format, student_prompt
from lion_distill.plan import Line, Plan, budget_warnings, earlier_run, price
from lion_distill.plan.evaluate import EvalEstimates
from lion_distill.plan.observed import Estimates, Observed
from lion_distill.plan.signal import signal_line
from lion_distill.plan.tokens import counter_for, sample

STAGES = ("imitation", "discrimination", "generation")


def lion_plan(cfg: RunConfig) -> Plan:
    """-> the run's Plan; reads the pool files (or the run directory's pools and spend log), sends nothing."""
    run, completed = earlier_run(cfg.run_dir)
    it = range(cfg.lion.iterations)
    seen = Observed.read(run, [f"iter_{k}/metrics.json" for k in it])
    est = _Estimates(cfg, seen, _seed_rows(cfg, run))
    plan = Plan("lion", cfg.run_dir, [], assumptions=est.assumptions)

    evaluation = _eval_estimates(cfg, run)
    if evaluation:
        # Questions, reference answers and the teacher's answers (the NLL gap's) come once, in the first evaluation.
        plan.add(
            "iter_-1/eval",
            evaluation.reference("iter_-1/eval")
            + evaluation.teacher("iter_-1/eval", cfg.teacher)
            + _eval(evaluation, cfg, -1),
            completed,
        )

    train_rows, cache_rows = est.seed_rows, est.seed_rows
    for k in it:
        train_rows = _pool_rows(run, k, "train_pool.parquet", train_rows)
        cache_rows = _pool_rows(run, k, "cache_pool.parquet", cache_rows)
        lines = {
            "imitation": est.imitation(k, train_rows),
            "discrimination": est.discrimination(k, train_rows, cache_rows),
        }
        lines["generation"], kept = est.generation(k)
        for stage in STAGES:
            plan.add(f"iter_{k}/{stage}", lines[stage], completed)
            if stage == "imitation" and evaluation:
                plan.add(f"iter_{k}/eval", _eval(evaluation, cfg, k), completed)
        train_rows, cache_rows = kept, cache_rows + kept
    if cfg.lion.final_imitation:  # the student imitates the last iteration's new instructions too
        k = cfg.lion.iterations
        plan.add(
            f"iter_{k}/imitation", est.imitation(k, _pool_rows(run, k, "train_pool.parquet", train_rows)), completed
        )
        if evaluation:
            plan.add(f"iter_{k}/eval", _eval(evaluation, cfg, k), completed)

    if evaluation:
        plan.assumptions += [a for a in evaluation.assumptions if a not in plan.assumptions]
    roles = {name: getattr(cfg, name) for name in cfg.ROLES}
    if cfg.eval:
        roles["judge"] = cfg.eval.judge
        roles["reference"] = cfg.eval.reference.role
    budgets = {name: role.openai.budget_usd for name, role in roles.items() if role is not None and role.openai}
    plan.warnings = _cut_answers(cfg, seen) + budget_warnings(plan.lines, budgets, spent_by_role(run) if run else {})
    return plan


def _cut_answers(cfg: RunConfig, seen: Observed) -> list[str]:
    """A warning when the teacher's max_tokens is below the answer length the plan assumes (or the
    run has seen most answers cut): imitation leaves cut answers out, and stops when too few are left."""
    max_tokens, cut = (
        cfg.teacher.sampling.max_tokens,
        seen.ratio("lion/imitation_truncated_answers", "lion/imitation_asked"),
    )
    if cut is not None and cut > 1 - cfg.lion.min_imitation_fraction:
        why = f"{cut:.0%} of the teacher's answers so far were cut at it"
    elif cut is None and max_tokens < cfg.plan.answer_tokens:
        why = f"a whole answer takes about {cfg.plan.answer_tokens} tokens (plan.answer_tokens)"
    else:
        return []
    fate = "trained on without an end" if cfg.lion.train_on_truncated else "left out of imitation"
    return [
        f"teacher: sampling.max_tokens {max_tokens} cuts answers: {why}; cut answers are {fate} "
        f"(lion.train_on_truncated), and an imitation with fewer than lion.min_imitation_fraction "
        f"({cfg.lion.min_imitation_fraction:g}) of its answers trainable stops"
    ]


def _generator(cfg: RunConfig, rows: list[dict]):
    """The generator as the plan prices a reply under Lion's per-seed cap: a round asks every seed at
    its largest seed's cap (generator_for_seeds), so a reply is priced at the expected largest cap of
    new_instructions_per_iteration seeds drawn from the sampled ones."""
    per_word = cfg.lion.generator_tokens_per_seed_word
    if not per_word or not rows:
        return cfg.generator
    caps = [seed_token_cap(r, per_word) for r in rows]
    cap = max(1, round(expected_largest(caps, cfg.lion.new_instructions_per_iteration)))
    return cfg.generator.model_copy(update={"sampling": cfg.generator.sampling.model_copy(update={"max_tokens": cap})})


def expected_largest(values: list[int], n: int) -> float:
    """The expected maximum of `n` of `values` drawn without replacement."""
    values, n = sorted(values), min(n, len(values))
    # P(max is the (i+1)-th smallest) = (C(i+1, n) - C(i, n)) / C(N, n)
    return sum(v * (math.comb(i + 1, n) - math.comb(i, n)) for i, v in enumerate(values)) / math.comb(len(values), n)


def _eval_estimates(cfg: RunConfig, run: RunDir | None) -> EvalEstimates | None:
    if cfg.eval is None:
        return None
    seen = Observed.read(run, [f"iter_{k}/eval/metrics.json" for k in range(-1, cfg.lion.iterations + 1)])
    return EvalEstimates(cfg.eval, cfg.plan, seen)


def _eval(evaluation: EvalEstimates, cfg: RunConfig, k: int) -> list[Line]:
    """The student as it stands after iteration k's imitation (k = -1: the base student)."""
    return evaluation.candidate(f"iter_{k}/eval", cfg.student, "student", prompt_format(cfg.student))


def _seed_rows(cfg: RunConfig, run: RunDir | None) -> list[dict]:
    if run is not None and run.exists("iter_0/cache_pool.parquet"):
        return read_pool(run, "iter_0/cache_pool.parquet").to_pylist()
    from lion_distill.lion.loop import initial_pool

    return initial_pool(cfg)[0].to_pylist()


def _pool_rows(run: RunDir | None, k: int, name: str, planned: float) -> float:
    """A pool's size: the run directory's own where the stage before has written it."""
    if run is not None and run.exists(f"iter_{k}/{name}"):
        return read_pool(run, f"iter_{k}/{name}").num_rows
    return planned


class _Estimates(Estimates):
    """Per-request tokens and the loop's shares, from the pools, the tokenizers and what was seen."""

    def __init__(self, cfg: RunConfig, seen: Observed, seed: list[dict]):
        p, rows, rubric = cfg.plan, sample(seed), rubric_for(cfg.lion.referee_prompt)
        counters = {name: counter_for(getattr(cfg, name), name, p) for name in cfg.ROLES}
        super().__init__(
            seen,
            p,
            [
                f"seed pool: {len(seed):,} instructions; prompt tokens are the mean over "
                f"{len(rows):,} of them, rendered as each role's prompt"
            ]
            + [f"{name}: tokens counted with {c.source}" for name, c in counters.items()],
        )
        self.cfg, self.seed_rows = cfg, len(seed)
        roles = {name: getattr(cfg, name) for name in cfg.ROLES} | {"generator": _generator(cfg, rows)}
        self.reply = {
            name: self.reply_tokens(roles[name], name, call)
            for name, call in (
                ("teacher", "imitation/teacher"),
                ("student", "discrimination/student"),
                ("referee", "discrimination/referee"),
                ("generator", "generation/generator"),
            )
        }
        # A thinking teacher's completion tokens hold its thinking (servers count every generated token):
        # paid for in full, trained on with teacher.reasoning keep, an upper bound of the training's otherwise.
        self.note(f"teacher: completion tokens include any thinking (teacher.reasoning: {cfg.teacher.reasoning})")
        self.prompt = {
            "teacher": counters["teacher"].mean([teacher_messages(r) for r in rows]),
            "student": counters["student"].mean([student_prompt(r, prompt_format(cfg.student)) for r in rows]),
            # The review shows both answers: the frame's tokens plus the two replies'.
            "referee": counters["referee"].mean([referee_messages(r, "", "", rubric) for r in rows])
            + self.reply["teacher"][0]
            + self.reply["student"][0],
            "generator": counters["generator"].mean(
                [generator_messages(r, kind, cfg.lion.generator_prompt) for r, kind in zip(rows, cycle(KINDS))]
            ),
        }
        # Failed or blank: discrimination asks both again (lion_distill.lion.iteration.known_teacher_answers).
        self.teacher_failed = self.share(
            "lion/imitation_failed_answers",
            "lion/imitation_asked",
            0.0,
            "teacher answers failed or blank (asked again in discrimination)",
        )
        self.referee_retry = self.share(
            "rows/discrimination/referee_retry1",
            "rows/discrimination/referee",
            p.referee_failure_rate,
            "reviews unreadable, asked again per retry",
        )
        self.accepted = self.share(
            "lion/new_instructions",
            "lion/candidates",
            p.generator_acceptance_rate,
            "generator replies kept as new instructions",
        )

    def call(self, k: int, stage: str, call: str, role_name: str, requests: float) -> Line:
        reply, basis = self.reply[role_name]
        line = Line(
            f"iter_{k}/{stage}",
            call,
            role_name,
            requests,
            requests * self.prompt[role_name],
            requests * reply,
            basis=basis,
        )
        return price(getattr(self.cfg, role_name), line, self.throughput(role_name, call))

    def imitation(self, k: int, train_rows: float) -> list[Line]:
        t = self.cfg.train
        per_example = min(t.max_length, self.prompt["student"] + self.reply["teacher"][0])
        answered = train_rows * (1 - self.teacher_failed)
        train = Line(
            f"iter_{k}/imitation",
            "imitation/train",
            "student",
            0,
            t.epochs * answered * per_example,
            0,
            basis=f"{t.epochs} epochs of the answers",
        )
        gpus = t.num_workers * t.gpus_per_worker
        observed = self.seen.mean("tokens_per_s/imitation/train")
        per_gpu = observed / gpus if observed and gpus else self.cfg.plan.train_tokens_per_s_per_gpu
        train.gpu_hours = 0.0 if not gpus else (train.prompt_tokens / per_gpu / 3600 if per_gpu else None)
        lines = [self.call(k, "imitation", "imitation/teacher", "teacher", train_rows)]
        if self.cfg.distill.mode == "logit_kd":
            lines.append(self.signal(k, "imitation", answered))
        return [*lines, train]

    def signal(self, k: int, stage: str, rows: float) -> Line:
        """The teacher's scoring pass over `rows` answers (lion_distill.plan.signal)."""
        call = f"{stage}/signal"
        line, note = signal_line(
            f"iter_{k}/{stage}",
            call,
            self.cfg.teacher,
            self.cfg.distill,
            rows,
            self.prompt["teacher"],
            self.reply["teacher"][0],
            self.throughput("teacher", call),
        )
        self.note(note)
        return line

    def discrimination(self, k: int, train_rows: float, cache_rows: float) -> list[Line]:
        # lion.discrimination_teacher ask_again: the teacher answers the whole cache pool again.
        asked = cache_rows if self.cfg.lion.discrimination_teacher == "ask_again" else train_rows * self.teacher_failed
        teacher = self.call(k, "discrimination", "discrimination/teacher", "teacher", asked)
        if self.cfg.lion.discriminator == "divergence":  # no student answers, no referee: the teacher scores
            return [teacher, self.signal(k, "discrimination", cache_rows)]
        lines = [
            teacher,
            self.call(k, "discrimination", "discrimination/student", "student", cache_rows),
            self.call(k, "discrimination", "discrimination/referee", "referee", 2 * cache_rows),
        ]
        pairs = cache_rows
        for attempt in range(1, self.referee_rounds(cache_rows) + 1):
            pairs *= self.referee_retry
            lines.append(self.call(k, "discrimination", f"discrimination/referee_retry{attempt}", "referee", 2 * pairs))
        return lines

    def referee_rounds(self, pairs: float) -> int:
        """The referee's retry passes: lion.referee_retries, or with null (Lion's: again until a pass
        reads no more) as many as leave at least half a pair unread at the prior share (at most 20)."""
        if self.cfg.lion.referee_retries is not None:
            return self.cfg.lion.referee_retries
        rounds = 0
        while rounds < 20 and pairs * self.referee_retry ** (rounds + 1) >= 0.5:
            rounds += 1
        return rounds

    def generation(self, k: int) -> tuple[list[Line], float]:
        """-> (one line per round, new instructions kept)."""
        target = need = float(self.cfg.lion.new_instructions_per_iteration)
        lines = []
        for round_ in range(self.cfg.lion.generation_rounds):
            if need < 0.5:
                break
            lines.append(self.call(k, "generation", f"generation/generator_round{round_}", "generator", need))
            need -= need * self.accepted
        return lines, target - need
