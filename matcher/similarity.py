"""MCC comparison kernels in Numba: local similarity, LSS-R consolidation, 1:N search.

One probe is compared with every template of a gallery stored as contiguous arrays
(cylinders of all templates concatenated, ``offsets`` marking each template's run).
Each comparison has two stages:

- cheap stage, for every candidate: every cylinder pair within ``cheap_delta_theta`` is
  ranked on 8 x 8 sketches, the best ``cheap_sketch_pairs`` again on the full cylinders
  with an approximate similarity (:func:`approx_top_pairs`), and a small LSS-R over the
  best ``cheap_n_r`` one-to-one pairs of those gives the cheap score (its sigmoids read
  from tables built once per search, :func:`sigmoid_tables`, its probe-side geometry
  from :func:`probe_geometry`);
- LSS-R (Cappelli et al. 2010), only where the cheap score reaches ``gate``: exact bit
  similarities of every pair within ``delta_theta`` with enough common valid cells,
  greedy one-to-one pairing of the best ``min(nA, nB)`` (the paper takes the best pairs
  without the one-to-one constraint; one-to-one measured better), relaxation, and the
  mean of the ``n_P`` most efficient pairs.

Both return raw scores in [0, 1]; :mod:`matcher.calibration` maps them to
``-10 * log10(FMR)``. Pair orders are fixed by integer keys (similarity quantised to
2^-30, then indices), so results do not depend on loop order and a plain-numpy reference
(:mod:`matcher.mcc_reference`) reproduces them.

Threading: the parallel kernel runs under the ``omp`` (or ``tbb``) layer, because the
default ``workqueue`` layer aborts the process when two Python threads launch parallel
kernels at once. :class:`matcher.mcc.MccComparator` launches one at a time anyway (a
launch uses every core); :data:`THREADING_LAYER` says which layer was chosen.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from matcher.popcount import popcount64, prefetch


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
    cheap_pairs: int = 32  # cheap stage: best approximate pairs kept (48 measured no better)
    cheap_n_r: int = 16  # cheap stage: pairs relaxed
    cheap_delta_theta: float = math.pi / 3.0  # cheap stage angle gate
    cheap_sketch_pairs: int = 64  # cheap stage: best sketch pairs ranked again in full
    cheap_probe_max: int = 24  # cheap stage: the probe's cylinders with most valid cells


TWO_PI = 2.0 * math.pi
INV_TWO_PI = 1.0 / TWO_PI


@numba.njit(cache=True, nogil=True, inline="always")
def _wrap(a):
    """An angle wrapped into [-pi, pi), branch-free: in the relaxation's pair loop the
    operand leaves the range unpredictably, and mispredicted loop exits cost more than a
    floor (one instruction here), while fmod is slower still."""
    return a - TWO_PI * math.floor((a + math.pi) * INV_TWO_PI)


@numba.njit(cache=True, nogil=True, inline="always")
def angle_gap(a, b):
    """|a - b| as an angle in [0, pi], for a, b in [0, 2*pi) (no fmod: it is in hot loops)."""
    d = abs(a - b)
    return 2.0 * math.pi - d if d > math.pi else d


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


ORDER_STEPS = 1 << 30  # similarity resolution of the pair order (ties: lower indices first)


@numba.njit(cache=True, nogil=True, inline="always")
def pair_key(s, i, j):
    """Sort key of a cylinder pair: ascending key = descending similarity, then i, then j."""
    q = np.int64(s * ORDER_STEPS)
    return ((ORDER_STEPS - q) << 16) | (np.int64(i) << 8) | np.int64(j)


@numba.njit(cache=True, nogil=True, inline="always")
def _select_pairs(keys, sim, count, n_r, one_to_one, used_a, used_b, sel_a, sel_b, sel_s):
    """Pick up to ``n_r`` pairs in key order (sorted ``keys``), one-to-one if asked."""
    if one_to_one:
        for t in range(used_a.shape[0]):
            used_a[t] = False
        for t in range(used_b.shape[0]):
            used_b[t] = False
    chosen = 0
    for r in range(count):
        if chosen >= n_r:
            break
        a = (keys[r] >> 8) & 255
        b = keys[r] & 255
        if one_to_one:
            if used_a[a] or used_b[b]:
                continue
            used_a[a] = True
            used_b[b] = True
        sel_a[chosen] = a
        sel_b[chosen] = b
        sel_s[chosen] = sim[a, b]
        chosen += 1
    return chosen


GEO_DIST = 0  # probe_geometry planes: distance of minutiae t and k
GEO_DELTA = 1  # wrap(angle[t] - angle[k])
GEO_ALPHA = 2  # wrap(angle[t] - direction from t towards k)


@numba.njit(cache=True, nogil=True)
def probe_geometry(ax, ay, aa, geo):
    """One template's pairwise geometry, once per search: the relaxation's probe-side terms.

    ``geo[GEO_DIST, t, k]`` is the distance of minutiae t and k, ``geo[GEO_DELTA, t, k]``
    their direction difference and ``geo[GEO_ALPHA, t, k]`` the angle of t's direction
    relative to the segment from t towards k, both wrapped into [-pi, pi).
    """
    n = ax.shape[0]
    for t in range(n):
        geo[GEO_DIST, t, t] = 0.0
        geo[GEO_DELTA, t, t] = 0.0
        geo[GEO_ALPHA, t, t] = 0.0
        theta_t = np.float64(aa[t])
        for k in range(t + 1, n):
            theta_k = np.float64(aa[k])
            dx = np.float64(ax[k]) - np.float64(ax[t])
            dy = np.float64(ay[k]) - np.float64(ay[t])
            d = math.sqrt(dx * dx + dy * dy)
            f = math.atan2(dy, dx)
            geo[GEO_DIST, t, k] = d
            geo[GEO_DIST, k, t] = d
            geo[GEO_DELTA, t, k] = _wrap(theta_t - theta_k)
            geo[GEO_DELTA, k, t] = _wrap(theta_k - theta_t)
            geo[GEO_ALPHA, t, k] = _wrap(theta_t - f)
            geo[GEO_ALPHA, k, t] = _wrap(theta_k - f - math.pi)


SIGMOID_STEPS = 512  # samples of each cheap-stage sigmoid table over [0, cut]
CHEAP_REACH = 9.2  # the cheap stage counts a sigmoid factor below exp(-9.2) ~ 1e-4 as 0
EXACT_REACH = 28.0  # LSS-R counts a distance or direction factor below 1e-12 as 0


@numba.njit(cache=True, nogil=True)
def sigmoid_tables(p, tab):
    """The cheap relaxation's three sigmoids (distance, direction, radial angle) sampled
    at ``SIGMOID_STEPS`` steps over [0, cut] into ``tab[r]``, with zeros past the cut.

    The cut is where a factor falls to exp(-CHEAP_REACH); read through :func:`_tabled`
    (linear interpolation, within about 3e-5 of the sigmoid), which costs a fraction of
    the four exponentials a pair of pairs otherwise takes.
    """
    for r in range(3):
        mu = p.mu1 if r == 0 else (p.mu2 if r == 1 else p.mu3)
        tau = p.tau1 if r == 0 else (p.tau2 if r == 1 else p.tau3)
        cut = mu + CHEAP_REACH / abs(tau)
        for e in range(SIGMOID_STEPS + 1):
            tab[r, e] = _sigmoid(cut * e / SIGMOID_STEPS, mu, tau)
        for e in range(SIGMOID_STEPS + 1, tab.shape[1]):
            tab[r, e] = 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _tabled(tab, r, d, scale):
    """Table ``r`` of :func:`sigmoid_tables` at ``d >= 0`` (``scale`` = steps per unit)."""
    x = d * scale
    e = min(int(x), SIGMOID_STEPS + 1)
    f = x - e
    return tab[r, e] + f * (tab[r, e + 1] - tab[r, e])


@numba.njit(cache=True, nogil=True, inline="always")
def fast_atan2(y, x):
    """atan2 within about 1e-5 rad (a minimax polynomial), for the cheap stage."""
    ax = abs(x)
    ay = abs(y)
    hi = max(ax, ay)
    if hi == 0.0:
        return 0.0
    a = min(ax, ay) / hi
    s = a * a
    r = ((-0.0464964749 * s + 0.15931422) * s - 0.327622764) * s * a + a
    if ay > ax:
        r = 0.5 * math.pi - r
    if x < 0.0:
        r = math.pi - r
    return -r if y < 0.0 else r


@numba.njit(cache=True, nogil=True, inline="always")
def _exact_compatibility(ageo, bx, by, ba, sel_a, sel_b, chosen, p, rho):
    """LSS-R's compatibility ``rho[k, t]`` of the chosen pairs (the weight of pair k's
    similarity in pair t's update), with exact sigmoids and atan2.

    A's side comes from :func:`probe_geometry` (rows are A's cylinder indices, as in
    ``sel_a``); B's is computed here for the chosen pairs only. A distance or direction
    factor below 1e-12 is taken as 0 without evaluating the rest (the sigmoids are steep).
    """
    cut1 = p.mu1 + EXACT_REACH / abs(p.tau1)
    cut2 = p.mu2 + EXACT_REACH / abs(p.tau2)
    for t in range(chosen):
        rho[t, t] = 0.0
        at = sel_a[t]
        bt = sel_b[t]
        theta_bt = np.float64(ba[bt])
        for k in range(t + 1, chosen):
            ak = sel_a[k]
            bk = sel_b[k]
            rho[t, k] = 0.0
            rho[k, t] = 0.0
            theta_bk = np.float64(ba[bk])
            d2 = abs(_wrap(ageo[GEO_DELTA, at, ak] - (theta_bt - theta_bk)))
            dxb = np.float64(bx[bk]) - np.float64(bx[bt])
            dyb = np.float64(by[bk]) - np.float64(by[bt])
            d1 = abs(ageo[GEO_DIST, at, ak] - math.sqrt(dxb * dxb + dyb * dyb))
            # one branch for both cuts: each alone goes either way unpredictably
            if (d2 > cut2) | (d1 > cut1):
                continue
            z12 = _sigmoid(d1, p.mu1, p.tau1) * _sigmoid(d2, p.mu2, p.tau2)
            # radial angles of each pair, from t towards k and from k towards t
            phi_b = math.atan2(dyb, dxb)
            d3tk = abs(_wrap(ageo[GEO_ALPHA, at, ak] - (theta_bt - phi_b)))
            d3kt = abs(_wrap(ageo[GEO_ALPHA, ak, at] - (theta_bk - phi_b - math.pi)))
            rho[k, t] = z12 * _sigmoid(d3tk, p.mu3, p.tau3)
            rho[t, k] = z12 * _sigmoid(d3kt, p.mu3, p.tau3)


@numba.njit(cache=True, nogil=True, inline="always")
def _cheap_compatibility(ageo, tab, bx, by, ba, sel_a, sel_b, chosen, p, rho):
    """The cheap stage's ``rho``: as :func:`_exact_compatibility`, but every factor below
    exp(-CHEAP_REACH) counts as 0, the sigmoids come from tables (:func:`sigmoid_tables`)
    and B's segment direction from :func:`fast_atan2`."""
    cut1 = p.mu1 + CHEAP_REACH / abs(p.tau1)
    cut2 = p.mu2 + CHEAP_REACH / abs(p.tau2)
    scale1 = SIGMOID_STEPS / cut1
    scale2 = SIGMOID_STEPS / cut2
    scale3 = SIGMOID_STEPS / (p.mu3 + CHEAP_REACH / abs(p.tau3))
    for t in range(chosen):
        rho[t, t] = 0.0
        at = sel_a[t]
        bt = sel_b[t]
        theta_bt = np.float64(ba[bt])
        xbt = np.float64(bx[bt])
        ybt = np.float64(by[bt])
        for k in range(t + 1, chosen):
            ak = sel_a[k]
            bk = sel_b[k]
            rho[t, k] = 0.0
            rho[k, t] = 0.0
            theta_bk = np.float64(ba[bk])
            d2 = abs(_wrap(ageo[GEO_DELTA, at, ak] - (theta_bt - theta_bk)))
            dxb = np.float64(bx[bk]) - xbt
            dyb = np.float64(by[bk]) - ybt
            d1 = abs(ageo[GEO_DIST, at, ak] - math.sqrt(dxb * dxb + dyb * dyb))
            if (d2 > cut2) | (d1 > cut1):
                continue
            z12 = _tabled(tab, 0, d1, scale1) * _tabled(tab, 1, d2, scale2)
            phi_b = fast_atan2(dyb, dxb)
            d3tk = abs(_wrap(ageo[GEO_ALPHA, at, ak] - (theta_bt - phi_b)))
            d3kt = abs(_wrap(ageo[GEO_ALPHA, ak, at] - (theta_bk - phi_b - math.pi)))
            rho[k, t] = z12 * _tabled(tab, 2, d3tk, scale3)
            rho[t, k] = z12 * _tabled(tab, 2, d3kt, scale3)


