"""Medians and percentiles of a float32 map over a mask, without copying or sorting it.

``np.median(values[mask])`` copies the masked values (fresh pages) and partitions the
copy; the pipeline asks three times per print. Here the values are counted into buckets
by the top half of their bits (ordered as the floats are), and only the bucket holding
the wanted rank is collected and sorted: on a 500 x 500 print 0.9 instead of 1.1 ms for
the period's median, 0.75 instead of 1.25 ms for the 90th percentile of the Gabor
amplitude. The results are NumPy's, bit for bit: the same order statistics, combined by
the same float32 steps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SMALL = 4096  # a bucket this small is sorted; a larger one partitioned


def masked_median(values: np.ndarray, mask: np.ndarray) -> float:
    """``float(np.median(values[mask]))`` for finite float32 ``values``; the mask
    must select something."""
    v, m = _flat(values, mask)
    n = int(np.count_nonzero(m))
    if n == 0:
        raise ValueError("median of an empty selection")
    low, high = _ranked(v, m, (n - 1) // 2)
    if n % 2:
        return float(low)
    # NumPy averages the two middle values in float32.
    return float((np.float32(low) + np.float32(high)) / np.float32(2.0))


def masked_percentile(values: np.ndarray, mask: np.ndarray, q: float) -> float:
    """``float(np.percentile(values[mask], q))`` (linear interpolation) for finite
    float32 ``values``; the mask must select something."""
    v, m = _flat(values, mask)
    n = int(np.count_nonzero(m))
    if n == 0:
        raise ValueError("percentile of an empty selection")
    virtual = (n - 1) * (q / 100.0)
    below = min(int(np.floor(virtual)), n - 1)
    a, b = _ranked(v, m, below)
    if below == n - 1:
        b = a
    gamma = virtual - below
    a32, b32 = np.float32(a), np.float32(b)
    diff = b32 - a32
    # NumPy's lerp: from the nearer end, in the values' float32.
    if gamma >= 0.5:
        return float(b32 - diff * np.float32(1.0 - gamma))
    return float(a32 + diff * np.float32(gamma))


def _flat(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.dtype != np.float32 or values.shape != mask.shape:
        raise ValueError("values must be float32 and shaped like the mask")
    return (np.ascontiguousarray(values).reshape(-1),
            np.ascontiguousarray(mask, np.bool_).reshape(-1))


@njit(cache=True, nogil=True, inline="always")
def _ordered(bits: np.uint32) -> np.uint32:
    """The float32 with these bits as an unsigned integer of the same order (no NaN)."""
    if bits & np.uint32(0x80000000):
        return ~bits
    return bits | np.uint32(0x80000000)


@njit(cache=True, nogil=True)
def _ranked(values: np.ndarray, mask: np.ndarray,
            k: int) -> tuple[float, float]:  # pragma: no cover
    """The masked values of rank k and k + 1 (0-based; the k + 1-th is the k-th when
    there is none)."""
    keys = values.view(np.uint32)
    # Buckets by the top 16 bits of the ordered key: float32 values this close together
    # share one (ridge periods of 9 to 10 px fall into 16 of them).
    counts = np.zeros(65536, np.int32)
    for i in range(keys.shape[0]):
        if mask[i]:
            counts[_ordered(keys[i]) >> np.uint32(16)] += 1
    below = 0
    bucket = 0
    while below + counts[bucket] <= k:
        below += counts[bucket]
        bucket += 1
    size = counts[bucket]
    picked = np.empty(size, np.float32)
    after = np.inf  # the smallest value in a later bucket
    j = 0
    for i in range(keys.shape[0]):
        if mask[i]:
            top = _ordered(keys[i]) >> np.uint32(16)
            if top == bucket:
                picked[j] = values[i]
                j += 1
            elif top > bucket and values[i] < after:
                after = values[i]
    r = k - below
    if size <= _SMALL:
        picked.sort()
    else:
        picked = np.partition(picked, r)
    at_k = picked[r]
    if r + 1 < size:
        nxt = picked[r + 1] if size <= _SMALL else picked[r + 1 :].min()
        return at_k, nxt
    if after == np.inf:
        return at_k, at_k
    return at_k, after
