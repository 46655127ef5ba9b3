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
yields the few pool items that could reach the threshold; PPJoin's positional bound
and the lengths trim them (vectorised over a whole batch of candidates), and only
those get an exact LCS (rapidfuzz, compiled) and rouge-score's own F1 arithmetic.
The pool side needs no order, so a batch is joined against it at once; only
candidate-vs-candidate is sequential, found by a self-join of the batch and resolved
in Lion's order in one pass. Every bound is loosened by 1e-9 before use, far more than the few ulps
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
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence

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
_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)


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


# Token ids travel as one code point each, surrogates skipped: rapidfuzz's LCS is about
# five times faster on str than on lists. Beyond the code-point space, an index falls
# back to lists of the same integer codes, so elements and LCS stay the same.
_CODE_POINTS = 0x110000 - 0x800


def _code(token_id: int) -> int:
    return token_id + 0x800 if token_id >= 0xD800 else token_id


def _codes(seq: str | list[int]) -> list[int]:
    return seq if isinstance(seq, list) else list(map(ord, seq))


_CHUNK = 1 << 16  # sequences a step of an index's build takes at once
_FLUSH = 1 << 20  # postings entries a query batch gathers before its pairs are bounded


def _min_overlap(n, t: float):
    """A lower bound on the LCS any partner of an n-token text needs to reach F1 t (n an int
    or an array of them).

    From 2L >= t(m+n) and m >= L: L >= t*n/(2-t). `t` already carries the slack; the
    extra 1e-6 keeps the ceiling from rounding up past an exact integer.
    """
    return np.maximum(1, np.ceil(t * np.asarray(n) / (2 - t) - 1e-6)).astype(np.int64)


