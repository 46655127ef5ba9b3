"""Generation: the generator writes new instructions from sampled hard instructions
(same domain and task type, similar difficulty) and easy ones (same domain, rarer).
Candidates are cleaned, then kept only if novel (ROUGE-L F1 < threshold against the
cache pool and every candidate kept before; on the instruction alone, as Lion, or with
its input: `lion.rouge_l_field`); the generator is asked again until the hard and easy
quotas are met or `generation_rounds` runs out. A kind's quota still unmet after a round
moves to the other kind once that one's is met, so an iteration reaches N where it can. Every request is a new draw (its
iteration, round and row enter its seed and cache key), so a seed instruction drawn
again gets a new candidate, not the old reply replayed. The train pool of the
next iteration is the new instructions; its cache pool grows by them."""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config import RunConfig
from lion_distill.data import RunDir, pool_table, write_pool
from lion_distill.lion.generator import candidate_rows, generator_messages, quotas, sample_seeds
from lion_distill.lion.iteration import pool, rel, write_stage_metrics
from lion_distill.lion.prompts import NO_INPUT
from lion_distill.lion.rouge import NoveltyFilter
from lion_distill.llm.answers import answer, constraint
from lion_distill.llm.prompts import instruction_text
from lion_distill.llm.transient import stop_if_transient
from lion_distill.metrics import StageRecord, usage

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


