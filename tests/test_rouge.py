"""ROUGE-L filter: parity with rouge-score itself, pair by pair and decision by decision."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenizers

from lion_distill.lion.rouge import NoveltyFilter, rouge_l_f1, rouge_tokens, unicode_tokens

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rouge(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def brute_force(pool, candidates, threshold, score=rouge):
    """Lion's definition, literally: each candidate against the pool and all kept before it."""
    others, out = list(pool), []
    for c in candidates:
        keep = all(score(o, c) < threshold for o in others)
        if keep:
            others.append(c)
        out.append(keep)
    return out


# Few distinct words, so texts collide, repeat tokens and land on exact boundary values;
# with case, punctuation, digits, non-Latin script and odd Unicode lower-casing mixed in.
WORDS = [
    "a",
    "b",
    "the",
    "The",
    "THE",
    "cat",
    "cat's",
    "x2",
    "42",
    "-",
    "...",
    "\n",
    "  ",
    "é",
    "İ",
    "\u212a",
    "中文",
    "我",
    "ß",
    "naïve",
    "_",
    "a_b",
    "e-mail",
]
word_texts = st.lists(st.sampled_from(WORDS), max_size=14).map(" ".join)
any_texts = st.one_of(word_texts, st.text(max_size=40), st.text(alphabet="ab c", max_size=30))


@FAST
@given(st.text(max_size=60))
def test_tokenizer_matches_rouge_score(text):
    assert rouge_tokens(text) == tokenizers.DefaultTokenizer(use_stemmer=False).tokenize(text)


@FAST
@given(any_texts, any_texts)
def test_f1_matches_rouge_score_bit_for_bit(a, b):
    assert rouge_l_f1(a, b) == rouge(a, b) == rouge_l_f1(b, a)


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=200, max_size=400),
    st.lists(st.sampled_from(["a", "b", "c", "f"]), min_size=200, max_size=400),
)
def test_f1_long_texts(a, b):
    a, b = " ".join(a), " ".join(b)
    assert rouge_l_f1(a, b) == rouge(a, b)


def test_f1_zero_cases():
    assert rouge_l_f1("", "") == rouge("", "") == 0
    assert rouge_l_f1("   \n", "a b") == rouge("   \n", "a b") == 0
    assert rouge_l_f1("我爱你", "我爱你") == rouge("我爱你", "我爱你") == 0
    assert rouge_l_f1("a b", "c d") == 0


def lcs_pair(lcs: int, m: int, n: int) -> tuple[str, str]:
    """Two texts of m and n tokens whose LCS is exactly `lcs`."""
    a = [f"w{i}" for i in range(m)]
    b = a[:lcs] + [f"v{i}" for i in range(n - lcs)]
    return " ".join(a), " ".join(b)


def test_exact_boundary_0_7():
    pool, cand = lcs_pair(7, 10, 10)
    assert rouge(pool, cand) == 0.7
    assert NoveltyFilter([pool], threshold=0.7).filter([cand]) == [False]
    assert NoveltyFilter([pool], threshold=0.7000001).filter([cand]) == [True]


def test_every_boundary_value_of_small_lengths():
    # rouge-score's float F1 is not always the double nearest 2L/(m+n): the filter must
    # use the same bits, so F1 itself as threshold rejects and the next double keeps.
    for m in range(1, 13):
        for n in range(1, 13):
            for lcs in range(1, min(m, n) + 1):
                a, b = lcs_pair(lcs, m, n)
                f = rouge(a, b)
                up = math.nextafter(f, 2)
                assert NoveltyFilter([a], threshold=f).filter([b]) == [False], (lcs, m, n)
                assert NoveltyFilter([a], threshold=up).filter([b]) == [True], (lcs, m, n)
                assert NoveltyFilter([], threshold=f).filter([a, b]) == [True, False]


thresholds = st.sampled_from([0.0, 0.2, 0.5, 0.6, 0.7, 0.7000001, 0.75, 0.8, 0.9, 1.0, 1.5, -1.0])


@FAST
@given(st.lists(any_texts, max_size=12), st.lists(any_texts, max_size=12), thresholds, st.integers(0, 12))
def test_filter_matches_brute_force(pool, cands, threshold, split):
    f = NoveltyFilter(pool, threshold=threshold)
    got = f.filter(cands[:split]) + f.filter(cands[split:])  # kept ones carry over between calls
    assert got == brute_force(pool, cands, threshold)
    assert f.kept == [c for c, k in zip(cands, got) if k]
    assert f.pool_size == len(pool) + sum(got)


