"""Minutia Cylinder-Code cylinders: bit cylinders with validity masks, built by Numba.

Cappelli, Ferrara, Maltoni, "Minutia Cylinder-Code", TPAMI 2010. Each minutia gets a
cylinder of 16 x 16 spatial cells x ``nd`` directional bins around it, aligned with the
minutia's direction; a cell's bit says whether enough neighbouring minutiae with the
right relative direction lie near the cell centre. A cell is valid when it lies within
the radius and inside the convex hull of the minutiae enlarged by ``omega``.

Bit layout (shared with :mod:`matcher.similarity`): spatial cell ``s = i * 16 + j``
(i along the minutia direction, j across it) is bit ``s % 64`` of word ``s // 64``; the
directional bin ``k`` adds ``4 * k`` to the word index. A cylinder is ``4 * nd`` uint64
words of bits and 4 words of validity (the same for every directional bin). Bits outside
valid cells are zero, so ``bits & other_validity`` is the masked cylinder.

:func:`make_sketches` pools a cylinder into an 8 x 8 x ``nd`` sketch (2 x 2 cells to one)
for the matcher's cheap stage.

Coordinates inside this module are mathematical (y up): the caller passes ``-y`` so that
the template's counter-clockwise angles (DESIGN.md) are ordinary polar angles.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np

NS = 16  # spatial cells per side: fixed, the 256 spatial bits are four words
SPATIAL_WORDS = 4


class CylinderParams(NamedTuple):
    """Cylinder construction parameters (pixels at 500 ppi, radians)."""

    radius: float = 70.0
    nd: int = 6
    sigma_s: float = 28.0 / 3.0
    sigma_d: float = 2.0 * math.pi / 9.0
    mu_psi: float = 0.01
    omega: float = 50.0
    min_vc: float = 0.75
    min_m: int = 2

    @property
    def words(self) -> int:
        """uint64 words of cylinder bits."""
        return SPATIAL_WORDS * self.nd


@numba.njit(cache=True, nogil=True)
def _wrap(a: float) -> float:
    """An angle difference wrapped into [-pi, pi) (loops: fmod is slow)."""
    while a >= math.pi:
        a -= 2.0 * math.pi
    while a < -math.pi:
        a += 2.0 * math.pi
    return a


@numba.njit(cache=True, nogil=True)
def convex_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the convex hull vertices, counter-clockwise (Andrew's monotone chain)."""
    n = x.shape[0]
    order = np.argsort(x * 1e6 + y)  # x major, y minor; coordinates are < 1e4
    hull = np.empty(2 * n + 1, np.int64)
    k = 0
    for p in range(n):
        i = order[p]
        while k >= 2:
            a = hull[k - 2]
            b = hull[k - 1]
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross > 0.0:
                break
            k -= 1
        hull[k] = i
        k += 1
    lower = k + 1
    for p in range(n - 2, -1, -1):
        i = order[p]
        while k >= lower:
            a = hull[k - 2]
            b = hull[k - 1]
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross > 0.0:
                break
            k -= 1
        hull[k] = i
        k += 1
    return hull[: max(k - 1, 1)] if n > 0 else hull[:0]