def _elements(seqs: list[str | list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (lengths, owner, key): every element of every sequence, owner-major. An element is a
    token with its occurrence number in its sequence, key = code << 24 | occurrence, so that
    multiset intersection is set intersection."""
    lens = np.fromiter(map(len, seqs), np.int64, len(seqs))
    if lens.size and lens.max() >= 1 << 24:
        raise ValueError(f"a text of {lens.max():,} tokens: ROUGE-L's index counts at most 16,777,215")
    if all(isinstance(s, str) for s in seqs):
        codes = np.frombuffer("".join(seqs).encode("utf-32-le"), np.uint32).astype(np.int64)
    else:
        codes = np.fromiter((c for s in seqs for c in _codes(s)), np.int64, int(lens.sum()))
    # Sorted by (owner, code), each run of one token in one sequence counts 1, 2, 3, ...
    owned = np.repeat(np.arange(len(seqs), dtype=np.int64), lens) << 32 | codes
    owned.sort()
    at = np.arange(len(owned))
    run_start = np.maximum.accumulate(np.where(np.r_[True, owned[1:] != owned[:-1]], at, 0))
    return lens, owned >> 32, (owned & 0xFFFFFFFF) << 24 | (at - run_start + 1)


class _Index:
    """Token-id sequences with a prefix-filter inverted index over them.

    Queries run in batches, fully vectorised: per query and indexed item the prefix
    matches give an upper bound on the overlap, and only pairs whose bound can reach the
    threshold get an exact LCS, computed pairwise in compiled code.

    The index is flat numpy arrays, no Python object per element: a million instructions
    with a million distinct tokens (numbered tasks) would otherwise hold a million dict
    entries, tuples and arrays, about 1 GB.
    """

    def __init__(self, threshold: float, tokenize: Callable[[str], list[str]], strict: bool = False):
        self.threshold, self.strict = threshold, strict
        self._t = threshold - _SLACK
        self._tokenize = tokenize
        self._token_ids: dict[str, int] = {}
        # An element's id is its place in the global order, rarest first: the built pool's
        # elements by document frequency (ids 0, 1, ...; `_keys` sorted, `_key_ids` theirs);
        # elements first seen later rank before them, fixed at first sight (ids -1, -2, ...).
        # Any fixed total order keeps the prefix filter exact.
        self._keys, self._key_ids = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._late_ids: dict[int, int] = {}
        # Postings of element e: item << 32 | the element's position in the item's prefix;
        # the built pool's in _entries[_offsets[e]:_offsets[e + 1]], items added later's here.
        self._offsets, self._entries = np.zeros(1, np.int64), np.zeros(0, np.int64)
        self._late_postings: dict[int, list[int]] = {}
        self.seqs: list[str | list[int]] = []
        self._lens = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.seqs)

    def encode(self, text: str) -> str | list[int]:
        ids = self._token_ids
        seq = [ids.setdefault(tok, len(ids)) for tok in self._tokenize(text)]
        return list(map(_code, seq)) if self._wide else "".join([chr(_code(i)) for i in seq])

    @property
    def _wide(self) -> bool:
        return len(self._token_ids) > _CODE_POINTS

    def _ids(self, keys: np.ndarray) -> np.ndarray:
        """Each element's id; one never seen before gets the next late id."""
        at = np.searchsorted(self._keys, keys)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == keys[found]
        ids = np.zeros(len(keys), np.int64)
        ids[found] = self._key_ids[at[found]]
        late = self._late_ids
        for k in np.flatnonzero(~found).tolist():
            ids[k] = late.setdefault(int(keys[k]), -1 - len(late))
        return ids

    def _prefixes(self, lens: np.ndarray, owner: np.ndarray, ids: np.ndarray):
        """-> (owner, position, id) of each sequence's prefix: its elements rarest first, as
        many as a partner reaching the threshold must share one of."""
        low = min(int(ids.min()), 0) if len(ids) else 0
        span = (int(ids.max()) if len(ids) else 0) - low + 1
        ranked = owner * span + (ids - low)
        ranked.sort()
        owner, ids = ranked // span, ranked % span + low
        position = np.arange(len(owner)) - np.searchsorted(owner, owner)
        keep = position < lens[owner] - _min_overlap(lens[owner], self._t) + 1
        return owner[keep], position[keep], ids[keep]

    def build(self, texts: Sequence[str]) -> None:
        """Index a whole pool at once into an empty index, ranking elements by their document frequency."""
        seqs = [self.encode(t) for t in texts]
        self.seqs, self._lens = seqs, np.fromiter(map(len, seqs), np.int64, len(seqs))
        if self.threshold > 1:  # no pair can reach it: index nothing
            return
        # A chunk of the pool at a time: its elements are tens of millions, and every step's
        # temporaries as many again.
        chunks = range(0, len(seqs), _CHUNK)
        keys = np.concatenate([np.zeros(0, np.int64), *(_elements(seqs[a : a + _CHUNK])[2] for a in chunks)])
        self._keys, df = np.unique(keys, return_counts=True)
        self._key_ids = np.empty(len(self._keys), np.int64)
        self._key_ids[np.lexsort((self._keys, df))] = np.arange(len(self._keys))
        del df
        entries, ids, done = [], [], 0
        for a in chunks:
            lens = self._lens[a : a + _CHUNK]
            owner = np.repeat(np.arange(a, a + len(lens)), lens)
            chunk = keys[done : done + len(owner)]
            done += len(owner)
            owner, position, chunk_ids = self._prefixes(
                self._lens, owner, self._key_ids[np.searchsorted(self._keys, chunk)]
            )
            entries.append(owner << 32 | position)
            ids.append(chunk_ids)
        del keys
        ids = np.concatenate([np.zeros(0, np.int64), *ids])
        self._entries = np.concatenate([np.zeros(0, np.int64), *entries])[np.argsort(ids, kind="stable")]
        self._offsets = np.r_[0, np.cumsum(np.bincount(ids, minlength=len(self._keys)))]

    def add(self, seqs: list[str | list[int]]) -> None:
        lens, owner, keys = _elements(seqs)
        base = len(self.seqs)
        self.seqs += seqs
        self._lens = np.concatenate([self._lens, lens])
        if self.threshold > 1 or not len(keys):
            return
        owner, position, ids = self._prefixes(lens, owner, self._ids(keys))
        for e, entry in zip(ids.tolist(), ((owner + base) << 32 | position).tolist()):
            self._late_postings.setdefault(e, []).append(entry)

    def _survivors(self, seqs: list[str | list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(query, item) pairs the prefix and positional bounds cannot rule out, in batches.

        A batch is flushed at about _FLUSH postings entries, to bound memory whatever the pool.
        """
        qlens, owner, keys = _elements(seqs)
        if self.threshold > 1 or not len(keys):
            return
        query, where, ids = self._prefixes(qlens, owner, self._ids(keys))
        built = ids >= 0
        starts = np.where(built, self._offsets[np.where(built, ids, 0)], 0)
        counts = np.where(built, self._offsets[np.where(built, ids + 1, 0)] - starts, 0)
        # Cut between queries, once the postings since the last cut pass _FLUSH.
        ends = np.flatnonzero(np.r_[query[1:] != query[:-1], True]) + 1
        cuts, flushed = [0], 0
        for end, seen in zip(ends.tolist(), np.cumsum(counts)[ends - 1].tolist()):
            if seen - flushed >= _FLUSH or end == len(query):
                cuts.append(end)
                flushed = seen
        for a, b in zip(cuts, cuts[1:]):
            yield self._bound(query[a:b], where[a:b], ids[a:b], starts[a:b], counts[a:b], qlens)

    def _bound(self, query, where, ids, starts, counts, qlens) -> tuple[np.ndarray, np.ndarray]:
        total = int(counts.sum())
        packed = self._entries[np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)]
        q, i = np.repeat(query, counts), np.repeat(where, counts)
        if self._late_postings:
            late = [(k, self._late_postings[e]) for k, e in enumerate(ids.tolist()) if e in self._late_postings]
            if late:
                sizes = [len(lst) for _, lst in late]
                at = np.repeat([k for k, _ in late], sizes)
                packed = np.r_[packed, np.concatenate([lst for _, lst in late]).astype(np.int64)]
                q, i = np.r_[q, query[at]], np.r_[i, where[at]]
        if not len(packed):
            return packed, packed
        # Sorted by (query, item), each pair's matches in rank order.
        order = np.lexsort((i, q * len(self.seqs) + (packed >> 32)))
        q, i, item, j = q[order], i[order], packed[order] >> 32, packed[order] & 0xFFFFFFFF
        first = np.flatnonzero(np.r_[True, (q[1:] != q[:-1]) | (item[1:] != item[:-1])])
        last = np.r_[first[1:], len(q)] - 1
        q, item = q[first], item[first]
        n, m = qlens[q], self._lens[item]
        # PPJoin's bound: every common element ranked up to the last match lies in both
        # prefixes, so it was counted; after it, at most what is left of the shorter side.
        overlap = (last - first + 1) + np.minimum(n - 1 - i[last], m - 1 - j[last])
        # LCS <= overlap and <= min(m, n); F1 = 2*LCS/(m+n) must reach t.
        bound = np.minimum(overlap, np.minimum(m, n))
        keep = 2 * bound >= self._t * (m + n)
        return q[keep], item[keep]

    def matches(self, seqs: list[str | list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """All (query, item) pairs whose ROUGE-L F1 reaches the threshold (exceeds it when `strict`; threshold > 0)."""
        out_q, out_item = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for q, item in self._survivors(seqs):
            a, b = [seqs[k] for k in q.tolist()], [self.seqs[k] for k in item.tolist()]
            if self._wide:
                a, b = [_codes(x) for x in a], [_codes(x) for x in b]
            lcs = process.cpdist(a, b, scorer=LCSseq.similarity, dtype=np.int64)
            # Survivors share a token, so lcs >= 1 and _f1's zero case cannot arise.
            f1 = _f1(lcs, self._lens[item], np.array([len(x) for x in a]))
            hit = f1 > self.threshold if self.strict else f1 >= self.threshold
            out_q.append(q[hit])
            out_item.append(item[hit])
        return np.concatenate(out_q), np.concatenate(out_item)

    def hits(self, seqs: list[str | list[int]]) -> np.ndarray:
        """Per query: whether some indexed item has ROUGE-L F1 >= threshold (> when `strict`) with it."""
        out = np.zeros(len(seqs), dtype=bool)
        if self.threshold <= 0 and not self.strict:
            out[:] = len(self.seqs) > 0  # every F1, 0 included, reaches it
        else:
            out[self.matches(seqs)[0]] = True
        return out


class NoveltyFilter:
    """Lion's sequential ROUGE-L filter over a pool (cache pool) that grows by what it keeps.

    `filter(candidates)` returns, in order, True for each candidate whose ROUGE-L F1
    against every pool instruction and every earlier kept candidate is below
    `threshold` (F1 >= threshold rejects), or at most `threshold` with `strict` (F1 >
    threshold rejects: Lion's `if max(rouge_scores) > 0.7`); kept candidates join the
    pool, also for later calls. `shards=N` holds the initial pool in N Ray actors (ray.init first).
    """

    def __init__(
        self,
        pool: Sequence[str],
        threshold: float = 0.7,
        tokenizer: Tokenizer = "rouge",
        shards: int | None = None,
        shard_cpus: float = 1.0,
        strict: bool = False,
    ):
        self.threshold, self.strict = threshold, strict
        self.kept: list[str] = []
        self._tokenizer = tokenizer
        self._index = _Index(threshold, _tokenizer(tokenizer), strict)  # pool + kept, or kept only with shards
        self._initial = len(pool)
        self._actors: list = []
        if shards and pool:
            import ray

            actor = ray.remote(num_cpus=shard_cpus)(_ShardActor)
            size = -(-len(pool) // shards)
            self._actors = [
                actor.remote(list(pool[i : i + size]), threshold, tokenizer, strict) for i in range(0, len(pool), size)
            ]
            ray.get([a.ready.remote() for a in self._actors])  # surface build errors here
        else:
            self._index.build(pool)

    @property
    def pool_size(self) -> int:
        """Initial pool plus every candidate kept so far."""
        return self._initial + len(self.kept)

    def filter(self, candidates: Sequence[str]) -> list[bool]:
        candidates = list(candidates)
        seqs = [self._index.encode(c) for c in candidates]
        # The pool side has no order: decide it for the whole batch at once (in the
        # shards, in parallel, if any). Only candidate-vs-candidate is sequential.
        hit = self._index.hits(seqs)
        if self._actors:
            import ray

            for flags in ray.get([a.hits.remote(candidates) for a in self._actors]):
                hit |= flags
        # Candidates among themselves: a throwaway index of the batch, each pair found once
        # from the later side, then Lion's order resolved in one pass.
        rivals: dict[int, list[int]] = {}
        if self.threshold <= 0 and not self.strict:
            rivals = {k: list(range(k)) for k in range(len(candidates))}
        else:
            batch = _Index(self.threshold, _tokenizer(self._tokenizer), self.strict)
            batch.build(candidates)
            for q, j in zip(*(a.tolist() for a in batch.matches(batch.seqs))):
                if j < q:
                    rivals.setdefault(q, []).append(j)
        keep: list[bool] = []
        for k in range(len(candidates)):
            keep.append(not hit[k] and not any(keep[j] for j in rivals.get(k, ())))
        self._index.add([s for s, k in zip(seqs, keep) if k])
        self.kept += [c for c, k in zip(candidates, keep) if k]
        return keep

    def close(self) -> None:
        """Release the shard actors (a no-op without shards)."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []


class _ShardActor:
    """One shard of the pool, indexed once, answering batches of candidates."""

    def __init__(self, texts: list[str], threshold: float, tokenizer: Tokenizer, strict: bool = False):
        self._index = _Index(threshold, _tokenizer(tokenizer), strict)
        self._index.build(texts)

    def ready(self) -> int:
        return len(self._index)

    def hits(self, candidates: list[str]) -> np.ndarray:
        return self._index.hits([self._index.encode(c) for c in candidates])