@numba.njit(cache=True, nogil=True, inline="always")
def _relaxed_mean(rho, sel_s, chosen, n_r, n_p, p, lam, lam_next, eff):
    """LSS-R's consolidation: relax the chosen pairs' similarities ``sel_s`` by ``rho``
    (``n_rel`` rounds), then average the ``n_p`` most efficient pairs."""
    if chosen == 0:
        return 0.0
    for t in range(chosen):
        lam[t] = sel_s[t]
    norm = (1.0 - p.w_r) / max(n_r - 1, 1)
    for _ in range(p.n_rel):
        # column-wise so that the inner loop is element-wise (vectorised), not a reduction
        for t in range(chosen):
            lam_next[t] = 0.0
        for k in range(chosen):
            lk = lam[k]
            for t in range(chosen):
                lam_next[t] += rho[k, t] * lk
        for t in range(chosen):
            lam[t] = p.w_r * lam[t] + norm * lam_next[t]
    for t in range(chosen):
        eff[t] = lam[t] / sel_s[t]
    # the n_p most efficient pairs (ties: lower index first; unrelaxed pairs all tie at
    # w_r ** n_rel, so the order matters), by repeated scans: take is at most max_np
    take = min(n_p, n_r)
    total = 0.0
    for _ in range(min(take, chosen)):
        # branch-free arg-max (first of equals); taken pairs are marked -1 (eff >= 0)
        best = 0
        best_eff = eff[0]
        for t in range(1, chosen):
            better = eff[t] > best_eff
            best = t if better else best
            best_eff = eff[t] if better else best_eff
        total += lam[best]
        eff[best] = -1.0
    return total / take


