"""Lion's ROUGE-L novelty filter: rouge-score's decisions, thousands of times faster.

Lion keeps a generated instruction only if its ROUGE-L F1 against every instruction
of the cache pool, and every candidate kept before it, is below a threshold (0.7).
`rouge_l_f1(a, b)` equals
`rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(a, b)["rougeL"].fmeasure`
for every pair of strings, and `NoveltyFilter` makes exactly the decisions a
brute-force loop over rouge-score would make, boundary values included.

How it is fast without approximating anything. ROUGE-L F1 is 2*LCS/(|a|+|b|) in exact
arithmetic, and LCS <= the size of the two token multisets' intersection. Each text
becomes a set of elements (token, k-th occurrence), so multiset intersection is set
intersection, and the classic prefix filter of set-similarity joins applies: order
elements globally rarest first; two sets sharing at least o elements must share one
among the first |set| - o + 1 of each. An inverted index over pool prefixes then
yields the few pool items that could reach the threshold; a length filter trims them,
and only those get an exact LCS (rapidfuzz, compiled) and rouge-score's own F1
arithmetic. Every bound is loosened by 1e-9 before use, far more than the few ulps
by which rouge-score's floating-point F1 can differ from the exact ratio, so no pair
that could reach the threshold is ever pruned; the decision itself is always made on
the bit-identical float.

Tokenizers: `tokenizer="rouge"` (default) is rouge-score's: lower-case, keep runs of
[a-z0-9], so text in other scripts has no tokens, scores 0 against everything and is
always kept. `tokenizer="unicode"` (NFKC, case-folded) keeps word characters of every
script, combining marks included, and splits Chinese/Japanese ideographs and kana into
single characters, so near-duplicate non-Latin instructions are caught; scripts written
without spaces other than CJK (Thai, say) become one token per run. Any callable
`str -> list[str]` works too; `rouge_l_f1` takes the same argument.

For pools beyond one machine, `NoveltyFilter(pool, shards=N)` spreads the pool over N
Ray actors that each answer "does any pool item of mine reach the threshold?" for a
batch; the driver then resolves the sequential dependency among the batch's own
candidates locally. One process (the default) is fastest on one machine.
"""
from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# Bounds are loosened by this before pruning: rouge-score's F1 is within a few ulps
# (~1e-16 relative) of 2*LCS/(m+n), so 1e-9 can never prune a pair it would reject.
_SLACK = 1e-9

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer (no stemmer): lower(), then runs of [a-z0-9].

    rouge-score substitutes every non-[a-z0-9] run by a space and splits; the maximal
    runs are the same tokens. lower() must come first: it maps e.g. the Kelvin sign to 'k'.
    """
    return _ROUGE_TOKEN.findall(text.lower())


# Ideographs, kana, bopomofo and CJK compatibility blocks: no spaces between words there.
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"


@functools.cache
def _unicode_pattern() -> re.Pattern:
    # Python's \w leaves out combining marks, which would cut Devanagari or Arabic words
    # apart; add them as a class built once from the Unicode database.
    marks, start = [], None
    for cp in range(sys.maxunicode + 2):
        is_mark = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith("M")
        if is_mark and start is None:
            start = cp
        elif not is_mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return re.compile(rf"[{_CJK}]|(?:[^\W_{_CJK}]|[{''.join(marks)}])+")


def unicode_tokens(text: str) -> list[str]:
    """Word tokens of every script; CJK ideographs and kana one character each."""
    return _unicode_pattern().findall(unicodedata.normalize("NFKC", text).casefold())


Tokenizer = str | Callable[[str], list[str]]


def _tokenizer(tokenizer: Tokenizer) -> Callable[[str], list[str]]:
    if callable(tokenizer):
        return tokenizer
    try:
        return {"rouge": rouge_tokens, "unicode": unicode_tokens}[tokenizer]
    except KeyError:
        raise ValueError(f"tokenizer must be 'rouge', 'unicode' or a callable, not {tokenizer!r}") from None


def _f1(lcs, m, n):
    """rouge_scorer._score_lcs + scoring.fmeasure, operation for operation, for lcs > 0.

    The threshold decision can hinge on the last bit, so this is their float
    arithmetic, not 2*lcs/(m+n); numpy arrays get the same IEEE-754 double operations.
    It is symmetric in (m, n) bit for bit: 2*p is exact and + and * commute.
    """
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall)


def rouge_l_f1(a: str, b: str, tokenizer: Tokenizer = "rouge") -> float:
    """ROUGE-L F1 of two texts, equal to rouge-score's (and symmetric)."""
    tok = _tokenizer(tokenizer)
    ta, tb = tok(a), tok(b)
    lcs = LCSseq.similarity(ta, tb) if ta and tb else 0
    return _f1(lcs, len(ta), len(tb)) if lcs else 0.0  # rouge-score's 0 for no overlap


