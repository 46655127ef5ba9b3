from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from lion_distill.data import instruction_id, pool_table
from lion_distill.lion.generator import (
    REJECT_REASONS,
    candidate_rows,
    clean_candidate,
    parse_candidate,
    quotas,
    sample_seeds,
)


@pytest.mark.parametrize(
    "n,ratio,expected",
    [
        (6000, (1.0, 1.0), (3000, 3000)),
        (7, (1.0, 1.0), (4, 3)),
        (5, (1.0, 1.0), (2, 3)),
        (10, (1.0, 3.0), (2, 8)),
        (10, (2.0, 1.0), (7, 3)),
        (0, (1.0, 1.0), (0, 0)),
        (3, (1.0, 0.0), (3, 0)),
    ],
)
def test_quotas_split_exactly(n, ratio, expected):
    assert quotas(n, ratio) == expected and sum(expected) == n


def test_quotas_reject_nonsense():
    with pytest.raises(ValueError, match="ratio"):
        quotas(10, (0.0, 0.0))


def _judged(hard_ids, easy_ids, failed_ids=()):
    ok = [{"id": i, "status": "ok", "hard": True} for i in hard_ids]
    ok += [{"id": i, "status": "ok", "hard": False} for i in easy_ids]
    rows = ok + [{"id": i, "status": "failed", "hard": None} for i in failed_ids]
    return pa.Table.from_pylist(
        rows, schema=pa.schema([("id", pa.string()), ("status", pa.string()), ("hard", pa.bool_())])
    )


def _pool(ids):
    return pool_table(
        [{"instruction": f"instruction {i}", "input": "", "origin": "seed", "iteration": 0, "id": i} for i in ids]
    )


def test_sample_seeds_draws_each_kind_without_replacement_when_it_can():
    judgments = _judged(["h1", "h2", "h3"], ["e1", "e2", "e3", "e4"], ["f1"])
    seeds, counts = sample_seeds(
        judgments, _pool(["h1", "h2", "h3", "e1", "e2", "e3", "e4", "f1"]), 2, 3, np.random.default_rng(0)
    )
    assert counts == {"hard": 2, "easy": 3, "hard_from_easy": 0, "easy_from_hard": 0}
    hard = [s["id"] for s in seeds if s["kind"] == "hard"]
    easy = [s["id"] for s in seeds if s["kind"] == "easy"]
    assert len(hard) == len(set(hard)) == 2 and set(hard) <= {"h1", "h2", "h3"}
    assert len(easy) == len(set(easy)) == 3 and set(easy) <= {"e1", "e2", "e3", "e4"}
    assert all(s["instruction"] == f"instruction {s['id']}" for s in seeds)  # the pool row travels along


def test_sample_seeds_with_replacement_beyond_what_there_is():
    seeds, counts = sample_seeds(
        _judged(["h1"], ["e1", "e2"]), _pool(["h1", "e1", "e2"]), 4, 5, np.random.default_rng(1)
    )
    assert Counter(s["id"] for s in seeds if s["kind"] == "hard") == {"h1": 4}
    easy = Counter(s["id"] for s in seeds if s["kind"] == "easy")
    assert sum(easy.values()) == 5 and set(easy) == {"e1", "e2"}  # every easy one used before any repeats
    assert counts["hard"] == 4 and counts["easy"] == 5


def test_sample_seeds_fills_a_missing_kind_from_the_other_and_says_so():
    rng = np.random.default_rng(2)
    seeds, counts = sample_seeds(_judged([], ["e1", "e2"]), _pool(["e1", "e2"]), 3, 3, rng, rebalance=True)
    assert counts == {"hard": 0, "easy": 6, "hard_from_easy": 3, "easy_from_hard": 0}
    assert len(seeds) == 6 and {s["kind"] for s in seeds} == {"easy"}
    seeds, counts = sample_seeds(_judged(["h1"], []), _pool(["h1"]), 1, 2, rng, rebalance=True)
    assert counts == {"hard": 3, "easy": 0, "hard_from_easy": 0, "easy_from_hard": 2}


def test_sample_seeds_leaves_a_missing_kind_unseeded_as_lion_does():
    # Lion's scripts seed each kind from its own file only (src/generate_hard_instruction.py).
    seeds, counts = sample_seeds(_judged([], ["e1", "e2"]), _pool(["e1", "e2"]), 3, 3, np.random.default_rng(2))
    assert counts == {"hard": 0, "easy": 3, "hard_from_easy": 0, "easy_from_hard": 0, "hard_unseeded": 3}
    assert len(seeds) == 3 and {s["kind"] for s in seeds} == {"easy"}


def test_sample_seeds_is_reproducible():
    judgments, pool = _judged(["h1", "h2", "h3"], ["e1", "e2"]), _pool(["h1", "h2", "h3", "e1", "e2"])
    draw = lambda: [s["id"] for s in sample_seeds(judgments, pool, 2, 2, np.random.default_rng(7))[0]]  # noqa: E731
    assert draw() == draw()