@numba.njit(cache=True, nogil=True, inline="always")
def _window(theta, dt, ba, b0, b1):
    """Rows of B (two runs) whose ascending angles lie within about dt of theta."""
    if dt >= math.pi:
        return b0, b1, b1, b1
    lo = theta - dt - 1e-4  # widened; callers re-check the exact gate per pair
    hi = theta + dt + 1e-4
    if lo < 0.0:
        return b0, _lower_bound(ba, b0, b1, hi), _lower_bound(ba, b0, b1, lo + 2.0 * math.pi), b1
    if hi > 2.0 * math.pi:
        return _lower_bound(ba, b0, b1, lo), b1, b0, _lower_bound(ba, b0, b1, hi - 2.0 * math.pi)
    return _lower_bound(ba, b0, b1, lo), _lower_bound(ba, b0, b1, hi), b1, b1


@numba.njit(cache=True, nogil=True)
def cheap_rows(avalid, limit):
    """Rows of the ``limit`` cylinders with the most valid cells (ties: lower row), sorted.

    Cylinders near the print's border have fewer valid cells and less reliable bits;
    the cheap stage looks at the others only.
    """
    n = avalid.shape[0]
    cells = np.empty(n, np.int64)
    for i in range(n):
        cells[i] = (
            popcount64(avalid[i, 0]) + popcount64(avalid[i, 1])
            + popcount64(avalid[i, 2]) + popcount64(avalid[i, 3])
        )
    order = np.argsort(-cells * 1024 + np.arange(n), kind="mergesort")
    rows = np.sort(order[: min(limit, n)])
    return rows