def _min_overlap(n: int, t: float) -> int:
    """A lower bound on the LCS any partner of an n-token text needs to reach F1 t.

    From 2L >= t(m+n) and m >= L: L >= t*n/(2-t). `t` already carries the slack; the
    extra 1e-6 keeps the ceiling from rounding up past an exact integer.
    """
    return max(1, math.ceil(t * n / (2 - t) - 1e-6))


class _Index:
    """Token-id sequences of a pool with a prefix-filter inverted index over them."""

    def __init__(self, threshold: float, tokenize: Callable[[str], list[str]]):
        self.threshold = threshold
        self._t = threshold - _SLACK
        self._tokenize = tokenize
        self._token_ids: dict[str, int] = {}
        # Global element order, fixed at first sight of an element: (pool document
        # frequency at build time) * 2**32 + serial. Elements first seen later rank as
        # rarest (df 0); any fixed total order keeps the prefix filter exact.
        self._rank: dict[tuple[int, int], int] = {}
        # element -> item << 32 | the element's position in the item's ordered elements:
        # arrays for the pool as built, lists for what joins it later.
        self._frozen: dict[tuple[int, int], np.ndarray] = {}
        self._postings: dict[tuple[int, int], list[int]] = {}
        self.seqs: list[list[int]] = []
        self._lens = np.zeros(1024, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.seqs)

    def encode(self, text: str) -> list[int]:
        ids = self._token_ids
        return [ids.setdefault(tok, len(ids)) for tok in self._tokenize(text)]

    @staticmethod
    def _elements(seq: list[int]) -> list[tuple[int, int]]:
        seen: dict[int, int] = {}
        out = []
        for tok in seq:
            k = seen[tok] = seen.get(tok, 0) + 1
            out.append((tok, k))
        return out

    def _prefix(self, seq: list[int]) -> list[tuple[int, int]]:
        rank = self._rank
        elems = self._elements(seq)
        for e in elems:
            if e not in rank:
                rank[e] = len(rank)
        elems.sort(key=rank.__getitem__)
        return elems[: len(elems) - _min_overlap(len(elems), self._t) + 1]

    def build(self, texts: Sequence[str]) -> None:
        """Index a whole pool at once, ranking elements by their document frequency."""
        seqs = [self.encode(t) for t in texts]
        df: dict[tuple[int, int], int] = {}
        for seq in seqs:
            for e in self._elements(seq):
                df[e] = df.get(e, 0) + 1
        serial = len(self._rank)
        for i, e in enumerate(sorted(df, key=df.__getitem__)):
            self._rank.setdefault(e, (df[e] << 32) + serial + i)
        for seq in seqs:
            self.add(seq)
        for e, lst in self._postings.items():
            old = self._frozen.get(e)
            self._frozen[e] = np.array(lst, dtype=np.int64) if old is None else np.r_[old, lst]
        self._postings = {}

    def add(self, seq: list[int]) -> None:
        item = len(self.seqs)
        self.seqs.append(seq)
        if item == len(self._lens):
            self._lens = np.concatenate([self._lens, np.zeros_like(self._lens)])
        self._lens[item] = len(seq)
        if not seq or self.threshold > 1:
            return  # matches nothing: no F1 reaches a threshold above 1.0
        postings = self._postings
        for j, e in enumerate(self._prefix(seq)):
            postings.setdefault(e, []).append(item << 32 | j)

    def hits(self, seq: list[int]) -> bool:
        """Whether some indexed item has ROUGE-L F1 >= threshold with `seq`."""
        if self.threshold <= 0:
            return len(self.seqs) > 0  # every F1, 0 included, reaches it
        n = len(seq)
        if n == 0 or self.threshold > 1:
            return False
        arrays, where = [], []
        for i, e in enumerate(self._prefix(seq)):
            for found in (self._frozen.get(e), self._postings.get(e)):
                if found is not None:
                    arrays.append(found)
                    where.append(i)
        if not arrays:
            return False
        packed = np.concatenate(arrays)
        i = np.repeat(np.array(where, dtype=np.int64), [len(a) for a in arrays])
        # Stable sort by item keeps each item's matches in probe (= rank) order.
        order = np.argsort(packed >> 32, kind="stable")
        items, i, j = packed[order] >> 32, i[order], packed[order] & 0xFFFFFFFF
        first = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
        last = np.r_[first[1:], len(items)] - 1
        items = items[first]
        m = self._lens[items]
        # PPJoin's bound: every common element ranked up to the last match lies in both
        # prefixes, so it was counted; after it, at most what is left of the shorter side.
        overlap = (last - first + 1) + np.minimum(n - 1 - i[last], m - 1 - j[last])
        # LCS <= overlap and LCS <= min(m, n); F1 = 2*LCS/(m+n) must reach t.
        bound = np.minimum(overlap, np.minimum(m, n))
        survivors = items[2 * bound >= self._t * (m + n)]
        if not len(survivors):
            return False
        others = [self.seqs[k] for k in survivors.tolist()]
        lcs = process.cdist([seq], others, scorer=LCSseq.similarity, dtype=np.int64)[0]
        m = self._lens[survivors]
        matched = lcs > 0
        return bool((_f1(lcs[matched], m[matched], n) >= self.threshold).any())


