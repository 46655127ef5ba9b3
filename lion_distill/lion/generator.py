"""The generator's side of Lion: seeds in, new instruction rows out.

From each sampled hard instruction (the student fell short) the generator writes a
new one of the same domain and task type; from each easy one, a rarer one of the
same domain. Replies are parsed and cleaned here; every reply ends up either a new
pool row or one rejection with a reason, so replies in = kept + rejected. The ROUGE-L
novelty filter comes after this, in lion_distill.lion.rouge.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.data import instruction_id
from lion_distill.lion.prompts import (
    GENERATOR_SYSTEM,
    LION_GENERATOR_SYSTEM,
    NO_INPUT,
    generator_user,
    lion_generator_user,
)
from lion_distill.llm.responses import is_error

KINDS = ("hard", "easy")


def quotas(n: int, hard_easy_ratio: tuple[float, float]) -> tuple[int, int]:
    """(n_hard, n_easy) summing to exactly n, hard rounded to nearest (ties to even)."""
    hard, easy = hard_easy_ratio
    if n < 0 or hard < 0 or easy < 0 or hard + easy <= 0:
        raise ValueError(f"quotas need n >= 0 and a non-negative, non-zero ratio; got n={n}, ratio={hard_easy_ratio}")
    n_hard = round(n * hard / (hard + easy))
    return n_hard, n - n_hard


def sample_seeds(
    judgments: pa.Table, pool: pa.Table, n_hard: int, n_easy: int, rng: np.random.Generator, rebalance: bool = False
) -> tuple[list[dict], dict]:
    """Seed rows (pool row + `kind`) for the generator, and how they were drawn.

    `judgments` needs the columns id, status and hard, in any order (drawn from in the pool's);
    only the ids are read, and only the sampled seeds' pool rows become Python rows: a pool of
    millions stays in Arrow.
    Only judged rows (status ok) seed: failed judgments are neither hard nor easy.
    Without replacement while a kind has enough instructions, with replacement beyond.
    When one kind has none at all and `rebalance` is on, its quota is filled from the other
    kind (the generator still gets N prompts, each with the template of the seed's real kind),
    and the counts say so: {"hard": .., "easy": .., "hard_from_easy": .., "easy_from_hard": ..};
    with `rebalance` off (Lion's: each kind seeds only itself) it gets no seeds, and
    "hard_unseeded" / "easy_unseeded" count its quota.
    """
    ok = judgments.filter(pc.equal(judgments["status"], "ok"))
    pool_ids = pool["id"].combine_chunks()
    at = pc.index_in(ok["id"], value_set=pool_ids)
    missing = ok["id"].filter(pc.is_null(at))
    if len(missing):
        raise KeyError(f"{len(missing)} judged ids are not in the pool, e.g. {sorted(missing.to_pylist())[:3]}")
    ok = ok.take(pc.sort_indices(at))  # the pool's order: judgments are written as their reviews come back
    hard = pc.fill_null(ok["hard"], False)
    by_kind = {"hard": ok["id"].filter(hard), "easy": ok["id"].filter(pc.invert(hard))}
    wanted = {"hard": n_hard, "easy": n_easy}
    counts = {"hard": 0, "easy": 0, "hard_from_easy": 0, "easy_from_hard": 0}
    if not len(ok) and n_hard + n_easy > 0:
        raise ValueError("no judged instructions to seed the generator (every judgment failed)")
    for kind, other in (("hard", "easy"), ("easy", "hard")):
        if not len(by_kind[kind]) and wanted[kind]:
            counts[f"{kind}_from_{other}" if rebalance else f"{kind}_unseeded"] = wanted[kind]
            if rebalance:
                wanted[other] += wanted[kind]
            wanted[kind] = 0
    seeds = []
    for kind in KINDS:
        ids, n = by_kind[kind], wanted[kind]
        if not n:
            continue
        picks = rng.permutation(len(ids))[:n]
        if n > len(ids):
            picks = np.concatenate([picks, rng.integers(0, len(ids), n - len(ids))])
        rows = pool.take(pc.index_in(ids.take(pa.array(picks, pa.int64())), value_set=pool_ids))
        seeds += [{**row, "kind": kind} for row in rows.to_pylist()]
        counts[kind] = n
    return seeds, counts


def generator_messages(seed_row: dict, kind: str, prompt: str = "lion") -> list[dict]:
    """The generator's request for one seed, in Lion's words (`lion`) or the project's (`structured`)."""
    system, user = (
        (LION_GENERATOR_SYSTEM, lion_generator_user) if prompt == "lion" else (GENERATOR_SYSTEM, generator_user)
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user(kind, seed_row["instruction"], seed_row.get("input") or "")},
    ]


# ---------------------------------------------------------------- reading a reply

# A heading line: optional list number, markdown, "New"; a colon or the end of the line after it.
_HEADING = (
    r"^[ \t]*(?:\d+[.)][ \t]*)?(?:#{{1,6}}[ \t]*)?(?:\*\*|__)?[ \t]*(?:new[ \t]+|created[ \t]+)?{name}(?!\w)"
    r"[ \t]*(?:\*\*|__)?[ \t]*(?::|(?=\n|$))[ \t]*(?:\*\*|__)?[ \t]*"
)
_INSTRUCTION = re.compile(
    _HEADING.format(name=r"(?:instruction#?|prompt|#created prompt#)"), re.IGNORECASE | re.MULTILINE
)
_INPUT = re.compile(_HEADING.format(name="input"), re.IGNORECASE | re.MULTILINE)
# Where a reply goes on past the instruction: its answer, or a second instruction.
_END = re.compile(
    _HEADING.format(name=r"(?:response|output|answer|explanation|instruction|prompt)"), re.IGNORECASE | re.MULTILINE
)
_NO_INPUT_VALUES = {
    "",
    NO_INPUT.lower(),
    "noinput",
    "<no input>",
    "none",
    "n/a",
    "na",
    "-",
    "(none)",
    "no input",
    "null",
}
# A closing remark after a blank line ("I hope this helps!") is chatter, not part of the input.
_SIGN_OFF = re.compile(
    r"\n[ \t]*\n[ \t]*(?:i hope|hope this|let me know|feel free|this (?:new )?instruction|note:)[^\n]*\s*$",
    re.IGNORECASE,
)
_LEAD = re.compile(r"^\s*(?:\d+[.)]\s+|[-*]\s+)?")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _strip(text: str) -> str:
    """Trim whitespace, a list marker, markdown emphasis and quotes around the whole."""
    text = _LEAD.sub("", text.strip().strip("`").strip()).strip()
    for mark in ("**", "__"):
        if text.startswith(mark) and text.endswith(mark) and len(text) > 4:
            text = text[2:-2].strip()
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _candidate(instruction: str, given: str) -> tuple[str, str] | None:
    instruction, given = _strip(instruction), _strip(given)
    if not instruction:
        return None
    return instruction, "" if given.lower() in _NO_INPUT_VALUES else given


def _from_json(text: str) -> tuple[str, str] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
        return None
    given = obj.get("input")
    return _candidate(obj["instruction"], given if isinstance(given, str) else "")


def parse_candidate(text: str | None) -> tuple[str, str] | None:
    """(instruction, input) from a generator reply, or None when there is no instruction.

    Reads the asked-for "### Instruction: / ### Input:" layout and what models do with
    it: a chatty line before it, "New instruction:", bold or numbered headings, quotes,
    a code fence, an answer appended ("### Response: ..."), JSON {"instruction", "input"};
    and a bare instruction with no heading at all. <noinput>, "None", "N/A" mean no input.
    """
    body = re.sub(r"^\s*```[a-z]*\s*$", "", (text or "").strip(), flags=re.MULTILINE | re.IGNORECASE).strip()
    if not body:
        return None
    if body.startswith("{") and (parsed := _from_json(body)):
        return parsed
    start = _INSTRUCTION.search(body)
    if start:
        body = body[start.end() :]
    end = _END.search(body, 1)
    body = _SIGN_OFF.sub("", body[: end.start()] if end else body)
    split = _INPUT.search(body)
    return _candidate(body[: split.start()], body[split.end() :]) if split else _candidate(body, "")


# ---------------------------------------------------------------- keeping a candidate

# The self-instruct / Lion heuristics: replies that talk about the task instead of being one.
# "instruction" anywhere, as Lion's `'instruction' in instruction.lower()`.
_META = re.compile(
    r"instruction|#\s*(?:given|created)\s+prompt\s*#|\b(?:given|created|new|above)\s+(?:prompt|task)\b"
    r"|^(?:write|create|generate)\s+(?:a|an|one)\s+(?:new\s+)?(?:instruction|prompt|task)"
    r"|^(?:here\s+is|here's|here\s+are|sure|certainly|of\s+course|okay|ok\b|as\s+an\s+ai)",
    re.IGNORECASE,
)
# Chinese and Japanese are written without spaces: count each character there as a word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
REJECT_REASONS = (
    "generator failed",
    "unparseable",
    "empty",
    "truncated",
    "too short",
    "too long",
    "starts with punctuation",
    "about the task",
    "non-printable",
    "starts with non-ascii",
)
CANDIDATE_FILTERS = ("clean", "lion")  # lion.candidate_filter


def clean_candidate(instruction: str, input: str, finish_reason: str, max_chars: int, min_words: int = 4) -> str | None:
    """Why a parsed candidate is rejected (one of REJECT_REASONS), or None to keep it.

    Lion's `post_process_gpt3_response`: cut at max_tokens, 3 words or fewer (`min_words`
    4), starting with punctuation, "instruction" anywhere. Lion also drops an instruction
    whose first character is not ASCII; here non-Latin pools keep theirs.

    `max_chars` bounds the instruction alone, as the pool readers do; inputs may be long.
    """
    if not instruction.strip():
        return "empty"
    if finish_reason == "length":
        return "truncated"  # cut off mid-instruction (or mid-input): not what the generator meant
    # U+FFFD is what a tokenizer decodes broken bytes to: a random model's signature.
    if any((not c.isprintable() and c not in "\n\t") or c == "\ufffd" for c in instruction + input):
        return "non-printable"
    if len(instruction) > max_chars:
        return "too long"
    if len(_WORD.findall(instruction)) < min_words:
        return "too short"
    if not (instruction[0].isalnum() or instruction[0] in _QUOTES + "(¿¡"):
        return "starts with punctuation"
    if _META.search(instruction):
        return "about the task"
    return None


def lion_candidate(text: str | None, finish_reason: str) -> tuple[tuple[str, str], str | None]:
    """Lion's `post_process_gpt3_response` (src/generate_hard_instruction.py), test for test and in
    its order: the reply whole is the instruction (no input), dropped when "instruction" is anywhere
    in it, it was cut at max_tokens, it has 3 words or fewer, or its first character is punctuation
    or not ASCII. -> ((instruction, ""), the reject reason or None to keep it)."""
    text = text or ""
    if "instruction" in text.lower():
        reason = "about the task"
    elif finish_reason == "length":
        reason = "truncated"
    elif len(text.split()) <= 3:
        reason = "too short"
    elif text[0] in string.punctuation:
        reason = "starts with punctuation"
    elif not text[0].isascii():
        reason = "starts with non-ascii"
    else:
        reason = None
    return (text, ""), reason


def seed_token_cap(seed: dict, tokens_per_seed_word: int) -> int:
    """Lion's generator max_tokens for one seed: `tokens_per_seed_word` (4) x the words of the seed
    as the prompt shows it (its instruction, and its input where the row has one and it is shown)."""
    return tokens_per_seed_word * len(f"{seed['instruction']} {seed.get('input') or ''}".split())


def generator_for_seeds(role, seeds: list[dict], tokens_per_seed_word: int | None):
    """The generator role for one round of seeds: its max_tokens the largest seed's cap (one request
    settings for the round; candidate_rows holds each reply to its own seed's cap), or the role as
    configured where there is no per-seed cap."""
    if not tokens_per_seed_word or not seeds:
        return role
    cap = max(seed_token_cap(seed, tokens_per_seed_word) for seed in seeds)
    return role.model_copy(update={"sampling": role.sampling.model_copy(update={"max_tokens": max(cap, 1)})})


def candidate_rows(
    seeds: list[dict],
    replies: list[dict],
    iteration: int,
    max_chars: int = 4096,
    min_words: int = 4,
    tokens_per_seed_word: int | None = None,
    candidate_filter: str = "clean",
) -> tuple[list[dict], Counter]:
    """New pool rows from the generator's replies (aligned with `seeds`), and rejects by reason.

    `candidate_filter`: "clean" reads the reply (parse_candidate) and cleans it (clean_candidate);
    "lion" keeps or drops the reply whole, as Lion's code does (lion_candidate).
    `tokens_per_seed_word`: Lion's max_tokens of 4 x the seed's words (seed_token_cap); a reply
    of that many completion tokens or more is one Lion would have cut, and is "truncated".

    A row: id = instruction_id(instruction, input), origin = the seed's kind, parent_id =
    the seed's id, iteration. Replies in = len(rows) + sum(rejects.values()); duplicates
    within the batch are left to the ROUGE-L filter, which rejects them with a count.
    """
    if len(seeds) != len(replies):
        raise ValueError(f"candidate_rows needs one reply per seed: {len(seeds)} seeds, {len(replies)} replies")
    if candidate_filter not in CANDIDATE_FILTERS:
        raise ValueError(f"candidate_filter must be one of {CANDIDATE_FILTERS}, not {candidate_filter!r}")
    rows, rejects = [], Counter()
    for seed, reply in zip(seeds, replies):
        finish = reply.get("finish_reason") or ""
        if is_error(finish):
            rejects["generator failed"] += 1
            continue
        if tokens_per_seed_word and (reply.get("completion_tokens") or 0) >= seed_token_cap(seed, tokens_per_seed_word):
            finish = "length"
        if candidate_filter == "lion":
            parsed, reason = lion_candidate(reply.get("text"), finish)
        elif (parsed := parse_candidate(reply.get("text"))) is None:
            reason = "truncated" if finish == "length" else "unparseable"
        else:
            reason = clean_candidate(*parsed, finish, max_chars, min_words)
        if reason:
            rejects[reason] += 1
            continue
        instruction, given = parsed
        rows.append(
            {
                "id": instruction_id(instruction, given),
                "instruction": instruction,
                "input": given,
                "origin": seed["kind"],
                "parent_id": seed["id"],
                "iteration": iteration,
            }
        )
    return rows, rejects