@numba.njit(cache=True, nogil=True, inline="always")
def _rank_sort(keys, n, out):
    """Sort distinct keys[:n] in place through ``out``: each key goes to the count of
    smaller keys. Quadratic, but branch-free and vectorised, it beats insertion sort
    (a mispredicted branch per shift) and numba's sort (a large fixed cost) for the
    few dozen keys of the cheap stage."""
    for t in range(n):
        key = keys[t]
        rank = 0
        for u in range(n):
            rank += 1 if keys[u] < key else 0
        out[rank] = key
    for t in range(n):
        keys[t] = out[t]


@numba.njit(cache=True, nogil=True, inline="always")
def _bisect_limit(values, count, k):
    """A bound such that about k (at least k) of values[:count] lie below it (values in [0, 1))."""
    lo = 0.0
    hi = 1.0
    if count <= k:
        return hi
    for _ in range(7):
        mid = 0.5 * (lo + hi)
        below = 0
        for t in range(count):
            below += 1 if values[t] < mid else 0
        if below >= k:
            hi = mid
        else:
            lo = mid
    return hi


@numba.njit(cache=True, nogil=True)
def _sketch_run(
    v0, q1, q2, q3, q4, q5, q6, da, da_root, theta, dt, min_sketch, bsketch,
    bsketch_density, ba, s0, s1, row_base, scratch_r, rows, cnt,
):
    """Sketch ranks of one row of A (sketch words ``v0, q1..q6``, the default six
    directions) against B's rows s0:s1 (one run of its angle window).

    Every pair is written at ``cnt`` and the count advances only for admissible ones:
    about half are not, unpredictably, and a skipped store costs less than a mispredicted
    branch. Rank r = num / den^2 of the approximate similarity (s = 1 - sqrt(r)); the
    max() in the divisor only guards pairs that are not admitted (no cells). Returns the
    new count.

    A call of its own rather than inlined, and A's words passed as values: in the large
    caller they spill out of the registers (the compiler cannot tell that the stores miss
    them). Indices are unsigned because Numba adds a negative-index fix-up to every
    signed one. Together about a third fewer instructions per pair.
    """
    cu = np.uint64(cnt)
    one = np.uint64(1)
    zero = np.uint64(0)
    for j in range(s0, s1):
        u = np.uint64(j)
        c = float(popcount64(v0 & bsketch[u, 0]))
        nab = (
            popcount64(q1 & bsketch[u, 1]) + popcount64(q2 & bsketch[u, 2])
            + popcount64(q3 & bsketch[u, 3]) + popcount64(q4 & bsketch[u, 4])
            + popcount64(q5 & bsketch[u, 5]) + popcount64(q6 & bsketch[u, 6])
        )
        root_sum = da_root + bsketch_density[u, 1]
        den2 = c * root_sum * root_sum
        num = max(c * (da + bsketch_density[u, 0]) - 2.0 * float(nab), 0.0)
        ok = (c >= min_sketch) & (num < den2) & (angle_gap(theta, np.float64(ba[u])) <= dt)
        scratch_r[cu] = num / max(den2, 1e-300)
        rows[cu] = row_base + j
        cu += one if ok else zero
    return np.int64(cu)