def generation(cfg: RunConfig, run: RunDir, k: int, student_model: str) -> tuple[dict, dict, dict]:
    cache_pool = pool(run, k, "cache")
    judgments = run.read_table(rel(k, "discrimination", "judgments.parquet"), columns=["id", "status", "hard"])
    pool_ids = cache_pool.column("id").combine_chunks()
    compared = rouge_text(cfg.lion.rouge_l_field)
    # The pool's texts are the ROUGE-L index's input (lion_distill.lion.rouge); its rows stay in Arrow.
    novelty = NoveltyFilter(
        rouge_texts(cache_pool, cfg.lion.rouge_l_field),
        threshold=cfg.lion.rouge_l_threshold,
        tokenizer=cfg.lion.rouge_l_tokenizer,
        shards=rouge_l_shards(cfg.lion.rouge_l_shards, cache_pool.num_rows),
        strict=cfg.lion.rouge_l_reject == "above",
    )
    rng = np.random.default_rng([cfg.lion.seed, k])
    need = dict(zip(("hard", "easy"), quotas(cfg.lion.new_instructions_per_iteration, cfg.lion.hard_easy_ratio)))
    structured = constraint(cfg.lion.generator_constraint, cfg.generator, CANDIDATE_REGEX, CANDIDATE_JSON_SCHEMA)
    kept, rejects, replies_all, records, drawn, quota_moves = [], Counter(), [], [], Counter(), Counter()
    filter_record = StageRecord("generation/filter", extra={"pool_size": cache_pool.num_rows})
    prompt_kind = cfg.lion.generator_prompt

    def to_prompt(r: dict) -> list[dict]:
        return generator_messages(r, r["kind"], prompt_kind)

    for round_ in range(cfg.lion.generation_rounds):
        if not sum(need.values()):
            break
        seeds, counts = sample_seeds(judgments, cache_pool, need["hard"], need["easy"], rng)
        drawn.update(counts)
        # A missing kind's quota was moved to the other kind: track the quota that way too.
        for kind, other in (("hard", "easy"), ("easy", "hard")):
            moved = counts[f"{kind}_from_{other}"]
            need[kind], need[other] = need[kind] - moved, need[other] + moved
        requests = [{**seed, "id": f"{k}-{round_}-{n}", "seed_id": seed["id"]} for n, seed in enumerate(seeds)]
        stage = f"generation/generator_round{round_}"
        replies, record = answer(
            cfg.generator,
            requests,
            to_prompt,
            stage=stage,
            role_name="generator",
            run_dir=run,
            structured_output=structured,
            draw=f"iter_{k}/{stage}",
            parts=rel(k, "generation", "parts"),
        )
        # Before the round's candidates decide the next round's seeds: the next attempt asks the failed again.
        stop_if_transient(f"iteration {k} generation: the generator (round {round_})", replies)
        replies = replies.to_pylist()  # a round's candidates: thousands, not the pool
        records.append(record)
        replies_all += [
            {
                "id": q["id"],
                "seed_id": q["seed_id"],
                "kind": q["kind"],
                "text": r.get("text"),
                "finish_reason": r.get("finish_reason"),
            }
            for q, r in zip(requests, replies)
        ]
        rows, round_rejects = candidate_rows(
            [{**r, "id": r["seed_id"]} for r in requests],
            replies,
            k + 1,
            max_chars=cfg.data.max_instruction_chars,
            tokens_per_seed_word=cfg.lion.generator_tokens_per_seed_word,
        )
        rejects.update(round_rejects)
        # Identical text is caught by id too: ROUGE-L's default tokenizer sees no tokens in non-Latin text.
        in_pool = pc.is_in(pa.array([r["id"] for r in rows], pa.string()), value_set=pool_ids).to_pylist()
        seen, fresh = {r["id"] for r in kept}, []
        for row, known in zip(rows, in_pool):
            if known or row["id"] in seen:
                rejects["duplicate id"] += 1
            else:
                seen.add(row["id"])
                fresh.append(row)
        start = time.perf_counter()
        decisions = novelty.filter([compared(r) for r in fresh])
        filter_record.seconds += time.perf_counter() - start
        filter_record.rows += len(fresh)
        spare = []
        for row, novel in zip(fresh, decisions):
            if not novel:
                rejects["rouge-l too similar"] += 1
            elif need[row["origin"]] <= 0:
                spare.append(row)
            else:
                need[row["origin"]] -= 1
                kept.append(row)
        # A quota still unmet after the round moves to the other kind once that kind's is met:
        # its spare candidates fill it now, the next round asks that kind for the rest.
        for kind, other in (("hard", "easy"), ("easy", "hard")):
            if need[kind] > 0 and need[other] <= 0:
                quota_moves[f"{kind}_to_{other}"] += need[kind]
                need[other], need[kind] = need[other] + need[kind], 0
        for row in spare:
            if need[row["origin"]] > 0:
                need[row["origin"]] -= 1
                kept.append(row)
            else:
                rejects["over quota"] += 1

    log.info(
        "iteration %d generation: %d new instructions (%d asked for) from %d candidates; rejects %s",
        k,
        len(kept),
        cfg.lion.new_instructions_per_iteration,
        len(replies_all),
        dict(rejects),
    )
    if sum(need.values()):
        log.warning(
            "iteration %d: %d of %d new instructions after %d rounds (rejects: %s)",
            k,
            len(kept),
            cfg.lion.new_instructions_per_iteration,
            cfg.lion.generation_rounds,
            dict(rejects),
        )
    new = pool_table(kept)
    run.write_table(
        rel(k, "generation", "replies.parquet"), pa.Table.from_pylist(replies_all) if replies_all else pa.table({})
    )
    write_pool(run, rel(k, "generation", "new_instructions.parquet"), new)
    # The next iteration's pools: train on the new instructions only; the cache keeps all.
    write_pool(run, rel(k + 1, "train_pool.parquet"), new)
    write_pool(run, rel(k + 1, "cache_pool.parquet"), pa.concat_tables([cache_pool, new]))

    extra = {
        "lion/new_instructions": new.num_rows,
        "lion/candidates": len(replies_all),
        "lion/cache_pool_size": cache_pool.num_rows + new.num_rows,
        "lion/train_pool_size": new.num_rows,
        "lion/new_hard": sum(1 for r in kept if r["origin"] == "hard"),
        "lion/new_easy": sum(1 for r in kept if r["origin"] == "easy"),
        **{f"generation_rejects/{reason}": n for reason, n in rejects.items() if n},
        **{f"lion/seeds_{kind}": n for kind, n in drawn.items() if n},
        **{f"lion/quota_moved_{move}": n for move, n in quota_moves.items() if n},
    }
    assert len(replies_all) == len(kept) + sum(rejects.values()), (len(replies_all), len(kept), rejects)
    write_stage_metrics(run, k, "generation", [*records, filter_record], extra)
    summary = {"new_instructions": new.num_rows, "candidates": len(replies_all), "generation_rejects": dict(rejects)}
    return {}, usage(records), summary


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
