"""The candidate stage of a 1:N search: LSH over MCC cylinder bits, with voting.

After Cappelli, Ferrara, Maltoni, "Fingerprint indexing based on minutia cylinder-code"
(TPAMI 2011): each cylinder gets a code in each of ``tables`` hash tables, such that two
cylinders of the same minutia on two impressions often share a code in some table while
unrelated cylinders rarely do. The paper samples fixed bits; our cylinders are sparse
(about 2.5 % of bits set, most positions almost never set), so sampled bits are nearly
always zero, and the codes here are MinHash bands over the set bits of the coarse
sketch instead. Each index segment keeps, per table and code, the rows
(fingers) whose cylinders have that code (an inverted list in CSR form). A probe's
cylinders vote for the rows in their buckets; buckets far fuller than average (codes
that half the world shares) are skipped as carrying no information. The rows with the
most votes, normalised by their cylinder count, are the candidates, and only they get
full MCC scoring (LSS-R, :func:`matcher.similarity.search_listed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from matcher.popcount import popcount64
from matcher.similarity import search_listed


@numba.njit(cache=True, nogil=True)
def cylinder_codes(sketch, multipliers, hash_bits, out):
    """``out[c, t]``: the code of cylinder ``c`` in table ``t``.

    A code is ``band`` MinHash values of the set of 1-bits of the cylinder's 8 x 8 x nd
    sketch (coarse, so a little spatial jitter keeps most bits), folded to ``hash_bits``:
    two cylinders share it with probability about Jaccard(sets) ** band.
    """
    n = sketch.shape[0]
    tables, band = multipliers.shape[0], multipliers.shape[1]
    words = sketch.shape[1] - 1
    mask = (1 << hash_bits) - 1
    for c in range(n):
        for t in range(tables):
            code = np.uint64(0)
            for r in range(band):
                mult = multipliers[t, r]
                best = np.uint64(0xFFFFFFFFFFFFFFFF)
                for w in range(words):
                    word = sketch[c, 1 + w]
                    while word != np.uint64(0):
                        low = word & (~word + np.uint64(1))
                        pos = np.uint64(w * 64) + np.uint64(popcount64(low - np.uint64(1)))
                        h = (pos + np.uint64(1)) * mult
                        h ^= h >> np.uint64(31)
                        if h < best:
                            best = h
                        word ^= low
                code = code * np.uint64(0x9E3779B97F4A7C15) + best
            code ^= code >> np.uint64(29)
            out[c, t] = np.int64(code & np.uint64(mask))


@numba.njit(cache=True, nogil=True)
def build_lists(codes, offsets_of_rows, hash_bits, bucket_start, entries):
    """Counting sort of (table, code) -> rows; fills ``bucket_start`` (CSR) and ``entries``."""
    tables = codes.shape[1]
    n_rows = offsets_of_rows.shape[0] - 1
    bucket_start[:] = 0
    for c in range(codes.shape[0]):
        for t in range(tables):
            bucket_start[((t << hash_bits) | codes[c, t]) + 1] += 1
    for k in range(1, bucket_start.shape[0]):
        bucket_start[k] += bucket_start[k - 1]
    fill = bucket_start[:-1].copy()
    for r in range(n_rows):
        for c in range(offsets_of_rows[r], offsets_of_rows[r + 1]):
            for t in range(tables):
                key = (t << hash_bits) | codes[c, t]
                entries[fill[key]] = r
                fill[key] += 1


@numba.njit(cache=True, nogil=True)
def vote(probe_codes, hash_bits, bucket_start, entries, max_bucket, votes):
    """Add one vote to ``votes[row]`` for each bucket entry a probe code hits."""
    for c in range(probe_codes.shape[0]):
        for t in range(probe_codes.shape[1]):
            key = (t << hash_bits) | probe_codes[c, t]
            a = bucket_start[key]
            b = bucket_start[key + 1]
            if b - a > max_bucket:
                continue
            for e in range(a, b):
                votes[entries[e]] += 1.0


@dataclass(frozen=True)
class InvertedLists:
    """A segment's buckets: rows of bucket k are entries[bucket_start[k]:bucket_start[k+1]]."""

    bucket_start: np.ndarray  # int64, tables * 2**hash_bits + 1
    entries: np.ndarray  # int32 row per (cylinder, table)
    norm: np.ndarray  # float32 per row: 1 / sqrt(cylinders)
    max_bucket: int

    @property
    def nbytes(self) -> int:
        return self.bucket_start.nbytes + self.entries.nbytes + self.norm.nbytes


