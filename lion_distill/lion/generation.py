"""Generation: the generator writes new instructions from sampled hard instructions
(same domain and task type, similar difficulty) and easy ones (same domain, rarer).
Candidates are cleaned, then kept only if novel (ROUGE-L F1 < threshold against the
cache pool and every candidate kept before; on the instruction alone, as Lion, or with
its input: `lion.rouge_l_field`); the generator is asked again until the hard and easy
quotas are met, as Lion's loop (`while len(machine_instruction_data) < num_instructions_to_generate`),
or `generation_rounds`, a safety cap that the metrics and the report say when it binds, runs out.
With `lion.quota_rebalance` a kind's quota still unmet after a round moves to the other kind once
that one's is met, so an iteration reaches N where it can. Every request is a new draw (its
iteration, round and row enter its seed and cache key), so a seed instruction drawn
again gets a new candidate, not the old reply replayed. The train pool of the
next iteration is the new instructions; its cache pool grows by them."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config import RunConfig
from lion_distill.data import RunDir, pool_table, write_pool
from lion_distill.lion.generator import (
    candidate_rows,
    generator_for_seeds,
    generator_messages,
    quotas,
    sample_seeds,
)
from lion_distill.lion.iteration import pool, rel, shown, write_stage_metrics
from lion_distill.lion.prompts import NO_INPUT
from lion_distill.lion.rouge import NoveltyFilter
from lion_distill.llm.answers import answer, constraint
from lion_distill.llm.prompts import instruction_text
from lion_distill.llm.transient import stop_if_transient
from lion_distill.metrics import StageRecord, usage
from lion_distill.runner import StageResult

log = logging.getLogger("lion_distill.lion")

# The reply layout the generator prompts ask for, as a guided-decoding constraint.
# Words are bounded so a well-formed reply always fits in ~120 tokens.
CANDIDATE_REGEX = rf"### Instruction:\n[A-Z][a-z]{{1,9}}( [a-z]{{1,10}}){{3,11}}[.?]\n### Input:\n{NO_INPUT}"
CANDIDATE_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "instruction": {"type": "string", "maxLength": 1000},
        "input": {"type": "string", "maxLength": 1000},
    },
    "required": ["instruction", "input"],
    "additionalProperties": False,
}


@dataclass
class Found:
    """What the rounds of one iteration's generation have made so far."""

    need: dict[str, int]  # new instructions of each kind still to find
    kept: list[dict] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)  # every candidate, kept or rejected
    rejects: Counter = field(default_factory=Counter)
    drawn: Counter = field(default_factory=Counter)  # seeds by kind (and quotas moved for want of a kind)
    quota_moves: Counter = field(default_factory=Counter)
    records: list[StageRecord] = field(default_factory=list)
    rounds: int = 0  # rounds the generator was asked in


def generation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> StageResult:
    cache_pool = pool(run, k, "cache")
    seed_pool = shown(cache_pool, cfg.lion.show_input)  # the seeds as the generator is shown them
    judgments = run.read_table(rel(k, "discrimination", "judgments.parquet"), columns=["id", "status", "hard"])
    novelty, pool_ids = novelty_filter(cfg, cache_pool), cache_pool.column("id").combine_chunks()
    rng = np.random.default_rng([cfg.lion.seed, k])
    found = Found(
        dict(zip(("hard", "easy"), quotas(cfg.lion.new_instructions_per_iteration, cfg.lion.hard_easy_ratio)))
    )
    filter_record = StageRecord("generation/filter", extra={"pool_size": cache_pool.num_rows})
    for round_ in range(cfg.lion.generation_rounds):
        if not sum(found.need.values()):
            break
        requests = draw_requests(judgments, seed_pool, found, rng, k, round_, cfg.lion.quota_rebalance)
        if not requests:
            break
        found.rounds += 1
        replies = ask_generator(cfg, run, k, round_, requests, found)
        rows = candidates(cfg, k, requests, replies, found)
        fresh = new_ids(rows, pool_ids, found)
        compared = rouge_text(cfg.lion.rouge_l_field)
        keep_novel(fresh, novelty, found, filter_record, compared, cfg.lion.quota_rebalance)
    capped = round_cap_bound(found.rounds, cfg.lion.generation_rounds, sum(found.need.values()))
    _log(cfg, k, found, capped)
    new = pool_table(found.kept)
    write_pools(run, k, cache_pool, new, found.replies)
    assert len(found.replies) == len(found.kept) + sum(found.rejects.values()), (len(found.replies), found.rejects)
    figures = stage_metrics(cfg, found, cache_pool, new, capped)
    write_stage_metrics(run, k, "generation", [*found.records, filter_record], figures)
    summary = {
        "new_instructions": new.num_rows,
        "candidates": len(found.replies),
        "generation_rejects": dict(found.rejects),
    }
    return StageResult(counters=usage(found.records), summary=summary)