@FAST
@given(st.lists(word_texts, min_size=1, max_size=10), st.lists(word_texts, max_size=12), st.data())
def test_filter_at_thresholds_taken_from_actual_scores(pool, cands, data):
    scores = sorted({rouge(a, b) for a in pool + cands for b in cands} - {0})
    if not scores:
        return
    f = data.draw(st.sampled_from(scores))
    threshold = data.draw(st.sampled_from([f, math.nextafter(f, 2), math.nextafter(f, -1)]))
    assert NoveltyFilter(pool, threshold=threshold).filter(cands) == brute_force(pool, cands, threshold)


def test_duplicates_and_empties():
    pool = ["Write a poem about the sea.", "", "   "]
    cands = [
        "write a POEM about the sea!",
        "Write a story about a lighthouse.",
        "Write a story about a lighthouse.",
        "",
        "!!!",
        "Summarize the article.",
        "summarize the article",
    ]
    assert NoveltyFilter(pool).filter(cands) == brute_force(pool, cands, 0.7)
    assert NoveltyFilter(pool).filter(cands) == [False, True, False, True, True, True, False]


def test_unicode_tokenizer():
    zh = "请把下面这段文字翻译成英文。"
    assert NoveltyFilter([zh]).filter([zh]) == [True]  # rouge-score sees no tokens at all
    assert NoveltyFilter([zh], tokenizer="unicode").filter([zh, "请把下面这段文字翻译成法文。"]) == [False, False]
    assert NoveltyFilter([zh], tokenizer="unicode").filter(["写一首关于秋天的诗。"]) == [True]
    assert unicode_tokens("Héllo, WÖRLD! नमस्ते 我爱你 カナ") == ["héllo", "wörld", "नमस्ते", "我", "爱", "你", "カ", "ナ"]
    assert rouge_l_f1("我爱你", "我爱你", tokenizer="unicode") == 1.0


@FAST
@given(st.lists(any_texts, max_size=10), st.lists(any_texts, max_size=10), thresholds)
def test_unicode_filter_matches_brute_force(pool, cands, threshold):
    def score(a, b):
        return rouge_l_f1(a, b, tokenizer="unicode")

    def rouge_with_unicode_tokens(a, b):
        return rouge_scorer._score_lcs(unicode_tokens(a), unicode_tokens(b)).fmeasure

    got = NoveltyFilter(pool, threshold=threshold, tokenizer="unicode").filter(cands)
    assert (
        got
        == brute_force(pool, cands, threshold, score)
        == brute_force(pool, cands, threshold, rouge_with_unicode_tokens)
    )


def test_bad_tokenizer_name():
    with pytest.raises(ValueError, match="tokenizer"):
        NoveltyFilter([], tokenizer="whitespace")


@pytest.mark.ray
def test_ray_shards_give_identical_decisions(ray_cluster):
    import random

    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "e", "f", "the", "cat", "dog", "sat", "on", "mat"]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(0, 9))) for _ in range(600)]
    pool, cands = texts[:400], texts[400:]
    local = NoveltyFilter(pool)
    sharded = NoveltyFilter(pool, shards=2, shard_cpus=0.5)
    try:
        expected = local.filter(cands[:120]) + local.filter(cands[120:])
        assert sharded.filter(cands[:120]) + sharded.filter(cands[120:]) == expected
        assert sharded.kept == local.kept and sharded.pool_size == local.pool_size
        assert expected[:60] == brute_force(pool, cands[:60], 0.7)
    finally:
        sharded.close()


@FAST
@given(st.lists(word_texts, max_size=10), st.lists(word_texts, max_size=10), thresholds)
def test_vocabulary_beyond_code_points_falls_back_to_lists(pool, cands, threshold):
    from lion_distill.lion import rouge

    old = rouge._CODE_POINTS
    rouge._CODE_POINTS = 3  # a 4th distinct token switches the index to lists of ids
    try:
        got = NoveltyFilter(pool, threshold=threshold).filter(cands)
    finally:
        rouge._CODE_POINTS = old
    assert got == brute_force(pool, cands, threshold)


@FAST
@given(st.lists(any_texts, max_size=12), st.lists(any_texts, max_size=12), thresholds, st.integers(0, 12))
def test_an_index_built_in_chunks_and_queried_in_small_batches_decides_alike(pool, cands, threshold, split):
    """The pool's index is built a chunk of texts at a time and queries gather postings a batch
    at a time (a million-text pool's sizes): three texts and four entries here."""
    from lion_distill.lion import rouge

    old = rouge._CHUNK, rouge._FLUSH
    rouge._CHUNK, rouge._FLUSH = 3, 4
    try:
        f = NoveltyFilter(pool, threshold=threshold)
        got = f.filter(cands[:split]) + f.filter(cands[split:])
    finally:
        rouge._CHUNK, rouge._FLUSH = old
    assert got == brute_force(pool, cands, threshold)