@numba.njit(cache=True, nogil=True)
def edge_normals(hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
    """(h, 3): unit outward normal and offset of each edge of a counter-clockwise polygon,
    so that ``nx * px + ny * py - offset`` is a point's signed distance to the edge's line."""
    h = hx.shape[0]
    out = np.zeros((h, 3))
    for e in range(h):
        f = e + 1 if e + 1 < h else 0
        ex = hx[f] - hx[e]
        ey = hy[f] - hy[e]
        length = math.sqrt(ex * ex + ey * ey)
        if length > 0.0:
            out[e, 0] = ey / length
            out[e, 1] = -ex / length
            out[e, 2] = out[e, 0] * hx[e] + out[e, 1] * hy[e]
    return out


@numba.njit(cache=True, nogil=True)
def _near_facing_edges(
    px: float, py: float, hx: np.ndarray, hy: np.ndarray, normals: np.ndarray, omega2: float
) -> bool:
    """For a point outside a convex polygon (h >= 3): within sqrt(omega2) of it?

    The nearest point of the polygon lies on an edge whose line has the point on its
    outer side, so only those edges (one or two, usually) are measured.
    """
    h = hx.shape[0]
    for e in range(h):
        if normals[e, 0] * px + normals[e, 1] * py - normals[e, 2] <= 0.0:
            continue
        f = e + 1 if e + 1 < h else 0
        ex = hx[f] - hx[e]
        ey = hy[f] - hy[e]
        len2 = ex * ex + ey * ey
        t = 0.0 if len2 == 0.0 else ((px - hx[e]) * ex + (py - hy[e]) * ey) / len2
        t = min(1.0, max(0.0, t))
        dx = px - (hx[e] + t * ex)
        dy = py - (hy[e] + t * ey)
        if dx * dx + dy * dy <= omega2:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _near_small_hull(
    px: float, py: float, hx: np.ndarray, hy: np.ndarray, omega2: float
) -> bool:
    """True when the point is within sqrt(omega2) of a hull of one or two vertices (a point
    or a segment); hulls with an area go through the signed-distance test instead."""
    h = hx.shape[0]
    if h == 0:
        return False
    if h == 1:
        return (px - hx[0]) ** 2 + (py - hy[0]) ** 2 <= omega2
    for e in range(h):
        f = e + 1 if e + 1 < h else 0
        ex = hx[f] - hx[e]
        ey = hy[f] - hy[e]
        len2 = ex * ex + ey * ey
        t = 0.0 if len2 == 0.0 else ((px - hx[e]) * ex + (py - hy[e]) * ey) / len2
        t = min(1.0, max(0.0, t))
        dx = px - (hx[e] + t * ex)
        dy = py - (hy[e] + t * ey)
        if dx * dx + dy * dy <= omega2:
            return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _pooled_word(word: np.uint64) -> np.uint64:
    """16 sketch bits from one word of cells (4 rows of 16): each 2 x 2 block OR-ed.

    Rows 4w..4w+3 of the cylinder make sketch rows 2w and 2w+1, bits 0-7 and 8-15 here.
    """
    word = word | (word >> np.uint64(1))  # column pairs, at even columns
    word = word | (word >> np.uint64(16))  # row pairs, at rows 0 and 2
    # gather the even bits of rows 0 and 2 (a pext by shifts and masks)
    word &= np.uint64(0x0000_5555_0000_5555)
    word = (word | (word >> np.uint64(1))) & np.uint64(0x0000_3333_0000_3333)
    word = (word | (word >> np.uint64(2))) & np.uint64(0x0000_0F0F_0000_0F0F)
    word = (word | (word >> np.uint64(4))) & np.uint64(0x0000_00FF_0000_00FF)
    return (word & np.uint64(0xFF)) | ((word >> np.uint64(24)) & np.uint64(0xFF00))


@numba.njit(cache=True, nogil=True)
def pool_sketches(bits: np.ndarray, valid: np.ndarray, sketch: np.ndarray) -> None:
    """Fill ``sketch`` (n, 1 + nd): 2 x 2 blocks of cells OR-ed (see make_sketches)."""
    n = bits.shape[0]
    planes = bits.shape[1] // SPATIAL_WORDS
    for m in range(n):
        for plane in range(planes + 1):
            out = np.uint64(0)
            for w in range(SPATIAL_WORDS):
                word = valid[m, w] if plane == 0 else bits[m, (plane - 1) * SPATIAL_WORDS + w]
                out |= _pooled_word(word) << np.uint64(16 * w)
            sketch[m, plane] = out


@numba.njit(cache=True, nogil=True, inline="always")
def _gaussian_steps(k0, k1, centre, c, step_ratio, scale, out):
    """out[k - k0] = scale * exp(-c (k - centre)^2) for k0 <= k <= k1, by recurrence
    (``step_ratio`` = exp(-2c)); rounding drifts by a few ulps over the <= 7 steps."""
    value = scale * math.exp(-c * (k0 - centre) ** 2)
    ratio = math.exp(-c * (2.0 * (k0 - centre) + 1.0))
    for k in range(k0, k1 + 1):
        out[k - k0] = value
        value *= ratio
        ratio *= step_ratio


@numba.njit(cache=True, nogil=True)
def build_cylinders(
    x: np.ndarray,
    y: np.ndarray,
    angle: np.ndarray,
    radius: float,
    nd: int,
    sigma_s: float,
    sigma_d: float,
    mu_psi: float,
    omega: float,
    min_vc: float,
    min_m: int,
    direction_table: np.ndarray,
    bits: np.ndarray,
    valid: np.ndarray,
    ok: np.ndarray,
) -> None:
    """Fill ``bits`` (n, 4*nd), ``valid`` (n, 4) and ``ok`` (n,) for every minutia.

    ``x, y`` are float64 in mathematical orientation (y up), ``angle`` float64 radians;
    ``direction_table`` is :func:`direction_table` of ``nd`` and ``sigma_d``.
    ``ok[m]`` says whether cylinder m is valid (enough valid cells and neighbours).
    """
    n = x.shape[0]
    bits[:, :] = 0
    valid[:, :] = 0
    ok[:] = False
    if n == 0:
        return
    hull = convex_hull(x, y)
    hx = x[hull]
    hy = y[hull]
    normals = edge_normals(hx, hy)
    ds = 2.0 * radius / NS
    half = (NS - 1) / 2.0
    omega2 = omega * omega
    reach = 3.0 * sigma_s
    reach_cells2 = (reach / ds) ** 2
    gs_norm = 1.0 / (sigma_s * math.sqrt(2.0 * math.pi))
    inv_2s2 = 1.0 / (2.0 * sigma_s * sigma_s)
    step_ratio = math.exp(-2.0 * ds * ds * inv_2s2)
    neighbour_reach2 = (radius + reach) ** 2
    # cells whose centre lies within the radius: the same for every cylinder
    r_cells = radius / ds
    within = np.zeros(NS * NS, np.bool_)
    n_within = 0
    for i in range(NS):
        for j in range(NS):
            if (i - half) ** 2 + (j - half) ** 2 <= r_cells * r_cells:
                within[i * NS + j] = True
                n_within += 1
    cell_u = np.empty(NS * NS)  # cell centres in the cylinder's frame, along and across
    cell_v = np.empty(NS * NS)
    for i in range(NS):
        for j in range(NS):
            cell_u[i * NS + j] = (i - half) * ds
            cell_v[i * NS + j] = (j - half) * ds
    farthest = np.empty(NS * NS)
    farthest_edge = np.zeros(NS * NS, np.int64)
    acc = np.zeros((nd, NS * NS))  # bin-major: a row of cells is contiguous
    cd = np.zeros(nd)
    n_q = direction_table.shape[0] - 1
    q_scale = n_q / (2.0 * math.pi)
    gi = np.zeros(NS)
    gj = np.zeros(NS)
    cell_valid = np.zeros(NS * NS, np.bool_)
    for m in range(n):
        c = math.cos(angle[m])
        s = math.sin(angle[m])
        neighbours = 0
        for t in range(n):
            if t != m and (x[t] - x[m]) ** 2 + (y[t] - y[m]) ** 2 <= neighbour_reach2:
                neighbours += 1
        if neighbours < min_m:
            continue
        n_valid = 0
        if hx.shape[0] >= 3:
            # Signed distances of every cell centre to each edge's line, cells innermost
            # (vectorised), keeping the largest and its edge. A centre is inside when none
            # is positive, and out of reach when the largest exceeds omega (the distance
            # to the polygon is at least that). Otherwise, when the centre projects onto
            # that edge itself, the largest is the distance; only centres off a corner
            # need the exact test.
            farthest[:] = -np.inf
            for e in range(hx.shape[0]):
                base = normals[e, 0] * x[m] + normals[e, 1] * y[m] - normals[e, 2]
                if base + radius < 0.0:
                    # every cell within the radius is inside this edge: it can neither
                    # put a cell outside nor be the farthest edge of one that is
                    continue
                along_u = normals[e, 0] * c + normals[e, 1] * s
                along_v = normals[e, 1] * c - normals[e, 0] * s
                for cell in range(NS * NS):
                    d = base + cell_u[cell] * along_u + cell_v[cell] * along_v
                    nearer = d > farthest[cell]
                    farthest[cell] = d if nearer else farthest[cell]
                    farthest_edge[cell] = e if nearer else farthest_edge[cell]
            for cell in range(NS * NS):
                inside = within[cell] & (farthest[cell] <= 0.0)
                if within[cell] and not inside and farthest[cell] <= omega:
                    px = x[m] + cell_u[cell] * c - cell_v[cell] * s
                    py = y[m] + cell_u[cell] * s + cell_v[cell] * c
                    e = farthest_edge[cell]
                    f = e + 1 if e + 1 < hx.shape[0] else 0
                    ex = hx[f] - hx[e]
                    ey = hy[f] - hy[e]
                    along = (px - hx[e]) * ex + (py - hy[e]) * ey
                    inside = (0.0 <= along <= ex * ex + ey * ey) or _near_facing_edges(
                        px, py, hx, hy, normals, omega2
                    )
                cell_valid[cell] = inside
                n_valid += 1 if inside else 0
        else:
            for cell in range(NS * NS):
                cell_valid[cell] = within[cell] and _near_small_hull(
                    x[m] + cell_u[cell] * c - cell_v[cell] * s,
                    y[m] + cell_u[cell] * s + cell_v[cell] * c, hx, hy, omega2,
                )
                n_valid += 1 if cell_valid[cell] else 0
        if n_valid < min_vc * n_within:
            continue
        ok[m] = True
        acc[:, :] = 0.0
        for t in range(n):
            if t == m:
                continue
            rx = x[t] - x[m]
            ry = y[t] - y[m]
            if rx * rx + ry * ry > neighbour_reach2:
                continue
            # neighbour position in cell-index units of this cylinder's frame
            lu = (rx * c + ry * s) / ds + half
            lv = (-rx * s + ry * c) / ds + half
            # the directional contribution of each bin depends on the angle difference
            # alone: read from the table, linearly between its steps
            pos = (_wrap(angle[m] - angle[t]) + math.pi) * q_scale
            q = min(int(pos), n_q - 1)
            f = pos - q
            for k in range(nd):
                low = direction_table[q, k]
                cd[k] = low + f * (direction_table[q + 1, k] - low)
            i0 = max(0, int(math.ceil(lu - reach / ds)))
            i1 = min(NS - 1, int(math.floor(lu + reach / ds)))
            j0 = max(0, int(math.ceil(lv - reach / ds)))
            j1 = min(NS - 1, int(math.floor(lv + reach / ds)))
            # The Gaussian is separable, a factor per row and per column, and along a row
            # exp(-c (i - lu)^2) steps by a ratio that itself steps by exp(-2c): two exps
            # per axis instead of one per cell.
            _gaussian_steps(i0, i1, lu, ds * ds * inv_2s2, step_ratio, gs_norm, gi)
            _gaussian_steps(j0, j1, lv, ds * ds * inv_2s2, step_ratio, 1.0, gj)
            for i in range(i0, i1 + 1):
                # the row's cells within the reach form one interval: no test per cell
                # (contributions to invalid cells are masked off below)
                rest = reach_cells2 - (i - lu) ** 2
                if rest < 0.0:
                    continue
                half_width = math.sqrt(rest)
                ja = max(j0, int(math.ceil(lv - half_width)))
                jb = min(j1, int(math.floor(lv + half_width)))
                for j in range(ja, jb + 1):
                    g = gi[i - i0] * gj[j - j0]
                    for k in range(nd):
                        acc[k, i * NS + j] += g * cd[k]
        # words assembled bit by bit without branches (which cells are set is unpredictable)
        for word in range(SPATIAL_WORDS):
            mask = np.uint64(0)
            for b in range(64):
                mask |= np.uint64(cell_valid[word * 64 + b]) << np.uint64(b)
            valid[m, word] = mask
            for k in range(nd):
                set_bits = np.uint64(0)
                for b in range(64):
                    set_bits |= np.uint64(acc[k, word * 64 + b] >= mu_psi) << np.uint64(b)
                bits[m, k * SPATIAL_WORDS + word] = set_bits & mask


@numba.njit(cache=True, nogil=True, parallel=True)
def build_cylinders_batch(
    x: np.ndarray,
    y: np.ndarray,
    angle: np.ndarray,
    offsets: np.ndarray,
    radius: float,
    nd: int,
    sigma_s: float,
    sigma_d: float,
    mu_psi: float,
    omega: float,
    min_vc: float,
    min_m: int,
    direction_table: np.ndarray,
    bits: np.ndarray,
    valid: np.ndarray,
    ok: np.ndarray,
) -> None:
    """:func:`build_cylinders` for many templates at once, in parallel over templates;
    template g owns rows offsets[g]:offsets[g + 1] of every array."""
    for g in numba.prange(offsets.shape[0] - 1):
        a = offsets[g]
        b = offsets[g + 1]
        build_cylinders(
            x[a:b], y[a:b], angle[a:b], radius, nd, sigma_s, sigma_d, mu_psi, omega, min_vc,
            min_m, direction_table, bits[a:b], valid[a:b], ok[a:b],
        )


DIRECTION_STEPS = 4096  # table steps over 2*pi: linear interpolation errs by < 1e-7


@functools.lru_cache(maxsize=8)
def direction_table(nd: int, sigma_d: float, steps: int = DIRECTION_STEPS) -> np.ndarray:
    """(steps + 1, nd): each directional bin's contribution for angle differences
    -pi + q * 2*pi / steps (the Gaussian of sigma_d integrated over the bin, by erf).

    The table replaces 6-7 erf calls per neighbour in :func:`build_cylinders`; ISO
    templates' angles fall on its steps (256 per turn), so they read exact values.
    """
    width = 2.0 * math.pi / nd
    scale = 1.0 / (sigma_d * math.sqrt(2.0))
    table = np.zeros((steps + 1, nd))
    for q in range(steps + 1):
        dtheta = -math.pi + q * 2.0 * math.pi / steps
        for k in range(nd):
            centre = (k + 0.5) * width - dtheta  # bin centre minus the difference
            centre = (centre % (2.0 * math.pi)) - math.pi
            table[q, k] = 0.5 * (math.erf((centre + width / 2.0) * scale)
                                 - math.erf((centre - width / 2.0) * scale))
    table.setflags(write=False)
    return table


def make_sketches(bits: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coarse 8 x 8 x nd sketches of cylinders, for the matcher's cheap stage.

    Each 2 x 2 block of spatial cells becomes one cell: its bit is set if any of the four
    has it, and it is valid if any of the four is. Returns ``(sketch, density)``:
    ``sketch`` (n, 1 + nd) uint64 holds the validity in word 0 and directional bin k in
    word 1 + k; ``density`` (n, 2) float64 is set bits per valid coarse cell, and its root.
    """
    n = bits.shape[0]
    sketch = np.zeros((n, 1 + bits.shape[1] // SPATIAL_WORDS), np.uint64)
    pool_sketches(np.ascontiguousarray(bits), np.ascontiguousarray(valid), sketch)
    return sketch, bit_density(sketch[:, 1:], sketch[:, :1])


def bit_density(bits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n, 2): set bits per valid cell of each row, and its square root."""
    cells = np.bitwise_count(valid).sum(axis=1)
    density = np.bitwise_count(bits).sum(axis=1) / np.maximum(cells, 1)
    return np.stack([density, np.sqrt(density)], axis=1)


class Cylinders(NamedTuple):
    """Valid cylinders of one template, sorted by minutia direction."""

    bits: np.ndarray  # (n, 4*nd) uint64
    valid: np.ndarray  # (n, 4) uint64
    x: np.ndarray  # (n,) float32, mathematical orientation (y up)
    y: np.ndarray  # (n,) float32
    angle: np.ndarray  # (n,) float32, radians in [0, 2*pi), ascending


def make_cylinders(
    x: np.ndarray, y: np.ndarray, angle: np.ndarray, params: CylinderParams | None = None
) -> Cylinders:
    """Valid cylinders for minutiae in image coordinates (y down) at 500 ppi.

    Invalid cylinders are dropped; the rest are sorted by direction so that the angle
    gate of the matcher selects a contiguous run of them.
    """
    params = params or CylinderParams()
    n = int(np.shape(x)[0])
    mx = np.ascontiguousarray(x, dtype=np.float64)
    my = -np.ascontiguousarray(y, dtype=np.float64)
    ma = np.mod(np.ascontiguousarray(angle, dtype=np.float64), 2.0 * math.pi)
    bits = np.zeros((n, params.words), np.uint64)
    valid = np.zeros((n, SPATIAL_WORDS), np.uint64)
    ok = np.zeros(n, np.bool_)
    build_cylinders(
        mx, my, ma, float(params.radius), int(params.nd), float(params.sigma_s),
        float(params.sigma_d), float(params.mu_psi), float(params.omega),
        float(params.min_vc), int(params.min_m), direction_table(params.nd, params.sigma_d),
        bits, valid, ok,
    )
    keep = np.flatnonzero(ok)
    keep = keep[np.argsort(ma[keep], kind="stable")]
    return Cylinders(
        bits=np.ascontiguousarray(bits[keep]),
        valid=np.ascontiguousarray(valid[keep]),
        x=mx[keep].astype(np.float32),
        y=my[keep].astype(np.float32),
        angle=ma[keep].astype(np.float32),
    )


def make_cylinders_batch(
    templates_xy_angle: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    params: CylinderParams | None = None,
) -> tuple[Cylinders, np.ndarray]:
    """:func:`make_cylinders` of many templates (x, y, angle each), built in parallel.

    Returns every template's valid cylinders concatenated in template order, each run
    sorted by direction exactly as :func:`make_cylinders` sorts it, and the (G + 1,)
    offsets of the runs.
    """
    params = params or CylinderParams()
    counts = np.array([len(t[0]) for t in templates_xy_angle], np.int64)
    offsets = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    if total:
        mx = np.concatenate([np.asarray(t[0], np.float64) for t in templates_xy_angle])
        my = -np.concatenate([np.asarray(t[1], np.float64) for t in templates_xy_angle])
        ma = np.mod(np.concatenate([np.asarray(t[2], np.float64) for t in templates_xy_angle]),
                    2.0 * math.pi)
    else:
        mx = my = ma = np.zeros(0)
    bits = np.zeros((total, params.words), np.uint64)
    valid = np.zeros((total, SPATIAL_WORDS), np.uint64)
    ok = np.zeros(total, np.bool_)
    build_cylinders_batch(
        mx, my, ma, offsets, float(params.radius), int(params.nd), float(params.sigma_s),
        float(params.sigma_d), float(params.mu_psi), float(params.omega),
        float(params.min_vc), int(params.min_m), direction_table(params.nd, params.sigma_d),
        bits, valid, ok,
    )
    owner = np.repeat(np.arange(counts.size), counts)
    keep = np.flatnonzero(ok)
    # by template, then direction; lexsort is stable, so ties keep minutia order as in
    # make_cylinders
    keep = keep[np.lexsort((ma[keep], owner[keep]))]
    kept_offsets = np.zeros(counts.size + 1, np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=counts.size), out=kept_offsets[1:])
    return Cylinders(
        bits=np.ascontiguousarray(bits[keep]),
        valid=np.ascontiguousarray(valid[keep]),
        x=mx[keep].astype(np.float32),
        y=my[keep].astype(np.float32),
        angle=ma[keep].astype(np.float32),
    ), kept_offsets
