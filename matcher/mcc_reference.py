"""A slow, plain-numpy implementation of the MCC formulas, to check the Numba kernels.

It follows the formulas of :mod:`matcher.cylinders` and :mod:`matcher.similarity` (which
cite the paper) written out directly, one template pair at a time, with no attention to
speed, and shares no code with them beyond the parameter tuples. ``tests/
test_mcc_reference.py`` compares the two on a few hundred template pairs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import ConvexHull

from matcher.cylinders import CylinderParams
from matcher.similarity import CHEAP_REACH, EXACT_REACH, ORDER_STEPS, SIGMOID_STEPS, MatchParams

NS = 16
SQRT_2PI = math.sqrt(2 * math.pi)


def wrap(a: np.ndarray | float) -> np.ndarray | float:
    """Angles wrapped into [-pi, pi)."""
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


def sigmoid(v, mu: float, tau: float):
    """Z(v; mu, tau) of the paper."""
    return 1.0 / (1.0 + np.exp(-tau * (np.asarray(v, dtype=np.float64) - mu)))


def _hull_polygon(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pts = np.stack([x, y], axis=1)
    if len(pts) >= 3:
        try:
            return pts[ConvexHull(pts).vertices]  # counter-clockwise in 2-D
        except Exception:  # noqa: BLE001 - collinear points: fall through to the segment
            pass
    order = np.lexsort((y, x))
    return pts[[order[0], order[-1]]] if len(pts) > 1 else pts


def _near_hull(px: np.ndarray, py: np.ndarray, poly: np.ndarray, omega: float) -> np.ndarray:
    """Inside the polygon or within omega of it, for arrays of points."""
    h = len(poly)
    best = np.full(px.shape, np.inf)
    inside = np.full(px.shape, h >= 3)
    for e in range(h):
        ax, ay = poly[e]
        bx, by = poly[(e + 1) % h]
        ex, ey = bx - ax, by - ay
        inside &= ex * (py - ay) - ey * (px - ax) >= 0.0
        len2 = ex * ex + ey * ey
        t = np.zeros_like(px) if len2 == 0 else ((px - ax) * ex + (py - ay) * ey) / len2
        t = np.clip(t, 0.0, 1.0)
        best = np.minimum(best, (px - (ax + t * ex)) ** 2 + (py - (ay + t * ey)) ** 2)
    return inside | (best <= omega * omega)


def cylinders(x, y, angle, params: CylinderParams) -> dict[str, np.ndarray]:
    """Valid cylinders (bits as booleans) of minutiae in image coordinates, y down."""
    mx = np.asarray(x, np.float64)
    my = -np.asarray(y, np.float64)
    ma = np.mod(np.asarray(angle, np.float64), 2 * math.pi)
    n = len(mx)
    nd = params.nd
    ds = 2 * params.radius / NS
    dd = 2 * math.pi / nd
    half = (NS - 1) / 2
    reach = 3 * params.sigma_s
    poly = _hull_polygon(mx, my) if n else np.zeros((0, 2))
    ii, jj = np.meshgrid(np.arange(NS), np.arange(NS), indexing="ij")
    within = (ii - half) ** 2 + (jj - half) ** 2 <= (params.radius / ds) ** 2
    bits = np.zeros((n, NS, NS, nd), bool)
    valid = np.zeros((n, NS, NS), bool)
    ok = np.zeros(n, bool)
    for m in range(n):
        c, s = math.cos(ma[m]), math.sin(ma[m])
        d2 = (mx - mx[m]) ** 2 + (my - my[m]) ** 2
        near = (d2 <= (params.radius + reach) ** 2) & (np.arange(n) != m)
        if near.sum() < params.min_m:
            continue
        u = (ii - half) * ds
        v = (jj - half) * ds
        px, py = mx[m] + u * c - v * s, my[m] + u * s + v * c
        cell_ok = within & _near_hull(px, py, poly, params.omega)
        if cell_ok.sum() < params.min_vc * within.sum():
            continue
        ok[m] = True
        valid[m] = cell_ok
        acc = np.zeros((NS, NS, nd))
        for t in np.flatnonzero(near):
            rx, ry = mx[t] - mx[m], my[t] - my[m]
            lu = (rx * c + ry * s) / ds + half
            lv = (-rx * s + ry * c) / ds + half
            dist2 = ((ii - lu) ** 2 + (jj - lv) ** 2) * ds * ds
            g = np.where(
                cell_ok & (dist2 <= reach * reach),
                np.exp(-dist2 / (2 * params.sigma_s**2)) / (params.sigma_s * SQRT_2PI),
                0.0,
            )
            dtheta = wrap(ma[m] - ma[t])
            a = wrap(-math.pi + (np.arange(nd) + 0.5) * dd - dtheta)
            k = 1.0 / (params.sigma_d * math.sqrt(2))
            erf = np.vectorize(math.erf)
            cd = 0.5 * (erf((a + dd / 2) * k) - erf((a - dd / 2) * k))
            acc += g[:, :, None] * cd[None, None, :]
        bits[m] = (acc >= params.mu_psi) & cell_ok[:, :, None]
    keep = np.flatnonzero(ok)
    keep = keep[np.argsort(ma[keep], kind="stable")]
    return {
        "bits": bits[keep],
        "valid": valid[keep],
        "x": mx[keep].astype(np.float32).astype(np.float64),
        "y": my[keep].astype(np.float32).astype(np.float64),
        "angle": ma[keep].astype(np.float32).astype(np.float64),
    }


def _angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a[:, None] - b[None, :])
    return np.where(d > math.pi, 2 * math.pi - d, d)


def local_similarities(A: dict, B: dict, p: MatchParams, delta_theta: float) -> np.ndarray:
    """Exact local similarity matrix (0 where gated out)."""
    va = A["valid"].reshape(len(A["valid"]), -1)
    vb = B["valid"].reshape(len(B["valid"]), -1)
    ca = A["bits"].reshape(len(A["bits"]), NS * NS, -1)
    cb = B["bits"].reshape(len(B["bits"]), NS * NS, -1)
    common = va.astype(np.int64) @ vb.T.astype(np.int64)
    sim = np.zeros((len(va), len(vb)))
    gap = _angle_gap(A["angle"], B["angle"])
    for i in range(len(va)):
        for j in range(len(vb)):
            if gap[i, j] > delta_theta or common[i, j] < p.min_me * 256:
                continue
            mask = (va[i] & vb[j])[:, None]
            a = ca[i] & mask
            b = cb[j] & mask
            den = math.sqrt(a.sum()) + math.sqrt(b.sum())
            if den > 0:
                sim[i, j] = 1 - math.sqrt((a ^ b).sum()) / den
    return sim


def _sketch(C: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 x 2 pooled bits and validity (any of four), and the pooled bit density."""
    n = len(C["bits"])
    bits = C["bits"].reshape(n, 8, 2, 8, 2, -1).any(axis=(2, 4)).reshape(n, 64, -1)
    valid = C["valid"].reshape(n, 8, 2, 8, 2).any(axis=(2, 4)).reshape(n, 64)
    density = bits.sum(axis=(1, 2)) / np.maximum(valid.sum(axis=1), 1)
    return bits, valid, density


