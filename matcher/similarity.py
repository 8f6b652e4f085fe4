"""MCC comparison kernels in Numba: local similarity, LSS and LSS-R consolidation.

One probe is compared with every template of a gallery stored as contiguous arrays
(cylinders of all templates concatenated, ``offsets`` marking each template's run).
Every candidate gets the cheap LSS score (mean of the best local similarities); only
candidates whose LSS reaches ``gate`` get the relaxation (LSS-R), which costs about as
much again. The kernels return raw scores in [0, 1]; :mod:`matcher.calibration` maps
them to ``-10 * log10(FMR)``.

Threading: the parallel kernel runs under the ``omp`` (or ``tbb``) layer, because the
default ``workqueue`` layer aborts the process when two Python threads launch parallel
kernels at once, which a gRPC server does. :data:`THREADING_LAYER` says what was chosen;
with neither available, :data:`CONCURRENT_CALLS_SAFE` is False and callers serialise.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from matcher.popcount import popcount64


def _choose_threading_layer() -> str:
    """Pick a threading layer that tolerates concurrent launches, before first use."""
    requested = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if requested in ("omp", "tbb"):
        return requested
    for layer, module in (("omp", "omppool"), ("tbb", "tbbpool")):
        try:
            __import__(f"numba.np.ufunc.{module}")
        except ImportError:
            continue
        numba.config.THREADING_LAYER = layer
        return layer
    warnings.warn(
        "neither the OpenMP nor the TBB threading layer of Numba is available, so the "
        "MCC matcher serialises its searches (the workqueue layer aborts on concurrent "
        "calls); install libgomp1 (Debian) or the tbb wheel for concurrent searches",
        RuntimeWarning,
        stacklevel=2,
    )
    return "workqueue"


THREADING_LAYER = _choose_threading_layer()
CONCURRENT_CALLS_SAFE = THREADING_LAYER in ("omp", "tbb")


class MatchParams(NamedTuple):
    """Local similarity and consolidation parameters (radians, pixels at 500 ppi)."""

    delta_theta: float = math.pi / 2.0  # largest direction difference of a cylinder pair
    min_me: float = 0.60  # least share of cells valid in both cylinders
    min_np: int = 4
    max_np: int = 12
    mu_p: float = 20.0
    tau_p: float = 0.4
    w_r: float = 0.5
    n_rel: int = 5
    mu1: float = 9.0  # paper: 5; tolerating more distortion measured better (notes)
    tau1: float = -1.6
    mu2: float = math.pi / 12.0
    tau2: float = -30.0
    mu3: float = math.pi / 12.0
    tau3: float = -30.0
    one_to_one: bool = True  # greedy one-to-one pairing before relaxation (paper: top pairs)


@numba.njit(cache=True, nogil=True, inline="always")
def _wrap(a):
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@numba.njit(cache=True, nogil=True, inline="always")
def _sigmoid(v, mu, tau):
    return 1.0 / (1.0 + math.exp(-tau * (v - mu)))


@numba.njit(cache=True, nogil=True)
def n_p_for(n_min: int, p: MatchParams) -> int:
    """How many best local similarities LSS averages, for the smaller cylinder count."""
    z = _sigmoid(float(n_min), p.mu_p, p.tau_p)
    return p.min_np + int(np.round(z * (p.max_np - p.min_np)))


@numba.njit(cache=True, nogil=True, inline="always")
def local_similarity(abits, avalid, i, bbits, bvalid, j, min_me_cells):
    """MCC bit similarity of cylinder ``i`` of A and cylinder ``j`` of B (0 if unmatchable).

    Bits are zero outside their own cylinder's valid cells, so masking A's bits with B's
    validity (and B's with A's) masks both with the intersection.
    """
    v0 = bvalid[j, 0]
    v1 = bvalid[j, 1]
    v2 = bvalid[j, 2]
    v3 = bvalid[j, 3]
    w0 = avalid[i, 0]
    w1 = avalid[i, 1]
    w2 = avalid[i, 2]
    w3 = avalid[i, 3]
    common = (
        popcount64(v0 & w0) + popcount64(v1 & w1) + popcount64(v2 & w2) + popcount64(v3 & w3)
    )
    if float(common) < min_me_cells:
        return 0.0
    na = np.uint64(0)
    nb = np.uint64(0)
    nx = np.uint64(0)
    for base in range(0, abits.shape[1], 4):
        a0 = abits[i, base] & v0
        a1 = abits[i, base + 1] & v1
        a2 = abits[i, base + 2] & v2
        a3 = abits[i, base + 3] & v3
        b0 = bbits[j, base] & w0
        b1 = bbits[j, base + 1] & w1
        b2 = bbits[j, base + 2] & w2
        b3 = bbits[j, base + 3] & w3
        na += popcount64(a0) + popcount64(a1) + popcount64(a2) + popcount64(a3)
        nb += popcount64(b0) + popcount64(b1) + popcount64(b2) + popcount64(b3)
        nx += (
            popcount64(a0 ^ b0) + popcount64(a1 ^ b1)
            + popcount64(a2 ^ b2) + popcount64(a3 ^ b3)
        )
    den = math.sqrt(float(na)) + math.sqrt(float(nb))
    if den == 0.0:
        return 0.0
    return 1.0 - math.sqrt(float(nx)) / den


@numba.njit(cache=True, nogil=True, inline="always")
def _lower_bound(a, lo, hi, value):
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_before(s, i, j, t, u, v):
    """Order of candidate pairs: higher similarity first, then lower indices."""
    if s != t:
        return s > t
    if i != u:
        return i < u
    return j < v


@numba.njit(cache=True, nogil=True)
def _sift_down(ps, pi, pj, start, n):
    root = start
    while True:
        child = 2 * root + 1
        if child >= n:
            return
        if child + 1 < n and _pair_before(
            ps[child + 1], pi[child + 1], pj[child + 1], ps[child], pi[child], pj[child]
        ):
            child += 1
        if _pair_before(ps[child], pi[child], pj[child], ps[root], pi[root], pj[root]):
            ps[root], ps[child] = ps[child], ps[root]
            pi[root], pi[child] = pi[child], pi[root]
            pj[root], pj[child] = pj[child], pj[root]
            root = child
        else:
            return


@numba.njit(cache=True, nogil=True)
def _select_pairs(ps, pi, pj, count, n_r, one_to_one, used_a, used_b, sel_a, sel_b, sel_s):
    """Pick up to ``n_r`` pairs in order of similarity (one-to-one if asked); in place."""
    for k in range(count // 2 - 1, -1, -1):
        _sift_down(ps, pi, pj, k, count)
    if one_to_one:
        used_a[:] = False
        used_b[:] = False
    chosen = 0
    n = count
    while n > 0 and chosen < n_r:
        s = ps[0]
        a = pi[0]
        b = pj[0]
        n -= 1
        ps[0] = ps[n]
        pi[0] = pi[n]
        pj[0] = pj[n]
        _sift_down(ps, pi, pj, 0, n)
        if one_to_one:
            if used_a[a] or used_b[b]:
                continue
            used_a[a] = True
            used_b[b] = True
        sel_a[chosen] = a
        sel_b[chosen] = b
        sel_s[chosen] = s
        chosen += 1
    return chosen


@numba.njit(cache=True, nogil=True)
def _relaxation_score(
    ax, ay, aa, bx, by, ba, sel_a, sel_b, sel_s, chosen, n_r, n_p, p, rho, lam, lam_next, eff
):
    """LSS-R: relax the chosen pairs' similarities by their geometric compatibility."""
    if chosen == 0:
        return 0.0
    for t in range(chosen):
        rho[t, t] = 0.0
        at = sel_a[t]
        bt = sel_b[t]
        for k in range(t + 1, chosen):
            ak = sel_a[k]
            bk = sel_b[k]
            dxa = ax[ak] - ax[at]
            dya = ay[ak] - ay[at]
            dxb = bx[bk] - bx[bt]
            dyb = by[bk] - by[bt]
            d1 = abs(math.sqrt(dxa * dxa + dya * dya) - math.sqrt(dxb * dxb + dyb * dyb))
            d2 = abs(_wrap(_wrap(aa[at] - aa[ak]) - _wrap(ba[bt] - ba[bk])))
            z12 = _sigmoid(d1, p.mu1, p.tau1) * _sigmoid(d2, p.mu2, p.tau2)
            # radial angles of each pair, from t towards k and from k towards t
            phi_a = math.atan2(dya, dxa)
            phi_b = math.atan2(dyb, dxb)
            d3tk = abs(_wrap(_wrap(aa[at] - phi_a) - _wrap(ba[bt] - phi_b)))
            d3kt = abs(
                _wrap(_wrap(aa[ak] - phi_a - math.pi) - _wrap(ba[bk] - phi_b - math.pi))
            )
            rho[t, k] = z12 * _sigmoid(d3tk, p.mu3, p.tau3)
            rho[k, t] = z12 * _sigmoid(d3kt, p.mu3, p.tau3)
    for t in range(chosen):
        lam[t] = sel_s[t]
    norm = (1.0 - p.w_r) / max(n_r - 1, 1)
    for _ in range(p.n_rel):
        for t in range(chosen):
            acc = 0.0
            for k in range(chosen):
                acc += rho[t, k] * lam[k]
            lam_next[t] = p.w_r * lam[t] + norm * acc
        for t in range(chosen):
            lam[t] = lam_next[t]
    for t in range(chosen):
        eff[t] = lam[t] / sel_s[t]
    # the n_p most efficient pairs (ties: lower index first), by partial selection sort
    take = min(n_p, n_r)
    total = 0.0
    for r in range(min(take, chosen)):
        best = r
        for t in range(r + 1, chosen):
            if eff[t] > eff[best]:
                best = t
        eff[r], eff[best] = eff[best], eff[r]
        lam[r], lam[best] = lam[best], lam[r]
        total += lam[r]
    return total / take