@numba.njit(cache=True, nogil=True)
def _full_ranks(abits, avalid, adensity, bbits, bvalid, bdensity, b0, min_full, rows, n, ranks):
    """Approximate ranks on the full cylinders of the pairs ``rows[:n]`` (``i << 8 | j -
    b0``), compacted in place to the admissible ones, whose count it returns.

    A call of its own with unsigned indices, for the reasons given at :func:`_sketch_run`.
    """
    words = abits.shape[1]
    b0u = np.uint64(b0)
    kept = np.uint64(0)
    one = np.uint64(1)
    zero = np.uint64(0)
    for t in range(n):
        row = np.uint64(rows[t])
        i = row >> np.uint64(8)
        j = (row & np.uint64(255)) + b0u
        common = (
            popcount64(avalid[i, 0] & bvalid[j, 0])
            + popcount64(avalid[i, 1] & bvalid[j, 1])
            + popcount64(avalid[i, 2] & bvalid[j, 2])
            + popcount64(avalid[i, 3] & bvalid[j, 3])
        )
        nab = np.uint64(0)
        for w in range(words):
            nab += popcount64(abits[i, w] & bbits[j, w])
        c = float(common)
        root_sum = adensity[i, 1] + bdensity[j, 1]
        den2 = c * root_sum * root_sum
        num = max(c * (adensity[i, 0] + bdensity[j, 0]) - 2.0 * float(nab), 0.0)
        ok = (c >= min_full) & (num < den2)
        ranks[kept] = num / max(den2, 1e-300)
        rows[kept] = rows[t]
        kept += one if ok else zero
    return np.int64(kept)