def novelty_filter(cfg: RunConfig, cache_pool: pa.Table) -> NoveltyFilter:
    """The ROUGE-L filter over the cache pool's texts (lion_distill.lion.rouge); its rows stay in Arrow."""
    return NoveltyFilter(
        rouge_texts(cache_pool, cfg.lion.rouge_l_field),
        threshold=cfg.lion.rouge_l_threshold,
        tokenizer=cfg.lion.rouge_l_tokenizer,
        shards=rouge_l_shards(cfg.lion.rouge_l_shards, cache_pool.num_rows),
        strict=cfg.lion.rouge_l_reject == "above",
    )


def draw_requests(
    judgments: pa.Table, seed_pool: pa.Table, found: Found, rng, k: int, round_: int, rebalance: bool
) -> list[dict]:
    """A round's seeds, one request each, for the quotas still unmet. With `rebalance` a missing
    kind's quota is filled from the other kind (sample_seeds); without, a kind with no seeds is
    given up: the quotas are tracked that way too."""
    seeds, counts = sample_seeds(judgments, seed_pool, found.need["hard"], found.need["easy"], rng, rebalance)
    found.drawn.update(counts)
    for kind, other in (("hard", "easy"), ("easy", "hard")):
        moved, unseeded = counts[f"{kind}_from_{other}"], counts.get(f"{kind}_unseeded", 0)
        found.need[kind], found.need[other] = found.need[kind] - moved - unseeded, found.need[other] + moved
    return [{**seed, "id": f"{k}-{round_}-{n}", "seed_id": seed["id"]} for n, seed in enumerate(seeds)]


def ask_generator(cfg: RunConfig, run: RunDir, k: int, round_: int, requests: list[dict], found: Found) -> list[dict]:
    """The generator's reply to each request, in order; every request a new draw of its own, capped
    at its round's largest seed's tokens (generator_for_seeds)."""
    stage = f"generation/generator_round{round_}"
    prompt_kind = cfg.lion.generator_prompt
    replies, record = answer(
        generator_for_seeds(cfg.generator, requests, cfg.lion.generator_tokens_per_seed_word),
        requests,
        lambda r: generator_messages(r, r["kind"], prompt_kind),
        stage=stage,
        role_name="generator",
        run_dir=run,
        structured_output=constraint(
            cfg.lion.generator_constraint, cfg.generator, CANDIDATE_REGEX, CANDIDATE_JSON_SCHEMA
        ),
        draw=f"iter_{k}/{stage}",
        parts=rel(k, "generation", "parts"),
    )
    found.records.append(record)
    # Before the round's candidates decide the next round's seeds: the next attempt asks the failed again.
    stop_if_transient(f"iteration {k} generation: the generator (round {round_})", replies)
    return replies.to_pylist()  # a round's candidates: thousands, not the pool


def candidates(cfg: RunConfig, k: int, requests: list[dict], replies: list[dict], found: Found) -> list[dict]:
    """The replies kept (as replies.parquet's rows) and cleaned into pool rows; rejects counted."""
    found.replies += [
        {
            "id": q["id"],
            "seed_id": q["seed_id"],
            "kind": q["kind"],
            "text": r.get("text"),
            "finish_reason": r.get("finish_reason"),
        }
        for q, r in zip(requests, replies)
    ]
    rows, rejects = candidate_rows(
        [{**r, "id": r["seed_id"]} for r in requests],
        replies,
        k + 1,
        max_chars=cfg.data.max_instruction_chars,
        tokens_per_seed_word=cfg.lion.generator_tokens_per_seed_word,
        candidate_filter=cfg.lion.candidate_filter,
    )
    found.rejects.update(rejects)
    return rows


def new_ids(rows: list[dict], pool_ids: pa.Array, found: Found) -> list[dict]:
    """The rows whose id is neither in the cache pool nor kept before. Identical text is caught by
    id too: ROUGE-L's default tokenizer sees no tokens in non-Latin text."""
    in_pool = pc.is_in(pa.array([r["id"] for r in rows], pa.string()), value_set=pool_ids).to_pylist()
    seen, fresh = {r["id"] for r in found.kept}, []
    for row, known in zip(rows, in_pool):
        if known or row["id"] in seen:
            found.rejects["duplicate id"] += 1
        else:
            seen.add(row["id"])
            fresh.append(row)
    return fresh