@numba.njit(cache=True, nogil=True)
def compare(
    abits, avalid, ax, ay, aa, a0, a1,
    bbits, bvalid, bx, by, ba, b0, b1,
    p, gate, ps, pi, pj, used_a, used_b, sel_a, sel_b, sel_s, rho, lam, lam_next, eff, top,
):
    """LSS and LSS-R raw scores of template A (rows a0:a1) against B (rows b0:b1).

    Returns ``(lss, lssr)``; ``lssr`` is -1 when ``lss < gate`` (relaxation skipped).
    Scratch arrays are passed in so a search allocates nothing per comparison.
    """
    na = a1 - a0
    nb = b1 - b0
    n_min = min(na, nb)
    if n_min == 0:
        return 0.0, 0.0 if gate <= 0.0 else -1.0
    n_p = n_p_for(n_min, p)
    min_me_cells = p.min_me * 256.0
    for t in range(n_p):
        top[t] = 0.0
    count = 0
    dt = p.delta_theta
    full = dt >= math.pi
    for i in range(a0, a1):
        theta = aa[i]
        # candidate window on B's ascending angles; the exact gate is re-checked per pair
        if full:
            r0 = b0
            r1 = b1
            r2 = b1
            r3 = b1
        else:
            lo = theta - dt - 1e-4
            hi = theta + dt + 1e-4
            if lo < 0.0:
                r0 = b0
                r1 = _lower_bound(ba, b0, b1, hi)
                r2 = _lower_bound(ba, b0, b1, lo + 2.0 * math.pi)
                r3 = b1
            elif hi > 2.0 * math.pi:
                r0 = _lower_bound(ba, b0, b1, lo)
                r1 = b1
                r2 = b0
                r3 = _lower_bound(ba, b0, b1, hi - 2.0 * math.pi)
            else:
                r0 = _lower_bound(ba, b0, b1, lo)
                r1 = _lower_bound(ba, b0, b1, hi)
                r2 = b1
                r3 = b1
        for part in range(2):
            s0 = r0 if part == 0 else r2
            s1 = r1 if part == 0 else r3
            for j in range(s0, s1):
                if abs(_wrap(float(theta) - float(ba[j]))) > dt:
                    continue
                s = local_similarity(abits, avalid, i, bbits, bvalid, j, min_me_cells)
                if s <= 0.0:
                    continue
                ps[count] = s
                pi[count] = i - a0
                pj[count] = j - b0
                count += 1
                if s > top[n_p - 1]:
                    q = n_p - 1
                    while q > 0 and top[q - 1] < s:
                        top[q] = top[q - 1]
                        q -= 1
                    top[q] = s
    total = 0.0
    for t in range(n_p):
        total += top[t]
    lss = total / n_p
    if lss < gate:
        return lss, -1.0
    n_r = n_min
    chosen = _select_pairs(
        ps, pi, pj, count, n_r, p.one_to_one, used_a, used_b, sel_a, sel_b, sel_s
    )
    for t in range(chosen):
        sel_a[t] += a0
        sel_b[t] += b0
    lssr = _relaxation_score(
        ax, ay, aa, bx, by, ba, sel_a, sel_b, sel_s, chosen, n_r, n_p, p, rho, lam, lam_next, eff
    )
    return lss, lssr