def test_sample_seeds_draws_the_same_seeds_whatever_the_judgments_order():
    # Discrimination writes judgments as the referee's reviews come back, not in the pool's order.
    judgments, pool = (
        _judged(["h1", "h2", "h3"], ["e1", "e2", "e3"], ["f1"]),
        _pool(["e3", "h1", "f1", "e1", "h2", "h3", "e2"]),
    )
    shuffled = judgments.take(pa.array([4, 0, 6, 2, 5, 1, 3]))
    draw = lambda j: [s["id"] for s in sample_seeds(j, pool, 2, 2, np.random.default_rng(7))[0]]  # noqa: E731
    assert draw(shuffled) == draw(judgments)


def test_sample_seeds_reports_what_it_cannot_do():
    with pytest.raises(ValueError, match="every judgment failed"):
        sample_seeds(_judged([], [], ["f1"]), _pool(["f1"]), 1, 1, np.random.default_rng(0))
    with pytest.raises(KeyError, match="not in the pool"):
        sample_seeds(_judged(["h1"], []), _pool([]), 1, 0, np.random.default_rng(0))


# Replies shaped like gpt-3.5-turbo's and llama-2-chat's to the generator prompt.
GOOD_REPLIES = [
    (
        "### Instruction:\nDescribe the water cycle in three sentences.\n### Input:\n<noinput>",
        ("Describe the water cycle in three sentences.", ""),
    ),
    (
        "### Instruction:\nSummarize the following paragraph in one sentence.\n### Input:\n"
        "The Industrial Revolution began in Britain in the late 18th century.\n\n### Response:\nIt began in Britain.",
        (
            "Summarize the following paragraph in one sentence.",
            "The Industrial Revolution began in Britain in the late 18th century.",
        ),
    ),
    (
        "Sure! Here's a new instruction:\n\n### Instruction:\nClassify the following animals as mammals or reptiles.\n"
        "### Input:\nDolphin, gecko, bat, tortoise\n\nI hope this helps!",
        ("Classify the following animals as mammals or reptiles.", "Dolphin, gecko, bat, tortoise"),
    ),
    (
        "  Sure, here is a new instruction in the same domain:\n\n**Instruction:** Translate the sentence into French."
        "\n**Input:** I love reading books in the park.",
        ("Translate the sentence into French.", "I love reading books in the park."),
    ),
    (
        'New instruction: "Explain how vaccines train the immune system to recognize pathogens."',
        ("Explain how vaccines train the immune system to recognize pathogens.", ""),
    ),
    (
        "1. Write a haiku about autumn leaves falling on a quiet pond.",
        ("Write a haiku about autumn leaves falling on a quiet pond.", ""),
    ),
    (
        '{"instruction": "List three industrial uses of graphene.", "input": ""}',
        ("List three industrial uses of graphene.", ""),
    ),
    (
        '{"instruction": "Fix the grammar in this sentence.", "input": "She go to school every days."}',
        ("Fix the grammar in this sentence.", "She go to school every days."),
    ),
    (
        "```\n### Instruction:\nSort the numbers in ascending order.\n### Input:\n5, 2, 9, 1\n```",
        ("Sort the numbers in ascending order.", "5, 2, 9, 1"),
    ),
    (
        "### Instruction:\nName two rivers that flow through Germany.\n### Input:\nNone\n\n### Instruction:\n"
        "Name three mountains in Peru.",
        ("Name two rivers that flow through Germany.", ""),
    ),
    (
        "#Created Prompt#:\nDescribe the pollination strategy of the rarest orchid found in Borneo.",
        ("Describe the pollination strategy of the rarest orchid found in Borneo.", ""),
    ),
    (
        "### New Instruction:\nCompose a limerick about a cat who loves jazz.\n### Input:\nN/A",
        ("Compose a limerick about a cat who loves jazz.", ""),
    ),
    (
        "Compose a short bedtime story about a lighthouse keeper's dog.",
        ("Compose a short bedtime story about a lighthouse keeper's dog.", ""),
    ),
    # a random tiny model under the stage's guided-decoding regex: well-formed nonsense, kept
    (
        "### Instruction:\nWell people make example again.\n### Input:\n<noinput>",
        ("Well people make example again.", ""),
    ),
    (
        "### Instruction\nConvert 72 degrees Fahrenheit to Celsius.\n### Input\n<noinput>\n### Output\n22.2",
        ("Convert 72 degrees Fahrenheit to Celsius.", ""),
    ),
]


@pytest.mark.parametrize("reply,expected", GOOD_REPLIES)
def test_parse_candidate_reads_real_generator_replies(reply, expected):
    assert parse_candidate(reply) == expected