@numba.njit(cache=True, nogil=True, inline="always")
def approx_top_pairs(
    abits, avalid, adensity, asketch, asketch_density, aa, arows,
    bbits, bvalid, bdensity, bsketch, bsketch_density, ba, b0, b1,
    p, keys, sim, scratch_r, rows,
):
    """The ``p.cheap_pairs`` best pairs by approximate local similarity, in key order.

    The approximation counts the common bits exactly but estimates the masked norms
    ``|a & valid_b|`` as ``density_a * common_cells`` (``adensity[i]`` = bits per valid
    cell and its root): exact when both cylinders have the same valid cells, the usual
    case away from the print's border, and one popcount per word instead of three.
    Every pair within the cheap angle gate is first ranked on the 8 x 8 sketches
    (:func:`matcher.cylinders.make_sketches`, a quarter of the words); the best
    ``p.cheap_sketch_pairs`` of those are ranked again on the full cylinders. Ranks are
    ``r = num / den^2`` (``s = 1 - sqrt(r)``) so that square roots are taken only for
    the pairs kept, and the best are found by bisection over branch-free counting
    passes (a running top-k buffer mispredicts a branch on nearly every admission).
    Fills ``keys[:m]`` (sorted; ties go to lower indices) and ``sim`` for those pairs.
    """
    sketch_words = asketch.shape[1]
    dt = min(p.cheap_delta_theta, p.delta_theta)
    min_sketch = p.min_me * 64.0
    cnt = 0
    # A's rows come in ascending angle, so each window bound only moves forward: four
    # pointers swept linearly instead of binary searches, whose branches mispredict
    two_pi = 2.0 * math.pi
    p_lo = b0  # first row with angle >= theta - dt
    p_hi = b0  # first row with angle >= theta + dt
    p_lo_wrap = b0  # ... >= theta - dt + 2 pi
    p_hi_wrap = b0  # ... >= theta + dt - 2 pi
    for i in arows:
        theta = np.float64(aa[i])
        lo = theta - dt - 1e-4  # widened; the exact gate is checked per pair
        hi = theta + dt + 1e-4
        while p_lo < b1 and ba[p_lo] < lo:
            p_lo += 1
        while p_hi < b1 and ba[p_hi] < hi:
            p_hi += 1
        while p_lo_wrap < b1 and ba[p_lo_wrap] < lo + two_pi:
            p_lo_wrap += 1
        while p_hi_wrap < b1 and ba[p_hi_wrap] < hi - two_pi:
            p_hi_wrap += 1
        if dt >= math.pi:
            r0, r1, r2, r3 = b0, b1, b1, b1
        elif lo < 0.0:
            r0, r1, r2, r3 = b0, p_hi, p_lo_wrap, b1
        elif hi > two_pi:
            r0, r1, r2, r3 = p_lo, b1, b0, p_hi_wrap
        else:
            r0, r1, r2, r3 = p_lo, p_hi, b1, b1
        da = asketch_density[i, 0]
        da_root = asketch_density[i, 1]
        row_base = (i << 8) - b0
        if sketch_words == 7:
            v0, q1, q2, q3 = asketch[i, 0], asketch[i, 1], asketch[i, 2], asketch[i, 3]
            q4, q5, q6 = asketch[i, 4], asketch[i, 5], asketch[i, 6]
            cnt = _sketch_run(
                v0, q1, q2, q3, q4, q5, q6, da, da_root, theta, dt, min_sketch, bsketch,
                bsketch_density, ba, r0, r1, row_base, scratch_r, rows, cnt,
            )
            cnt = _sketch_run(
                v0, q1, q2, q3, q4, q5, q6, da, da_root, theta, dt, min_sketch, bsketch,
                bsketch_density, ba, r2, r3, row_base, scratch_r, rows, cnt,
            )
            continue
        # other direction counts: the same, plainly
        for part in range(2):
            for j in range(r0 if part == 0 else r2, r1 if part == 0 else r3):
                c = float(popcount64(asketch[i, 0] & bsketch[j, 0]))
                nab = np.uint64(0)
                for w in range(1, sketch_words):
                    nab += popcount64(asketch[i, w] & bsketch[j, w])
                root_sum = da_root + bsketch_density[j, 1]
                den2 = c * root_sum * root_sum
                num = max(c * (da + bsketch_density[j, 0]) - 2.0 * float(nab), 0.0)
                ok = (c >= min_sketch) & (num < den2) & (angle_gap(theta, np.float64(ba[j])) <= dt)
                scratch_r[cnt] = num / max(den2, 1e-300)
                rows[cnt] = row_base + j
                cnt += 1 if ok else 0
    limit = _bisect_limit(scratch_r, cnt, p.cheap_sketch_pairs)
    # compact the survivors first (branch-free), then rank them on the full cylinders
    sel = 0
    for t in range(cnt):
        rows[sel] = rows[t]
        sel += 1 if scratch_r[t] < limit else 0
    kept = _full_ranks(
        abits, avalid, adensity, bbits, bvalid, bdensity, b0, p.min_me * 256.0, rows, sel,
        scratch_r,
    )
    limit = _bisect_limit(scratch_r, kept, p.cheap_pairs)
    m = 0
    for t in range(kept):
        keys[m] = (np.int64(scratch_r[t] * ORDER_STEPS) << 16) | rows[t]
        m += 1 if scratch_r[t] < limit else 0
    # rows is free from here on: the sorted keys go through it
    _rank_sort(keys, m, rows)
    m = min(m, p.cheap_pairs)
    for t in range(m):
        sim[(keys[t] >> 8) & 255, keys[t] & 255] = 1.0 - math.sqrt(
            (keys[t] >> 16) / ORDER_STEPS
        )
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def exact_pairs(abits, avalid, aa, a0, a1, bbits, bvalid, ba, b0, b1, p, keys, sim):
    """Every cylinder pair with a non-zero exact local similarity; returns their count.

    Writes each pair's :func:`pair_key` to ``keys`` and its similarity to
    ``sim[i - a0, j - b0]`` (entries of other pairs are left as they were).
    """
    min_me_cells = p.min_me * 256.0
    dt = p.delta_theta
    count = 0
    for i in range(a0, a1):
        theta = np.float64(aa[i])
        r0, r1, r2, r3 = _window(theta, dt, ba, b0, b1)
        for part in range(2):
            s0 = r0 if part == 0 else r2
            s1 = r1 if part == 0 else r3
            for j in range(s0, s1):
                if angle_gap(theta, np.float64(ba[j])) > dt:
                    continue
                s = local_similarity(abits, avalid, i, bbits, bvalid, j, min_me_cells)
                if s <= 0.0:
                    continue
                sim[i - a0, j - b0] = s
                keys[count] = pair_key(s, i - a0, j - b0)
                count += 1
    return count


