"""The candidate stage of a large 1:N search: LSH over MCC cylinder sketches, with voting.

After Cappelli, Ferrara, Maltoni, "Fingerprint indexing based on minutia cylinder-code"
(TPAMI 2011): each cylinder gets a code in each of ``tables`` hash tables, such that two
cylinders of the same minutia on two impressions often share a code in some table while
unrelated cylinders rarely do. The paper samples fixed bits; our cylinders are sparse
(most positions almost never set), so sampled bits are nearly always zero, and the codes
here are MinHash bands over the set bits of the coarse 8 x 8 x nd sketch instead
(:func:`matcher.cylinders.make_sketches`; coarse, so a little spatial jitter keeps most
bits). Two cylinders share a table's code with probability about Jaccard ** ``band``.

Each index segment keeps, per table and code, the rows (fingers) whose cylinders have
that code (an inverted list in CSR form). A probe's cylinders vote for the rows in their
buckets; each probe cylinder votes at most once per row (a row with many near-copies of
one common structure is not a better candidate), and buckets far fuller than average
(codes that half the world shares) are skipped as carrying no information. The rows with
the most votes, normalised by the root of their cylinder count, are the candidates, and
only they go through the comparator (cheap stage, then LSS-R for the promising ones).

Why these parameters. Recall is the share of mates among the candidates, measured on
100,000 synthetic fingers with 60 synthetic mated probes, and on the same gallery
hiding 30 real FVC2002 DB1-DB3 fingers searched with their 210 other impressions
(``python -m benchmarks.identify --gallery-size 100000 --real-mates``):

- MinHash bands of 2 over 16 tables kept 64 % of the synthetic mates (that the
  exhaustive search ranks first) in the best 1 % of the gallery and 80 % in the best
  5 %. Bands of 3 over 24 tables kept all of them in the best 1 %; longer bands (4) or
  more hash bits (18) lost some again.
- On the real mates, bands of 3 kept 93 % (24 tables), 94 % (32) and 96 % (48) in
  the best 2 %, against 97 % found first by the exhaustive search: 48 tables, at
  3.4 KB per finger of lists.
- A cap of one vote per probe cylinder and the skipping of over-full buckets each
  helped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from matcher.popcount import popcount64

EMPTY_RANK = 0xFFFF  # MinHash of a cylinder with no set bit: one shared, over-full code


@numba.njit(cache=True, nogil=True)
def cylinder_codes(sketch, ranks, band, hash_bits, out):
    """``out[c, t]``: the code of cylinder ``c`` in table ``t``.

    ``ranks[pos, h]`` is bit position ``pos``'s place in MinHash function ``h``'s random
    order; a cylinder's MinHash is the least rank over its set bits, found for every
    function at once per set bit (a vectorised row minimum, not a hash per bit and
    function). Table ``t`` folds the ``band`` MinHashes ``t*band ...`` into ``hash_bits``.
    """
    n = sketch.shape[0]
    words = sketch.shape[1] - 1
    functions = ranks.shape[1]
    tables = out.shape[1]
    best = np.empty(functions, np.uint16)
    shift = np.uint64(64 - hash_bits)
    for c in range(n):
        best[:] = EMPTY_RANK
        for w in range(words):
            word = sketch[c, 1 + w]
            while word != np.uint64(0):
                low = word & (~word + np.uint64(1))
                pos = w * 64 + popcount64(low - np.uint64(1))
                for h in range(functions):
                    best[h] = min(best[h], ranks[pos, h])
                word ^= low
        for t in range(tables):
            code = np.uint64(t + 1)
            for r in range(band):
                code = code * np.uint64(0x10001) + np.uint64(best[t * band + r])
            out[c, t] = (code * np.uint64(0x9E3779B97F4A7C15)) >> shift


@numba.njit(cache=True, nogil=True)
def build_lists(codes_by_table, offsets_of_rows, hash_bits, bucket_start, entries):
    """Counting sort of (table, code) -> rows; fills ``bucket_start`` (CSR) and ``entries``.

    Table by table: a table's buckets are one contiguous slice of ``bucket_start`` that
    stays in cache (2**16 counters), where interleaving the tables jumps across all of
    them for every cylinder; and ``codes_by_table`` is (tables, cylinders), so that each
    table's pass reads one contiguous strip of codes (with (cylinders, tables) every pass
    streamed all the codes through the cache: 87 against 52 ms for 4,096 rows)."""
    tables = codes_by_table.shape[0]
    n_rows = offsets_of_rows.shape[0] - 1
    bucket_start[:] = 0
    for t in range(tables):
        base = (t << hash_bits) + 1
        table_codes = codes_by_table[t]
        for c in range(table_codes.shape[0]):
            bucket_start[base + np.int64(table_codes[c])] += 1
    for k in range(1, bucket_start.shape[0]):
        bucket_start[k] += bucket_start[k - 1]
    fill = bucket_start[:-1].copy()
    for t in range(tables):
        base = t << hash_bits
        table_codes = codes_by_table[t]
        for r in range(n_rows):
            for c in range(offsets_of_rows[r], offsets_of_rows[r + 1]):
                key = base + np.int64(table_codes[c])
                entries[fill[key]] = r
                fill[key] += 1


@numba.njit(cache=True, nogil=True)
def merge_lists(starts, entries, maps, start, out):
    """Bucket by bucket, each part's surviving entries in part order, renumbered through
    its row map (-1: the row is gone); returns the entries written. ``starts``,
    ``entries`` and ``maps`` are tuples with one array per part. One sequential pass over
    all the parts: merging or compacting segments costs a small part of building their
    lists again."""
    n = 0
    start[0] = 0
    for k in range(start.shape[0] - 1):
        for p in range(len(starts)):
            part_start = starts[p]
            part_entries = entries[p]
            part_map = maps[p]
            for e in range(part_start[k], part_start[k + 1]):
                row = part_map[part_entries[e]]
                if row >= 0:
                    out[n] = row
                    n += 1
        start[k + 1] = n
    return n


@numba.njit(cache=True, nogil=True)
def vote(probe_codes, hash_bits, bucket_start, entries, max_bucket, last_voter, votes):
    """Add one vote to ``votes[row]`` per probe cylinder whose buckets hold ``row``.

    ``last_voter`` (one int32 per row, all -1 on entry) remembers which probe cylinder
    voted for a row last, so that a cylinder votes at most once per row.
    """
    for c in range(probe_codes.shape[0]):
        for t in range(probe_codes.shape[1]):
            key = (t << hash_bits) | np.int64(probe_codes[c, t])
            a = bucket_start[key]
            b = bucket_start[key + 1]
            if b - a > max_bucket:
                continue
            for e in range(a, b):
                row = entries[e]
                if last_voter[row] != c:
                    last_voter[row] = c
                    votes[row] += 1.0


@dataclass(frozen=True)
class InvertedLists:
    """A segment's buckets: rows of bucket k are entries[bucket_start[k]:bucket_start[k+1]]."""

    bucket_start: np.ndarray  # int32 (< 2**31 entries per segment), tables * 2**bits + 1
    entries: np.ndarray  # uint16 row per (cylinder, table): segments hold <= 65,536 rows
    norm: np.ndarray  # float32 per row: 1 / sqrt(cylinders)
    max_bucket: int

    @property
    def nbytes(self) -> int:
        return self.bucket_start.nbytes + self.entries.nbytes + self.norm.nbytes


