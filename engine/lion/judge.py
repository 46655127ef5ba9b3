"""A referee over pairs of answers, as Lion's discrimination and the evaluation job ask it.

Both orders of every pair go in one dataset, so one pass of the referee serves them;
a review that cannot be read is asked again as a new draw (sampling on, so the retry
can differ, and not the cached unreadable review again), then left failed:
`engine.lion.referee` never scores it.
"""
from __future__ import annotations

from engine.config import RoleConfig
from engine.data import RunDir
from engine.lion.iteration import answer, constraint
from engine.lion.referee import (
    REVIEW_JSON_SCHEMA, REVIEW_REGEX, ROLES, judgment_rows, merge_retried, referee_messages, unparseable_ids,
)
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
    retries: int,
    use_logprobs: bool,
    tau: float,
    roles: tuple[str, str] = ROLES,
    role_name: str = "referee",
) -> tuple[list[dict], list[StageRecord]]:
    """-> (one judgment row per pair, in order; the StageRecords of the referee's passes).

    `role_name` is what the spend log and a run-wide budget know the judging role by;
    `pairs` as `judgment_rows` reads them; `setting` the constraint setting (`auto`,
    `regex`, `json`, `none`); `draws` names this judging in the run ("iter_0"), so that
    retry N, recorded as `<stage>_retry<N>`, is the draw `<draws>/<stage>_retry<N>`.
    """
    records: list[StageRecord] = []
    ask = dict(run=run, setting=setting, use_logprobs=use_logprobs, tau=tau, roles=roles, role_name=role_name,
               records=records)
    judgments = _judge(referee, pairs, stage, None, **ask)
    for attempt in range(1, retries + 1):
        again = set(unparseable_ids(judgments))
        if not again:
            break
        retry = f"{stage}_retry{attempt}"
        retried = _judge(resampled(referee), [p for p in pairs if p["id"] in again], retry, f"{draws}/{retry}", **ask)
        judgments = merge_retried(judgments, retried)
    return judgments, records


def _judge(referee, pairs, stage, draw, *, run, setting, use_logprobs, tau, roles, role_name, records) -> list[dict]:
    orders = [f"{role}_first" for role in roles]
    requests = [
        {"id": f"{p['id']}|{order}", "instruction": p["instruction"], "input": p["input"],
         "first": p[f"{first}_text"] or "", "second": p[f"{second}_text"] or ""}
        for p in pairs for order, (first, second) in zip(orders, (roles, roles[::-1]))
    ]
    reviews, record = answer(
        referee, requests, lambda r: referee_messages(r, r["first"], r["second"]),
        stage=stage, role_name=role_name, run_dir=run,
        structured_output=constraint(setting, referee, REVIEW_REGEX, REVIEW_JSON_SCHEMA),
        logprobs=LOGPROBS_TOP_K if use_logprobs else None, draw=draw,
    )
    records.append(record)
    by_id = {r["id"]: r for r in reviews}
    first, second = ([{**by_id[f"{p['id']}|{order}"], "id": p["id"]} for p in pairs] for order in orders)
    return judgment_rows(pairs, first, second, tau, use_logprobs=use_logprobs, roles=roles)


def resampled(role: RoleConfig) -> RoleConfig:
    """The referee for a retry: sampling on, so the retry (a new draw) can differ."""
    sampling = role.sampling.model_copy(update={"temperature": max(role.sampling.temperature, 0.5)})
    return role.model_copy(update={"sampling": sampling})