@numba.njit(cache=True, nogil=True)
def compare(
    abits, avalid, adensity, asketch, asketch_density, ageo, tab, aa, arows,
    bbits, bvalid, bdensity, bsketch, bsketch_density, bx, by, ba, b0, b1,
    p, gate, keys, sim, scratch_r, rows, used_a, used_b, sel_a, sel_b, sel_s, rho, lam,
    lam_next, eff,
):
    """Raw (cheap stage, LSS-R) scores of template A (all its rows) against B (rows b0:b1).

    ``lssr`` is -1 when the cheap score is below ``gate`` (relaxation skipped). A's
    pairwise geometry comes precomputed (:func:`probe_geometry`), and so do the cheap
    stage's sigmoid tables (:func:`sigmoid_tables`). Scratch arrays are passed in so that
    a search allocates nothing per comparison.
    """
    na = abits.shape[0]
    nb = b1 - b0
    n_min = min(na, nb)
    if n_min == 0:
        return 0.0, (0.0 if gate <= 0.0 else -1.0)
    n_p = n_p_for(n_min, p)
    # cheap stage: a small relaxation over the best approximate pairs
    m = approx_top_pairs(
        abits, avalid, adensity, asketch, asketch_density, aa, arows,
        bbits, bvalid, bdensity, bsketch, bsketch_density, ba, b0, b1,
        p, keys, sim, scratch_r, rows,
    )
    n_cheap = min(n_min, p.cheap_n_r)
    chosen = _select_pairs(
        keys, sim, m, n_cheap, p.one_to_one, used_a, used_b, sel_a, sel_b, sel_s
    )
    for t in range(chosen):
        sel_b[t] += b0
    _cheap_compatibility(ageo, tab, bx, by, ba, sel_a, sel_b, chosen, p, rho)
    cheap = _relaxed_mean(rho, sel_s, chosen, n_cheap, n_p, p, lam, lam_next, eff)
    if cheap < gate:
        return cheap, -1.0
    return cheap, full_lssr(
        abits, avalid, ageo, aa, bbits, bvalid, bx, by, ba, b0, b1,
        p, keys, sim, used_a, used_b, sel_a, sel_b, sel_s, rho, lam, lam_next, eff,
    )


@numba.njit(cache=True, nogil=True, inline="always")
def full_lssr(
    abits, avalid, ageo, aa, bbits, bvalid, bx, by, ba, b0, b1,
    p, keys, sim, used_a, used_b, sel_a, sel_b, sel_s, rho, lam, lam_next, eff,
):
    """LSS-R raw score of template A (all its rows) against B (rows b0:b1)."""
    na = abits.shape[0]
    n_min = min(na, b1 - b0)
    if n_min == 0:
        return 0.0
    n_p = n_p_for(n_min, p)
    n_r = n_min
    count = exact_pairs(abits, avalid, aa, 0, na, bbits, bvalid, ba, b0, b1, p, keys, sim)
    keys[:count].sort()
    chosen = _select_pairs(
        keys, sim, count, n_r, p.one_to_one, used_a, used_b, sel_a, sel_b, sel_s
    )
    for t in range(chosen):
        sel_b[t] += b0
    _exact_compatibility(ageo, bx, by, ba, sel_a, sel_b, chosen, p, rho)
    return _relaxed_mean(rho, sel_s, chosen, n_r, n_p, p, lam, lam_next, eff)


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_rows(array, r0, r1, width):
    """Prefetch rows r0:r1 of a C-contiguous 2-D 8-byte array, one request per line.

    The cheap stage reads a template's full cylinders at scattered rows, which the
    hardware prefetcher misses; measured about 3 us per comparison in a gallery far
    larger than the caches, most of which this hides behind the previous comparison."""
    # 8 elements of 8 bytes = one 64-byte line; +7 reaches the last, partial line
    for e in range(r0 * width, min(r1 * width + 7, array.size), 8):
        prefetch(array, e)


@numba.njit(cache=True, nogil=True)
def score_range(
    abits, avalid, adensity, asketch, asketch_density, ageo, tab, aa, arows,
    gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga, offsets,
    p, gate, targets, start, stop, nb_max, out_lss, out_lssr,
):
    """Score the probe against gallery templates targets[start:stop] (one thread's share).

    Scratch space is allocated once here. :func:`compare` stays a call: Numba cannot
    inline it (CPython compiles a call of more than 30 arguments as ``f(*args)``).
    """
    na = abits.shape[0]
    cap = max(na * nb_max, p.cheap_pairs, 1)
    side = max(min(na, nb_max), 1)
    keys = np.empty(cap, np.int64)
    scratch_r = np.empty(cap, np.float64)
    rows = np.empty(cap, np.int64)
    sim = np.empty((max(na, 1), max(nb_max, 1)), np.float64)
    used_a = np.zeros(max(na, 1), np.bool_)
    used_b = np.zeros(max(nb_max, 1), np.bool_)
    sel_a = np.empty(side, np.int64)
    sel_b = np.empty(side, np.int64)
    sel_s = np.empty(side, np.float64)
    rho = np.empty((side, side), np.float64)
    lam = np.empty(side, np.float64)
    lam_next = np.empty(side, np.float64)
    eff = np.empty(side, np.float64)
    words = gbits.shape[1]
    for q in range(start, stop):
        g = targets[q]
        if q + 1 < stop:
            h = targets[q + 1]
            _prefetch_rows(gbits, offsets[h], offsets[h + 1], words)
            _prefetch_rows(gvalid, offsets[h], offsets[h + 1], gvalid.shape[1])
            _prefetch_rows(gdensity, offsets[h], offsets[h + 1], gdensity.shape[1])
        lss, lssr = compare(
            abits, avalid, adensity, asketch, asketch_density, ageo, tab, aa, arows,
            gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga,
            offsets[g], offsets[g + 1],
            p, gate, keys, sim, scratch_r, rows, used_a, used_b, sel_a, sel_b, sel_s,
            rho, lam, lam_next, eff,
        )
        out_lss[g] = lss
        out_lssr[g] = lssr