def _read_only(array: np.ndarray) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


class LshPrefilter:
    """MCC-LSH candidate stage (see the module docstring).

    ``share`` of the eligible rows (at least ``min_keep``) become candidates, each
    segment contributing in proportion to its rows; watchlists with fewer than
    ``from_rows`` eligible rows are searched exhaustively, which is exact and already
    fast there, and so are segments under ``min_segment_rows`` (see :meth:`indexes`).
    """

    name = "mcc-lsh"

    def __init__(
        self,
        hash_bits: int = 16,
        tables: int = 48,
        band: int = 3,
        share: float = 0.02,
        min_keep: int = 512,
        bucket_factor: float = 16.0,
        from_rows: int = 50_000,
        min_segment_rows: int = 4096,
        seed: int = 2011,
    ) -> None:
        if not 1 <= hash_bits <= 16:
            raise ValueError("hash_bits must be 1..16 (codes are stored as uint16)")
        self.hash_bits, self.tables, self.band = hash_bits, tables, band
        self.share, self.min_keep, self.bucket_factor = share, min_keep, bucket_factor
        self.from_rows, self.min_segment_rows = from_rows, min_segment_rows
        self.seed = seed
        self._ranks: np.ndarray | None = None

    @property
    def signature(self) -> str:
        """Everything the codes and lists depend on: saved lists are reused only when it
        matches (``max_bucket`` is saved with them)."""
        return f"{self.name}:{self.hash_bits}:{self.tables}:{self.band}:{self.seed}"

    def _ranks_for(self, positions: int) -> np.ndarray:
        """(positions, tables * band) uint16: one random order of the bit positions per
        MinHash function (drawn once per sketch width)."""
        if self._ranks is None or self._ranks.shape[0] != positions:
            rng = np.random.default_rng(self.seed)
            functions = self.tables * self.band
            ranks = np.empty((positions, functions), np.uint16)
            for h in range(functions):
                ranks[:, h] = rng.permutation(positions)
            self._ranks = ranks
        return self._ranks

    def codes(self, encoded: Any) -> np.ndarray:
        """(cylinders, tables) uint16 codes of one encoding (or stacked gallery)."""
        sketch = np.ascontiguousarray(encoded.sketch)
        out = np.empty((sketch.shape[0], self.tables), np.uint16)
        ranks = self._ranks_for(64 * (sketch.shape[1] - 1))
        cylinder_codes(sketch, ranks, self.band, self.hash_bits, out)
        return out

    def lists(self, codes: np.ndarray, offsets: np.ndarray) -> InvertedLists:
        """The inverted lists of one segment (built once per segment)."""
        if offsets.shape[0] - 1 > 1 << 16:
            raise ValueError("a segment of more than 65,536 rows cannot be indexed")
        size = self.tables << self.hash_bits
        bucket_start = np.zeros(size + 1, np.int32)
        entries = np.empty(codes.shape[0] * self.tables, np.uint16)
        build_lists(np.ascontiguousarray(codes.T), offsets, self.hash_bits, bucket_start,
                    entries)
        counts = np.maximum(np.diff(offsets), 1).astype(np.float32)
        mean = max(1.0, entries.size / size)
        return InvertedLists(bucket_start, entries, 1.0 / np.sqrt(counts),
                             int(self.bucket_factor * mean) + 1)

    def merged(self, parts: list[tuple[InvertedLists, np.ndarray]]) -> InvertedLists:
        """The lists of a segment made of some segments' surviving rows in order.

        Each part is ``(lists, row_map)``: ``row_map[old_row]`` is the row in the new
        segment, or -1 for a removed row.
        """
        if not parts:
            raise ValueError("merge the lists of at least one segment")
        # read-only views all round: saved lists are read-only maps, and the kernel
        # takes its parts as tuples of arrays of one type
        starts = tuple(_read_only(lists.bucket_start) for lists, _ in parts)
        entries_in = tuple(_read_only(lists.entries) for lists, _ in parts)
        maps = tuple(_read_only(row_map.astype(np.int32)) for _, row_map in parts)
        start = np.empty_like(parts[0][0].bucket_start)
        entries = np.empty(sum(e.size for e in entries_in), np.uint16)
        n = merge_lists(starts, entries_in, maps, start, entries)
        rows = int(max(m.max(initial=-1) for m in maps)) + 1
        norm = np.empty(rows, np.float32)
        for (lists, _), row_map in zip(parts, maps, strict=True):
            kept = row_map >= 0
            norm[row_map[kept]] = lists.norm[kept]
        size = self.tables << self.hash_bits
        mean = max(1.0, n / size)
        if n < entries.size:  # rows were removed (compaction); a plain merge fills it
            entries = entries[:n].copy()
        return InvertedLists(start, entries, norm, int(self.bucket_factor * mean) + 1)

    def indexes(self, segment_rows: int) -> bool:
        """Whether a segment this large keeps lists. The newest, small segments do not:
        every list costs a pass over all its buckets (3.1M) to build or merge, which for
        a batch of 256 enrolments was most of their cost, while scoring the few thousand
        rows of the small segments whole costs a search some 30 ms."""
        return segment_rows >= self.min_segment_rows

    def applies_to(self, eligible_rows: int) -> bool:
        """Whether a search over this many eligible rows goes through the candidates."""
        return eligible_rows >= self.from_rows

    def quota(self, segment_rows: int, total_rows: int) -> int:
        """Candidates a segment with ``segment_rows`` eligible rows passes on in a search
        over ``total_rows``: ``share`` of the total (at least ``min_keep``), split among
        the segments in proportion to their rows, so that a small segment (the newest
        enrolments) is not scored whole while a large one keeps a share."""
        if segment_rows <= 0:
            return 0
        total = max(self.min_keep, math.ceil(self.share * total_rows))
        return min(segment_rows, math.ceil(total * segment_rows / max(total_rows, 1)))

    def candidates(
        self, probe_codes: np.ndarray, lists: InvertedLists, eligible: np.ndarray, keep: int
    ) -> np.ndarray:
        """Rows (ascending) of the ``keep`` best-voted eligible rows of a segment."""
        n = eligible.shape[0]
        votes = np.zeros(n, np.float32)
        vote(probe_codes, self.hash_bits, lists.bucket_start, lists.entries, lists.max_bucket,
             np.full(n, -1, np.int32), votes)
        score = np.where(eligible, votes * lists.norm, -1.0)
        keep = min(keep, int(eligible.sum()))
        if keep <= 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-score, keep - 1)[:keep]
        return np.sort(top[score[top] >= 0.0]).astype(np.int64)