def keep_novel(
    fresh: list[dict], novelty: NoveltyFilter, found: Found, record: StageRecord, compared, rebalance: bool
) -> None:
    """The novel rows kept while their kind's quota lasts. With `rebalance` a quota still unmet after
    the round moves to the other kind once that kind's is met: its spare candidates fill it now,
    the next round asks that kind for the rest."""
    start = time.perf_counter()
    decisions = novelty.filter([compared(r) for r in fresh])
    record.seconds += time.perf_counter() - start
    record.rows += len(fresh)
    spare = []
    for row, novel in zip(fresh, decisions):
        if not novel:
            found.rejects["rouge-l too similar"] += 1
        elif found.need[row["origin"]] <= 0:
            spare.append(row)
        else:
            found.need[row["origin"]] -= 1
            found.kept.append(row)
    for kind, other in (("hard", "easy"), ("easy", "hard")):
        if rebalance and found.need[kind] > 0 and found.need[other] <= 0:
            found.quota_moves[f"{kind}_to_{other}"] += found.need[kind]
            found.need[other], found.need[kind] = found.need[other] + found.need[kind], 0
    for row in spare:
        if found.need[row["origin"]] > 0:
            found.need[row["origin"]] -= 1
            found.kept.append(row)
        else:
            found.rejects["over quota"] += 1


def _log(cfg: RunConfig, k: int, found: Found, capped: bool) -> None:
    asked = cfg.lion.new_instructions_per_iteration
    log.info(
        "iteration %d generation: %d new instructions (%d asked for) from %d candidates; rejects %s",
        k,
        len(found.kept),
        asked,
        len(found.replies),
        dict(found.rejects),
    )
    if len(found.kept) < asked:
        log.warning(
            "iteration %d: %d of %d new instructions after %d rounds%s (rejects: %s; seeds drawn: %s)",
            k,
            len(found.kept),
            asked,
            found.rounds,
            " (the cap, lion.generation_rounds)" if capped else "",
            dict(found.rejects),
            dict(found.drawn),
        )


def write_pools(run: RunDir, k: int, cache_pool: pa.Table, new: pa.Table, replies: list[dict]) -> None:
    """The candidates and the new instructions; the next iteration's pools: train on the new
    instructions only, the cache keeps all."""
    run.write_table(rel(k, "generation", "replies.parquet"), pa.Table.from_pylist(replies) if replies else pa.table({}))
    write_pool(run, rel(k, "generation", "new_instructions.parquet"), new)
    write_pool(run, rel(k + 1, "train_pool.parquet"), new)
    write_pool(run, rel(k + 1, "cache_pool.parquet"), pa.concat_tables([cache_pool, new]))


def stage_metrics(cfg: RunConfig, found: Found, cache_pool: pa.Table, new: pa.Table, capped: bool) -> dict:
    return {
        "lion/new_instructions": new.num_rows,
        "lion/candidates": len(found.replies),
        "lion/cache_pool_size": cache_pool.num_rows + new.num_rows,
        "lion/train_pool_size": new.num_rows,
        "lion/new_hard": sum(1 for r in found.kept if r["origin"] == "hard"),
        "lion/new_easy": sum(1 for r in found.kept if r["origin"] == "easy"),
        **{f"generation_rejects/{reason}": n for reason, n in found.rejects.items() if n},
        **{f"lion/seeds_{kind}": n for kind, n in found.drawn.items() if n},
        **{f"lion/quota_moved_{move}": n for move, n in found.quota_moves.items() if n},
        "lion/generation_rounds": found.rounds,
        "lion/generation_round_cap": int(capped),
        "lion/new_instructions_missing": cfg.lion.new_instructions_per_iteration - new.num_rows,
    }


def round_cap_bound(rounds: int, cap: int, still_needed: int) -> bool:
    """Whether the safety cap on rounds ended generation: every round was run and the quotas are
    still unmet (Lion's loop would have gone on asking)."""
    return rounds >= cap and still_needed > 0


ROUGE_L_DRIVER_ROWS = 250_000  # "auto": a cache pool this large or larger is indexed in Ray actors, not on the driver
ROUGE_L_SHARD_ROWS = 1_000_000  # "auto": instructions per actor (its index: about 1.1 GB, benchmarks/RESULTS.md)


def rouge_l_shards(setting: int | str | None, pool_rows: int) -> int | None:
    """The Ray actors that hold ROUGE-L's index of a cache pool of `pool_rows` instructions: None
    (the driver) or how many (`lion.rouge_l_shards`; "auto" decides by the pool's size, so that
    a pool of millions does not hold the head node's memory for the whole stage)."""
    if setting != "auto":
        return setting
    return None if pool_rows < ROUGE_L_DRIVER_ROWS else -(-pool_rows // ROUGE_L_SHARD_ROWS)


def rouge_texts(pool: pa.Table, field: str) -> list[str]:
    """A pool's texts that ROUGE-L compares, per `lion.rouge_l_field`, column by column."""
    if field == "instruction":
        return pool.column("instruction").to_pylist()
    return [
        instruction_text(i, x) for i, x in zip(pool.column("instruction").to_pylist(), pool.column("input").to_pylist())
    ]


def rouge_text(field: str):
    """A row -> the text ROUGE-L compares, per `lion.rouge_l_field`."""
    if field == "instruction":
        return lambda row: row["instruction"]
    return lambda row: instruction_text(row["instruction"], row["input"])