class NoveltyFilter:
    """Lion's sequential ROUGE-L filter over a pool (cache pool) that grows by what it keeps.

    `filter(candidates)` returns, in order, True for each candidate whose ROUGE-L F1
    against every pool instruction and every earlier kept candidate is below
    `threshold` (F1 >= threshold rejects); kept candidates join the pool, also for
    later calls. `shards=N` holds the initial pool in N Ray actors (ray.init first).
    """

    def __init__(self, pool: Sequence[str], threshold: float = 0.7, tokenizer: Tokenizer = "rouge",
                 shards: int | None = None, shard_cpus: float = 1.0):
        self.threshold = threshold
        self.kept: list[str] = []
        self._tokenize = _tokenizer(tokenizer)
        self._index = _Index(threshold, self._tokenize)
        self._initial = len(pool)
        self._actors: list = []
        if shards:
            import ray

            actor = ray.remote(num_cpus=shard_cpus)(_ShardActor)
            size = -(-len(pool) // shards) if pool else 0
            self._actors = [actor.remote(list(pool[i:i + size]), threshold, tokenizer)
                            for i in range(0, len(pool), size)] if size else []
            ray.get([a.ready.remote() for a in self._actors])  # surface build errors here
        else:
            self._index.build(pool)

    @property
    def pool_size(self) -> int:
        """Initial pool plus every candidate kept so far."""
        return self._initial + len(self.kept)

    def filter(self, candidates: Sequence[str]) -> list[bool]:
        if self._actors:
            import ray

            # Shards answer for the fixed pool in parallel; only the kept candidates,
            # which depend on earlier decisions, are checked here in order.
            flags = ray.get([a.hits.remote(list(candidates)) for a in self._actors])
            pool_hit = [any(f[i] for f in flags) for i in range(len(candidates))]
        else:
            pool_hit = [False] * len(candidates)
        out = []
        for text, hit in zip(candidates, pool_hit):
            seq = self._index.encode(text)
            keep = not hit and not self._index.hits(seq)
            if keep:
                self._index.add(seq)
                self.kept.append(text)
            out.append(keep)
        return out

    def close(self) -> None:
        """Release the shard actors (a no-op without shards)."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []


class _ShardActor:
    """One shard of the pool, indexed once, answering batches of candidates."""

    def __init__(self, texts: list[str], threshold: float, tokenizer: Tokenizer):
        self._index = _Index(threshold, _tokenizer(tokenizer))
        self._index.build(texts)

    def ready(self) -> int:
        return len(self._index)

    def hits(self, candidates: list[str]) -> list[bool]:
        return [self._index.hits(self._index.encode(text)) for text in candidates]