def _rank_values(abits, avalid, ad, bbits, bvalid, bd, min_common: float) -> np.ndarray:
    """r = num / den^2 of the approximate similarity (1 where no match)."""
    c = avalid.astype(np.float64) @ bvalid.T.astype(np.float64)
    nab = np.einsum("iwk,jwk->ij", abits.astype(np.int64), bbits.astype(np.int64)).astype(float)
    ra, rb = np.sqrt(ad), np.sqrt(bd)
    root_sum = ra[:, None] + rb[None, :]
    den2 = c * root_sum * root_sum
    num = np.maximum(c * (ad[:, None] + bd[None, :]) - 2 * nab, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((c >= min_common) & (num < den2), num / den2, 1.0)
    return r


def _bisect_limit(values: np.ndarray, k: int) -> float:
    lo, hi = 0.0, 1.0
    if len(values) <= k:
        return hi
    for _ in range(7):
        mid = 0.5 * (lo + hi)
        if int((values < mid).sum()) >= k:
            hi = mid
        else:
            lo = mid
    return hi


def _greedy(pairs: list[tuple[int, int, int, float]], n_r: int, one_to_one: bool):
    """Pairs in key order, one-to-one if asked, at most n_r."""
    used_a, used_b, out = set(), set(), []
    for _key, i, j, s in sorted(pairs):
        if len(out) >= n_r:
            break
        if one_to_one and (i in used_a or j in used_b):
            continue
        used_a.add(i)
        used_b.add(j)
        out.append((i, j, s))
    return out


def fast_atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The cheap stage's polynomial atan2 (about 2e-4 rad from the true one)."""
    ax, ay = np.abs(x), np.abs(y)
    hi = np.maximum(ax, ay)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(hi > 0, np.minimum(ax, ay) / hi, 0.0)
    s = a * a
    r = ((-0.0464964749 * s + 0.15931422) * s - 0.327622764) * s * a + a
    r = np.where(ay > ax, 0.5 * math.pi - r, r)
    r = np.where(x < 0, math.pi - r, r)
    return np.where(hi == 0, 0.0, np.where(y < 0, -r, r))


def tabled_sigmoid(v, mu: float, tau: float) -> np.ndarray:
    """The cheap stage's sigmoid: sampled at SIGMOID_STEPS steps over [0, cut], where it
    falls to exp(-CHEAP_REACH), linearly interpolated, and 0 one step past the cut."""
    cut = mu + CHEAP_REACH / abs(tau)
    table = np.concatenate(
        [sigmoid(cut * np.arange(SIGMOID_STEPS + 1) / SIGMOID_STEPS, mu, tau), np.zeros(2)]
    )
    x = np.asarray(v, dtype=np.float64) * (SIGMOID_STEPS / cut)
    e = np.minimum(np.floor(x).astype(np.int64), SIGMOID_STEPS + 1)
    return table[e] + (x - e) * (table[e + 1] - table[e])


def _relaxation(A: dict, B: dict, chosen, n_r: int, n_p: int, p: MatchParams, exact: bool) -> float:
    if not chosen:
        return 0.0
    ia = np.array([c[0] for c in chosen])
    ib = np.array([c[1] for c in chosen])
    lam0 = np.array([c[2] for c in chosen])
    reach = EXACT_REACH if exact else CHEAP_REACH
    ax, ay, aa = A["x"][ia], A["y"][ia], A["angle"][ia]
    bx, by, ba = B["x"][ib], B["y"][ib], B["angle"][ib]
    da = np.hypot(ax[None, :] - ax[:, None], ay[None, :] - ay[:, None])
    db = np.hypot(bx[None, :] - bx[:, None], by[None, :] - by[:, None])
    d1 = np.abs(da - db)
    d2 = np.abs(wrap(wrap(aa[:, None] - aa[None, :]) - wrap(ba[:, None] - ba[None, :])))
    # direction from t towards k, as the angle of the vector k - t
    pa = np.arctan2(ay[None, :] - ay[:, None], ax[None, :] - ax[:, None])
    atan2 = np.arctan2 if exact else fast_atan2
    pb = atan2(by[None, :] - by[:, None], bx[None, :] - bx[:, None])
    d3 = np.abs(wrap(wrap(aa[:, None] - pa) - wrap(ba[:, None] - pb)))
    z = sigmoid if exact else tabled_sigmoid
    rho = z(d1, p.mu1, p.tau1) * z(d2, p.mu2, p.tau2) * z(d3, p.mu3, p.tau3)
    cut = (d1 > p.mu1 + reach / abs(p.tau1)) | (d2 > p.mu2 + reach / abs(p.tau2))
    rho[cut] = 0.0
    np.fill_diagonal(rho, 0.0)
    lam = lam0.copy()
    for _ in range(p.n_rel):
        lam = p.w_r * lam + (1 - p.w_r) / max(n_r - 1, 1) * (rho @ lam)
    eff = lam / lam0
    order = sorted(range(len(lam)), key=lambda t: (-eff[t], t))
    take = min(n_p, n_r)
    return float(sum(lam[t] for t in order[:take]) / take)


def n_p_for(n_min: int, p: MatchParams) -> int:
    """How many pairs the consolidation averages."""
    z = float(sigmoid(n_min, p.mu_p, p.tau_p))
    return p.min_np + int(np.round(z * (p.max_np - p.min_np)))


def _cheap_score(A: dict, B: dict, p: MatchParams, n_min: int, n_p: int) -> float:
    sa_bits, sa_valid, sa_d = _sketch(A)
    sb_bits, sb_valid, sb_d = _sketch(B)
    dt = min(p.cheap_delta_theta, p.delta_theta)
    gap = _angle_gap(A["angle"], B["angle"])
    r_s = _rank_values(sa_bits, sa_valid, sa_d, sb_bits, sb_valid, sb_d, p.min_me * 64)
    va = A["valid"].reshape(len(A["valid"]), -1)
    # only A's cheap_probe_max cylinders with the most valid cells (ties: lower row)
    cells = va.sum(axis=1)
    rows = sorted(range(len(cells)), key=lambda t: (-int(cells[t]), t))[: p.cheap_probe_max]
    cand = np.argwhere((r_s < 1.0) & (gap <= dt))
    cand = cand[np.isin(cand[:, 0], rows)]
    vals = r_s[cand[:, 0], cand[:, 1]]
    limit = _bisect_limit(vals, p.cheap_sketch_pairs)
    cand = cand[vals < limit]
    vb = B["valid"].reshape(len(B["valid"]), -1)
    fa = A["bits"].reshape(len(va), NS * NS, -1)
    fb = B["bits"].reshape(len(vb), NS * NS, -1)
    dens_a = fa.sum(axis=(1, 2)) / np.maximum(va.sum(axis=1), 1)
    dens_b = fb.sum(axis=(1, 2)) / np.maximum(vb.sum(axis=1), 1)
    r_f = _rank_values(fa, va, dens_a, fb, vb, dens_b, p.min_me * 256)
    vals = r_f[cand[:, 0], cand[:, 1]]
    cand = cand[vals < 1.0]
    vals = vals[vals < 1.0]
    limit = _bisect_limit(vals, p.cheap_pairs)
    pairs = []
    for (i, j), r in zip(cand, vals, strict=True):
        if r < limit:
            q = int(r * ORDER_STEPS)
            key = (q << 16) | (int(i) << 8) | int(j)
            pairs.append((key, int(i), int(j), 1 - math.sqrt(q / ORDER_STEPS)))
    pairs = sorted(pairs)[: p.cheap_pairs]
    n_cheap = min(n_min, p.cheap_n_r)
    chosen = _greedy(pairs, n_cheap, p.one_to_one)
    return _relaxation(A, B, chosen, n_cheap, n_p, p, exact=False)


def scores(A: dict, B: dict, p: MatchParams) -> tuple[float, float]:
    """(cheap stage, LSS-R) raw scores of A against B, as the kernels define them.

    """
    n_min = min(len(A["bits"]), len(B["bits"]))
    if n_min == 0:
        return 0.0, 0.0
    n_p = n_p_for(n_min, p)
    cheap = _cheap_score(A, B, p, n_min, n_p)
    sim = local_similarities(A, B, p, p.delta_theta)
    pairs = []
    for i, j in np.argwhere(sim > 0):
        s = sim[i, j]
        q = int(np.int64(s * ORDER_STEPS))
        pairs.append((((ORDER_STEPS - q) << 16) | (int(i) << 8) | int(j), int(i), int(j), s))
    chosen = _greedy(pairs, n_min, p.one_to_one)
    return cheap, _relaxation(A, B, chosen, n_min, n_p, p, exact=True)