@numba.njit(cache=True, nogil=True)
def score_listed(
    abits, avalid, ageo, aa, gbits, gvalid, gx, gy, ga, offsets,
    p, listed, start, stop, nb_max, out_lssr,
):
    """LSS-R of the probe against gallery templates listed[start:stop]."""
    na = abits.shape[0]
    cap = max(na * nb_max, 1)
    side = max(min(na, nb_max), 1)
    keys = np.empty(cap, np.int64)
    sim = np.empty((max(na, 1), max(nb_max, 1)), np.float64)
    used_a = np.zeros(max(na, 1), np.bool_)
    used_b = np.zeros(max(nb_max, 1), np.bool_)
    sel_a = np.empty(side, np.int64)
    sel_b = np.empty(side, np.int64)
    sel_s = np.empty(side, np.float64)
    rho = np.empty((side, side), np.float64)
    lam = np.empty(side, np.float64)
    lam_next = np.empty(side, np.float64)
    eff = np.empty(side, np.float64)
    for q in range(start, stop):
        g = listed[q]
        out_lssr[g] = full_lssr(
            abits, avalid, ageo, aa, gbits, gvalid, gx, gy, ga, offsets[g], offsets[g + 1],
            p, keys, sim, used_a, used_b, sel_a, sel_b, sel_s, rho, lam, lam_next, eff,
        )


@numba.njit(cache=True, nogil=True, parallel=True)
def search_listed(
    abits, avalid, ax, ay, aa, gbits, gvalid, gx, gy, ga, offsets, p, listed, n_chunks,
    out_lssr,
):
    """LSS-R of the probe against the listed gallery templates only (a shortlist)."""
    na = abits.shape[0]
    nb_max = 0
    for q in range(listed.shape[0]):
        g = listed[q]
        nb_max = max(nb_max, offsets[g + 1] - offsets[g])
    ageo = np.empty((3, na, na), np.float64)
    probe_geometry(ax, ay, aa, ageo)
    n = listed.shape[0]
    for c in prange(n_chunks):
        score_listed(
            abits, avalid, ageo, aa, gbits, gvalid, gx, gy, ga, offsets,
            p, listed, c * n // n_chunks, (c + 1) * n // n_chunks, nb_max, out_lssr,
        )


@numba.njit(cache=True, nogil=True)
def search_serial(
    abits, avalid, adensity, asketch, asketch_density, ax, ay, aa,
    gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga, offsets,
    p, gate, rows, out_lss, out_lssr,
):
    """:func:`search` on the calling thread only: for small galleries (a 1:1 check) a
    parallel launch costs more than the comparisons."""
    na = abits.shape[0]
    nb_max = 0
    for g in rows:
        nb_max = max(nb_max, offsets[g + 1] - offsets[g])
    ageo = np.empty((3, na, na), np.float64)
    probe_geometry(ax, ay, aa, ageo)
    tab = np.empty((3, SIGMOID_STEPS + 3), np.float64)
    sigmoid_tables(p, tab)
    arows = cheap_rows(avalid, p.cheap_probe_max)
    score_range(
        abits, avalid, adensity, asketch, asketch_density, ageo, tab, aa, arows,
        gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga, offsets,
        p, gate, rows, 0, rows.shape[0], nb_max, out_lss, out_lssr,
    )


@numba.njit(cache=True, nogil=True, parallel=True)
def search(
    abits, avalid, adensity, asketch, asketch_density, ax, ay, aa,
    gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga, offsets,
    p, gate, rows, n_chunks, out_lss, out_lssr,
):
    """Score one probe (all its rows) against the gallery templates ``rows`` (ascending),
    in parallel chunks; the outputs of other templates are left as they were."""
    g_count = rows.shape[0]
    na = abits.shape[0]
    nb_max = 0
    for g in rows:
        nb_max = max(nb_max, offsets[g + 1] - offsets[g])
    ageo = np.empty((3, na, na), np.float64)
    probe_geometry(ax, ay, aa, ageo)
    tab = np.empty((3, SIGMOID_STEPS + 3), np.float64)
    sigmoid_tables(p, tab)
    arows = cheap_rows(avalid, p.cheap_probe_max)
    for c in prange(n_chunks):
        score_range(
            abits, avalid, adensity, asketch, asketch_density, ageo, tab, aa, arows,
            gbits, gvalid, gdensity, gsketch, gsketch_density, gx, gy, ga, offsets,
            p, gate, rows, c * g_count // n_chunks, (c + 1) * g_count // n_chunks, nb_max,
            out_lss, out_lssr,
        )
