"""A referee over pairs of answers, as Lion's discrimination and the evaluation job ask it.

Each pair is asked under its rubric (engine.lion.rubrics: Lion's referee prompt, or
FastChat's by the pair's `category`). Both orders of every pair go in one dataset, so
one pass of the referee serves them (one pass per rubric where a vLLM-served referee is
constrained to each rubric's layout, their figures summed into one record);
a review that cannot be read is asked again as a new draw (sampling on, so the retry
can differ, and not the cached unreadable review again), then left failed:
`engine.lion.referee` never scores it.
"""
from __future__ import annotations

import json
from dataclasses import fields, replace
from functools import partial

from engine.config import RoleConfig
from engine.data import RunDir
from engine.lion.iteration import answer, constraint
from engine.lion.referee import (
    ROLES, context_overflow, judgment_rows, merge_retried, referee_messages, unjudgeable, unparseable_ids,
)
from engine.lion.rubrics import RUBRICS, Rubric, rubric_for
from engine.metrics import StageRecord

LOGPROBS_TOP_K = 10  # enough to cover the ten score tokens the referee chooses between


def judge_pairs(
    referee: RoleConfig,
    pairs: list[dict],
    *,
    run: RunDir,
    stage: str,
    draws: str,
    setting: str,
    prompt: str,
    retries: int,
    use_logprobs: bool,
    tau: float,
    roles: tuple[str, str] = ROLES,
    role_name: str = "referee",
    failed_answer_loses: bool = False,
    parts: str | None = None,
) -> tuple[list[dict], list[StageRecord]]:
    """-> (one judgment row per pair, in order; the StageRecords of the referee's passes).

    `role_name` is what the spend log and a run-wide budget know the judging role by;
    `pairs` as `judgment_rows` reads them (and `category` where `prompt` routes by it);
    `prompt` the rubric setting (`lion`, `vicuna`, `fastchat`: `rubric_for`); `setting`
    the constraint setting (`auto`, `regex`, `json`, `none`); `draws` names this judging
    in the run ("iter_0"), so that retry N, recorded as `<stage>_retry<N>`, is the draw `<draws>/<stage>_retry<N>`;
    `parts` where each pass keeps its finished blocks (engine.lion.iteration.answer).
    """
    records: list[StageRecord] = []
    ask = dict(run=run, setting=setting, prompt=prompt, use_logprobs=use_logprobs, tau=tau, roles=roles,
               role_name=role_name, records=records, failed_answer_loses=failed_answer_loses, parts=parts)
    judgments = _judge(referee, pairs, stage, None, **ask)
    for attempt in range(1, retries + 1):
        again = set(unparseable_ids(judgments))
        if not again:
            break
        retry = f"{stage}_retry{attempt}"
        retried = _judge(resampled(referee), [p for p in pairs if p["id"] in again], retry, f"{draws}/{retry}", **ask)
        judgments = merge_retried(judgments, retried)
    a, b = (f"{role}_text" for role in roles)
    overflowed = [p for p, j in zip(pairs, judgments)
                  if context_overflow(j["status"]) and len(p[b] or "") > len(p[a] or "")]
    if overflowed:
        stage_cut = f"{stage}_truncated"
        cut = _judge(referee, [{**p, b: p[b][:len(p[a] or "")]} for p in overflowed], stage_cut,
                     f"{draws}/{stage_cut}", **ask)
        judgments = merge_retried(judgments, [{**j, "truncated": True} for j in cut])
    return judgments, records


def check_constraint(referee: RoleConfig, setting: str, prompt: str) -> None:
    """Raise now, before any answer is paid for, where a constrained review cannot fit the
    referee's max_tokens (engine.lion.rubrics): a stage calls this first."""
    names = ("general", "coding", "math") if prompt == "fastchat" else (rubric_for(prompt).name,)
    for name in names:
        constraint(setting, referee, partial(RUBRICS[name].regex, referee.sampling.max_tokens), RUBRICS[name].schema)


def _judge(referee, pairs, stage, draw, *, run, setting, prompt, use_logprobs, tau, roles, role_name,
           records, failed_answer_loses, parts) -> list[dict]:
    orders = [f"{role}_first" for role in roles]
    rubrics = [rubric_for(prompt, p.get("category")) for p in pairs]
    # A pair no review can judge (the teacher's answer failed, say) is not sent: nobody pays for it.
    requests = [
        {"id": f"{p['id']}|{order}", "instruction": p["instruction"], "input": p["input"], "rubric": rubric.name,
         "first": p[f"{first}_text"] or "", "second": p[f"{second}_text"] or ""}
        for p, rubric in zip(pairs, rubrics) if not unjudgeable(p, roles, failed_answer_loses)
        for order, (first, second) in zip(orders, (roles, roles[::-1]))
    ]
    reviews, record = [], StageRecord(stage)
    for structured, group in _by_constraint(requests, {r.name: r for r in rubrics}, setting, referee):
        answers, part = answer(
            referee, group, lambda r: referee_messages(r, r["first"], r["second"], RUBRICS[r["rubric"]]),
            stage=stage, role_name=role_name, run_dir=run, structured_output=structured,
            logprobs=LOGPROBS_TOP_K if use_logprobs else None, draw=draw, parts=parts,
        )
        reviews += answers
        record = _summed(record, part)
    records.append(record)
    by_id = {r["id"]: r for r in reviews}
    first, second = ([{**by_id.get(f"{p['id']}|{order}", {}), "id": p["id"]} for p in pairs] for order in orders)
    return judgment_rows(pairs, first, second, tau, use_logprobs=use_logprobs, roles=roles, rubrics=rubrics,
                         failed_answer_loses=failed_answer_loses)


def _by_constraint(requests: list[dict], rubrics: dict[str, Rubric], setting: str,
                   referee: RoleConfig) -> list[tuple[dict | None, list[dict]]]:
    """Requests grouped by the structured output their rubric asks of this referee: one
    group (one pass) unless the referee is constrained and the rubrics' layouts differ."""
    asks = {name: constraint(setting, referee, partial(rubric.regex, referee.sampling.max_tokens), rubric.schema)
            for name, rubric in rubrics.items()}
    groups: dict[str, tuple[dict | None, list[dict]]] = {}
    for request in requests:
        structured = asks[request["rubric"]]
        groups.setdefault(json.dumps(structured, sort_keys=True), (structured, []))[1].append(request)
    return list(groups.values())


def _summed(a: StageRecord, b: StageRecord) -> StageRecord:
    """One record of a stage's passes, run one after another: times and counts add."""
    counts = {f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(StageRecord)
              if f.name not in ("stage", "gpus", "extra")}
    return replace(a, **counts, gpus=max(a.gpus, b.gpus), extra={**a.extra, **b.extra})


def resampled(role: RoleConfig) -> RoleConfig:
    """The referee for a retry: sampling on, so the retry (a new draw) can differ."""
    sampling = role.sampling.model_copy(update={"temperature": max(role.sampling.temperature, 0.5)})
    return role.model_copy(update={"sampling": sampling})