@pytest.mark.parametrize("reply", ["", "   ", None, "### Instruction:\n\n### Input:\nsomething", "```\n```"])
def test_parse_candidate_none_without_an_instruction(reply):
    assert parse_candidate(reply) is None


@pytest.mark.parametrize(
    "instruction,input,finish,reason",
    [
        ("", "", "stop", "empty"),
        ("Describe the history of the Byzantine Empire and its", "", "length", "truncated"),
        ("Tell me.", "", "stop", "too short"),
        ("Explain " + "very " * 300 + "carefully.", "", "stop", "too long"),
        ("... and then describe the sea.", "", "stop", "starts with punctuation"),
        ("Write a new instruction about cooking pasta.", "", "stop", "about the task"),
        ("Here is a question about the French Revolution.", "", "stop", "about the task"),
        ("Sure, describe a sunset over the ocean.", "", "stop", "about the task"),
        ("Rewrite the given prompt in a more formal tone.", "", "stop", "about the task"),
        ("Follow the instructions below to bake bread.", "", "stop", "about the task"),
        ("Describe the \x03 weather in Paris today.", "", "stop", "non-printable"),
        ("Describe the weather in Paris today.", "caf\ufffd", "stop", "non-printable"),
    ],
)
def test_clean_candidate_rejects_with_a_reason(instruction, input, finish, reason):
    assert clean_candidate(instruction, input, finish, max_chars=500) == reason
    assert reason in REJECT_REASONS


@pytest.mark.parametrize(
    "instruction,input",
    [
        ("Describe the water cycle.", ""),
        ("Translate the sentence into French.", "I love reading books."),
        ('"Hamlet" is a tragedy: summarize its plot.', ""),
        ("请用三句话描述水循环的过程。", ""),
    ],
)
def test_clean_candidate_keeps_real_instructions(instruction, input):
    assert clean_candidate(instruction, input, "stop", max_chars=500) is None


# A random tiny LLaMA's replies to the generator prompt (decoded by the tiny tokenizer).
TINY_MODEL_REPLIES = [
    "oo B\ufffdW include into poinoh\x15 even StartCom contin into people\ufffdk examplesffee step",
    ' overUsingap otherAirstully\ufffduenock\ufffd Start different\ufffd 27 like follapfor popPro|" home',
    "cessaryness c product\ufffd Theyiron int muysis reviewspo is\x03ash O\ufffdation again get cooerge",
    "",
    "\ufffd",
    ".,. the of",
]


def test_candidate_rows_build_pool_rows_and_reconcile_counts():
    seeds = [{"id": f"s{i}", "kind": "hard" if i % 2 else "easy"} for i in range(len(GOOD_REPLIES) + 8)]
    replies = [{"text": text, "finish_reason": "stop"} for text, _ in GOOD_REPLIES]
    replies += [{"text": text, "finish_reason": "stop"} for text in TINY_MODEL_REPLIES]
    replies += [
        {"text": None, "finish_reason": "error", "error_kind": "timeout", "error": "timeout"},
        {"text": "### Instruction:\nDescribe the causes of the First World", "finish_reason": "length"},
    ]
    rows, rejects = candidate_rows(seeds, replies, iteration=2)
    assert len(rows) + sum(rejects.values()) == len(replies)
    assert len(rows) == len(GOOD_REPLIES)
    assert rejects == Counter(
        {"non-printable": 4, "unparseable": 1, "too short": 1, "generator failed": 1, "truncated": 1}
    )
    first = rows[0]
    assert first == {
        "id": instruction_id("Describe the water cycle in three sentences.", ""),
        "instruction": "Describe the water cycle in three sentences.",
        "input": "",
        "origin": "easy",
        "parent_id": "s0",
        "iteration": 2,
    }
    assert rows[1]["input"].startswith("The Industrial Revolution") and rows[1]["origin"] == "hard"


def test_candidate_rows_needs_one_reply_per_seed():
    with pytest.raises(ValueError, match="one reply per seed"):
        candidate_rows([{"id": "s", "kind": "hard"}], [], iteration=1)


def test_rouge_l_index_is_held_in_actors_by_default_only_for_a_large_pool():
    from lion_distill.config.models import LionConfig
    from lion_distill.lion.generation import rouge_l_shards

    assert LionConfig().rouge_l_shards == "auto"
    assert rouge_l_shards("auto", 70_000) is None and rouge_l_shards("auto", 249_999) is None  # the paper's: the driver
    assert rouge_l_shards("auto", 250_000) == 1 and rouge_l_shards("auto", 1_000_000) == 1
    assert rouge_l_shards("auto", 1_000_001) == 2 and rouge_l_shards("auto", 10_000_000) == 10
    assert rouge_l_shards(None, 10_000_000) is None and rouge_l_shards(3, 10) == 3  # a setting is kept as it is