class LshPrefilter:
    """MCC-LSH candidate stage (see the module docstring)."""

    name = "mcc-lsh"

    def __init__(
        self,
        hash_bits: int = 16,
        tables: int = 16,
        band: int = 2,
        share: float = 0.01,
        min_keep: int = 1000,
        bucket_factor: float = 16.0,
        seed: int = 2011,
    ) -> None:
        self.hash_bits, self.tables = hash_bits, tables
        self.share, self.min_keep, self.bucket_factor = share, min_keep, bucket_factor
        rng = np.random.default_rng(seed)
        # odd 64-bit multipliers: one MinHash function each
        self.multipliers = (rng.integers(1, 2**62, size=(tables, band), dtype=np.uint64)
                            * np.uint64(2) + np.uint64(1))

    def codes(self, encoded: Any) -> np.ndarray:
        """(cylinders, tables) uint16 codes of one encoding (or stacked gallery)."""
        out = np.empty((encoded.sketch.shape[0], self.tables), np.int64)
        cylinder_codes(encoded.sketch, self.multipliers, self.hash_bits, out)
        return out.astype(np.uint16)

    def lists(self, signatures: np.ndarray, offsets: np.ndarray) -> InvertedLists:
        """The inverted lists of one segment (built once per segment)."""
        size = self.tables << self.hash_bits
        bucket_start = np.zeros(size + 1, np.int64)
        entries = np.empty(signatures.shape[0] * self.tables, np.int32)
        build_lists(signatures.astype(np.int64), offsets, self.hash_bits, bucket_start, entries)
        counts = np.maximum(np.diff(offsets), 1).astype(np.float32)
        mean = max(1.0, entries.size / size)
        return InvertedLists(bucket_start, entries, 1.0 / np.sqrt(counts),
                             int(self.bucket_factor * mean) + 1)

    def candidates(self, probe: Any, lists: InvertedLists, eligible: np.ndarray) -> np.ndarray:
        """Rows (ascending) of the best-voted eligible rows of a segment."""
        n = eligible.shape[0]
        votes = np.zeros(n, np.float32)
        vote(self.codes(probe).astype(np.int64), self.hash_bits, lists.bucket_start,
             lists.entries, lists.max_bucket, votes)
        score = np.where(eligible, votes * lists.norm, -1.0)
        keep = min(int(eligible.sum()), max(self.min_keep, int(np.ceil(self.share * n))))
        if keep == 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-score, keep - 1)[:keep]
        return np.sort(top[score[top] >= 0.0]).astype(np.int64)

    def score_rows(self, comparator: Any, probe: Any, gallery: Any, rows: np.ndarray) -> np.ndarray:
        """Calibrated full-MCC (LSS-R) scores of the listed rows, in their order."""
        lssr = np.full(len(gallery), -1.0, np.float64)
        if rows.size:
            numba.set_num_threads(comparator.threads)
            search_listed(
                probe.bits, probe.valid, probe.x, probe.y, probe.angle,
                gallery.bits, gallery.valid, gallery.x, gallery.y, gallery.angle,
                gallery.offsets, comparator.match_params, rows,
                max(1, min(rows.size, 4 * comparator.threads)), lssr,
            )
        return comparator.calibration.lssr(np.maximum(lssr[rows], 0.0)).astype(np.float32)