@numba.njit(cache=True, nogil=True, parallel=True)
def search(
    abits, avalid, ax, ay, aa,
    gbits, gvalid, gx, gy, ga, offsets,
    p, gate, n_chunks, out_lss, out_lssr,
):
    """Score one probe (all its rows) against every gallery template, in parallel chunks."""
    g_count = offsets.shape[0] - 1
    na = abits.shape[0]
    nb_max = 0
    for g in range(g_count):
        nb_max = max(nb_max, offsets[g + 1] - offsets[g])
    cap = max(na * nb_max, 1)
    side = max(min(na, nb_max), 1)
    for c in prange(n_chunks):
        start = c * g_count // n_chunks
        stop = (c + 1) * g_count // n_chunks
        ps = np.empty(cap, np.float64)
        pi = np.empty(cap, np.int64)
        pj = np.empty(cap, np.int64)
        used_a = np.zeros(max(na, 1), np.bool_)
        used_b = np.zeros(max(nb_max, 1), np.bool_)
        sel_a = np.empty(side, np.int64)
        sel_b = np.empty(side, np.int64)
        sel_s = np.empty(side, np.float64)
        rho = np.empty((side, side), np.float64)
        lam = np.empty(side, np.float64)
        lam_next = np.empty(side, np.float64)
        eff = np.empty(side, np.float64)
        top = np.empty(max(p.max_np, p.min_np) + 1, np.float64)
        for g in range(start, stop):
            lss, lssr = compare(
                abits, avalid, ax, ay, aa, 0, na,
                gbits, gvalid, gx, gy, ga, offsets[g], offsets[g + 1],
                p, gate, ps, pi, pj, used_a, used_b, sel_a, sel_b, sel_s,
                rho, lam, lam_next, eff, top,
            )
            out_lss[g] = lss
            out_lssr[g] = lssr
