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

from matcher.popcount import popcount64

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
    """(h, 4): unit outward normal, offset and length of each edge of a counter-clockwise
    polygon, so that ``nx * px + ny * py - offset`` is a point's signed distance to the
    edge's line (the edge's unit direction is ``(-ny, nx)``)."""
    h = hx.shape[0]
    out = np.zeros((h, 4))
    for e in range(h):
        f = e + 1 if e + 1 < h else 0
        ex = hx[f] - hx[e]
        ey = hy[f] - hy[e]
        length = math.sqrt(ex * ex + ey * ey)
        if length > 0.0:
            out[e, 0] = ey / length
            out[e, 1] = -ex / length
            out[e, 2] = out[e, 0] * hx[e] + out[e, 1] * hy[e]
            out[e, 3] = length
    return out


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
    for k in range(np.uint64(max(0, k1 - k0 + 1))):
        out[k] = value
        value *= ratio
        ratio *= step_ratio


@numba.njit(cache=True, nogil=True, inline="always")
def _widen(lo: float, hi: float, piece_lo: float, piece_hi: float) -> tuple[float, float]:
    """The union of an interval and a piece of it known to touch it (both maybe empty)."""
    if piece_lo > piece_hi:
        return lo, hi
    if lo > hi:
        return piece_lo, piece_hi
    return min(lo, piece_lo), max(hi, piece_hi)


@numba.njit(cache=True, nogil=True, inline="always")
def _limit(lo: float, hi: float, a: float, b: float, inv_b: float) -> tuple[float, float]:
    """``[lo, hi]`` cut to the ``v`` where ``a + b * v <= 0`` (``inv_b`` = 1 / b, or 0)."""
    if b > 0.0:
        hi = min(hi, -a * inv_b)
    elif b < 0.0:
        lo = max(lo, -a * inv_b)
    elif a > 0.0:
        hi = lo - 1.0
    return lo, hi


@numba.njit(cache=True, nogil=True)
def valid_rows(
    mx: float, my: float, c: float, s: float, hx: np.ndarray, hy: np.ndarray,
    normals: np.ndarray, radius: float, omega: float, ds: float,
    within_lo: np.ndarray, within_hi: np.ndarray, terms: np.ndarray,
    row_lo: np.ndarray, row_hi: np.ndarray,
) -> int:
    """Fill ``row_lo[i]..row_hi[i]``, the valid cells of each row of the cylinder of the
    minutia at ``(mx, my)`` with direction ``(c, s)``; returns how many there are.

    A cell is valid when its centre is within the radius (``within_lo..within_hi`` of the
    row) and within ``omega`` of the convex hull. That set is convex, so each row's valid
    cells are one run: where the row's line meets the hull, or the capsule (the points
    within omega) of an edge whose line passes within the radius. A point within the
    radius outside the hull is nearest to such an edge, and the other edges' half-planes
    hold every point within the radius, so the other edges are skipped. Each term is
    linear in the row (``terms``, scratch of at least (h, 17)), so a row costs a few
    multiply-adds and one root per edge. A hull of one or two vertices has no inside:
    its vertices' discs and its segment are all there is.
    """
    h = hx.shape[0]
    half = (NS - 1) / 2.0
    omega2 = omega * omega
    reach2 = (radius + omega) ** 2
    dx = -s  # along a row: across the minutia
    dy = c
    n_rel = 0
    for e in range(h):
        base = normals[e, 0] * mx + normals[e, 1] * my - normals[e, 2]
        if h >= 3 and base + radius < 0.0:
            continue
        wx = mx - hx[e]
        wy = my - hy[e]
        ux, uy, length = -normals[e, 1], normals[e, 0], normals[e, 3]
        t = terms[n_rel]
        # inside the edge's half-plane: base + u (n . dir) + v (n . d) <= 0
        t[0] = base
        t[1] = normals[e, 0] * c + normals[e, 1] * s
        t[2] = normals[e, 0] * dx + normals[e, 1] * dy
        # within the vertex's disc: v^2 + 2 v (w . d) + |w + u dir|^2 - omega^2 <= 0,
        # and w . d does not change along the minutia's direction
        t[3] = wx * dx + wy * dy
        t[4] = wx * c + wy * s
        t[5] = wx * wx + wy * wy
        # beside the edge (0 <= along <= length, |across| <= omega)
        t[6] = wx * ux + wy * uy
        t[7] = c * ux + s * uy
        t[8] = dx * ux + dy * uy
        t[9] = wx * uy - wy * ux
        t[10] = c * uy - s * ux
        t[11] = dx * uy - dy * ux
        t[12] = length
        t[13] = 0.0 if t[2] == 0.0 else 1.0 / t[2]
        t[14] = 0.0 if t[8] == 0.0 else 1.0 / t[8]
        t[15] = 0.0 if t[11] == 0.0 else 1.0 / t[11]
        # the squared distance from the minutia to the edge
        along = min(length, max(0.0, t[6]))
        t[16] = (wx - along * ux) ** 2 + (wy - along * uy) ** 2
        n_rel += 1
    count = 0
    for i in range(NS):
        row_lo[i] = within_lo[i]
        row_hi[i] = within_hi[i]
        if within_lo[i] > within_hi[i]:
            continue
        if n_rel == 0:  # far inside the hull
            count += within_hi[i] - within_lo[i] + 1
            continue
        u = (i - half) * ds
        chord_lo = (within_lo[i] - half) * ds
        chord_hi = (within_hi[i] - half) * ds
        lo, hi = chord_lo, chord_lo - 1.0  # the union of the pieces, empty so far
        if h >= 3:
            in_lo, in_hi = chord_lo, chord_hi
            for r in range(n_rel):
                t = terms[r]
                in_lo, in_hi = _limit(in_lo, in_hi, t[0] + u * t[1], t[2], t[13])
            if in_lo <= chord_lo and in_hi >= chord_hi:  # the whole row is inside
                count += within_hi[i] - within_lo[i] + 1
                continue
            lo, hi = _widen(lo, hi, in_lo, in_hi)
        for r in range(n_rel):
            t = terms[r]
            if t[16] > reach2:  # the edge's capsule is out of reach of every cell
                continue
            b = t[3]
            disc = b * b - (t[5] + u * (2.0 * t[4] + u)) + omega2
            if disc >= 0.0:
                root = math.sqrt(disc)
                lo, hi = _widen(lo, hi, max(chord_lo, -b - root), min(chord_hi, -b + root))
            if t[12] == 0.0:
                continue
            along = t[6] + u * t[7]
            across = t[9] + u * t[10]
            piece_lo, piece_hi = _limit(chord_lo, chord_hi, -along, -t[8], -t[14])
            piece_lo, piece_hi = _limit(piece_lo, piece_hi, along - t[12], t[8], t[14])
            piece_lo, piece_hi = _limit(piece_lo, piece_hi, across - omega, t[11], t[15])
            piece_lo, piece_hi = _limit(piece_lo, piece_hi, -across - omega, -t[11], -t[15])
            lo, hi = _widen(lo, hi, piece_lo, piece_hi)
        if lo > hi:
            row_lo[i], row_hi[i] = 0, -1
            continue
        row_lo[i] = max(within_lo[i], int(math.ceil(lo / ds + half)))
        row_hi[i] = min(within_hi[i], int(math.floor(hi / ds + half)))
        count += max(0, row_hi[i] - row_lo[i] + 1)
    return count


@numba.njit(cache=True, nogil=True, inline="always")
def _interpolate_row(table, q, f, out):
    """out = table[q] + f * (table[q + 1] - table[q]) (unsigned q)."""
    for k in range(out.shape[0]):
        low = table[q, k]
        out[k] = low + f * (table[q + np.uint64(1), k] - low)


@numba.njit(cache=True, nogil=True, inline="always")
def _accumulate_row(flat, cd, g_row, gj, j0, row, ja, jb, nd):
    """Add one neighbour's contributions to the cells ja..jb-1 of one row (unsigned
    indices: Numba adds a negative-index fix-up to every signed one)."""
    plane = np.uint64(NS * NS)
    for j in range(ja, jb):
        g = g_row * gj[j - j0]
        cell = row + j
        for k in range(nd):
            flat[cell + k * plane] += g * cd[k]


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
    terms = np.empty((hx.shape[0], 17))
    ds = 2.0 * radius / NS
    half = (NS - 1) / 2.0
    reach = 3.0 * sigma_s
    reach_cells2 = (reach / ds) ** 2
    gs_norm = 1.0 / (sigma_s * math.sqrt(2.0 * math.pi))
    inv_2s2 = 1.0 / (2.0 * sigma_s * sigma_s)
    step_ratio = math.exp(-2.0 * ds * ds * inv_2s2)
    neighbour_reach2 = (radius + reach) ** 2
    # each row's cells whose centre lies within the radius: the same for every cylinder
    r_cells = radius / ds
    within_lo = np.zeros(NS, np.int64)
    within_hi = np.full(NS, -1, np.int64)
    n_within = 0
    for i in range(NS):
        for j in range(NS):
            if (i - half) ** 2 + (j - half) ** 2 <= r_cells * r_cells:
                if within_hi[i] < within_lo[i]:
                    within_lo[i] = j
                within_hi[i] = j
                n_within += 1
    row_lo = np.zeros(NS, np.int64)
    row_hi = np.zeros(NS, np.int64)
    acc = np.zeros((nd, NS * NS))  # bin-major: a row of cells is contiguous
    flat = acc.reshape(nd * NS * NS)
    cd = np.zeros(nd)
    n_q = direction_table.shape[0] - 1
    q_scale = n_q / (2.0 * math.pi)
    gi = np.zeros(NS)
    gj = np.zeros(NS)
    for m in range(n):
        c = math.cos(angle[m])
        s = math.sin(angle[m])
        neighbours = 0
        for t in range(n):
            if t != m and (x[t] - x[m]) ** 2 + (y[t] - y[m]) ** 2 <= neighbour_reach2:
                neighbours += 1
        if neighbours < min_m:
            continue
        n_valid = valid_rows(x[m], y[m], c, s, hx, hy, normals, radius, omega, ds,
                             within_lo, within_hi, terms, row_lo, row_hi)
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
            _interpolate_row(direction_table, np.uint64(q), f, cd)
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
                # the row's cells within the reach form one interval, and so do its valid
                # cells: no test per cell, and nothing spent on invalid ones
                rest = reach_cells2 - (i - lu) ** 2
                if rest < 0.0:
                    continue
                half_width = math.sqrt(rest)
                ja = max(max(j0, row_lo[i]), int(math.ceil(lv - half_width)))
                jb = min(min(j1, row_hi[i]), int(math.floor(lv + half_width)))
                _accumulate_row(flat, cd, gi[i - i0], gj, np.uint64(j0), np.uint64(i * NS),
                                np.uint64(ja), np.uint64(max(ja, jb + 1)), np.uint64(nd))
        # words assembled bit by bit without branches (which cells are set is unpredictable)
        for word in range(SPATIAL_WORDS):
            mask = np.uint64(0)
            for r in range(4):  # a word holds four rows of 16 cells
                i = 4 * word + r
                if row_lo[i] <= row_hi[i]:
                    run = (np.uint64(1) << np.uint64(row_hi[i] - row_lo[i] + 1)) - np.uint64(1)
                    mask |= run << np.uint64(16 * r + row_lo[i])
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
    out = np.empty((bits.shape[0], 2))
    fill_bit_density(np.ascontiguousarray(bits), np.ascontiguousarray(valid), out)
    return out


@numba.njit(cache=True, nogil=True)
def fill_bit_density(bits: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
    """:func:`bit_density` into ``out``."""
    for r in range(bits.shape[0]):
        cells = 0
        for w in range(valid.shape[1]):
            cells += popcount64(valid[r, w])
        ones = 0
        for w in range(bits.shape[1]):
            ones += popcount64(bits[r, w])
        density = ones / max(cells, 1)
        out[r, 0] = density
        out[r, 1] = math.sqrt(density)


@numba.njit(cache=True, nogil=True)
def compact_by_direction(angle: np.ndarray, ok: np.ndarray, offsets: np.ndarray,
                         bits: np.ndarray, valid: np.ndarray, x: np.ndarray, y: np.ndarray,
                         a: np.ndarray, kept_offsets: np.ndarray) -> None:
    """Keep the rows of the valid cylinders (``ok``), in place: template by template, each
    template's in ascending direction, ties in row order (an insertion sort: templates are
    short). ``bits``, ``valid``, ``x``, ``y`` and ``a`` are rearranged alike;
    ``kept_offsets`` receives the runs. Kept rows only move up, so no template overwrites
    one not yet read."""
    order = np.empty(max(1, np.max(offsets[1:] - offsets[:-1])), np.int64)
    k = 0
    kept_offsets[0] = 0
    for g in range(offsets.shape[0] - 1):
        n = 0
        for row in range(offsets[g], offsets[g + 1]):
            if not ok[row]:
                continue
            at = n
            while at > 0 and angle[order[at - 1]] > angle[row]:
                order[at] = order[at - 1]
                at -= 1
            order[at] = row
            n += 1
        rows = order[:n]
        _move_rows(bits, rows, k)
        _move_rows(valid, rows, k)
        _move_rows(x, rows, k)
        _move_rows(y, rows, k)
        _move_rows(a, rows, k)
        k += n
        kept_offsets[g + 1] = k


@numba.njit(cache=True, nogil=True, inline="always")
def _move_rows(column: np.ndarray, rows: np.ndarray, to: int) -> None:
    """column[to + i] = column[rows[i]] for rows ascending or permuted within a run that
    starts at or after ``to`` (read first, then written)."""
    moved = column[rows].copy()
    column[to:to + rows.shape[0]] = moved


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
        # concatenated as they come (float32, usually), then widened once
        mx = np.concatenate([t[0] for t in templates_xy_angle]).astype(np.float64)
        my = -np.concatenate([t[1] for t in templates_xy_angle]).astype(np.float64)
        ma = np.mod(np.concatenate([t[2] for t in templates_xy_angle]).astype(np.float64),
                    2.0 * math.pi)
    else:
        mx = my = ma = np.zeros(0)
    bits = np.empty((total, params.words), np.uint64)  # the kernel clears them
    valid = np.empty((total, SPATIAL_WORDS), np.uint64)
    ok = np.empty(total, np.bool_)
    build_cylinders_batch(
        mx, my, ma, offsets, float(params.radius), int(params.nd), float(params.sigma_s),
        float(params.sigma_d), float(params.mu_psi), float(params.omega),
        float(params.min_vc), int(params.min_m), direction_table(params.nd, params.sigma_d),
        bits, valid, ok,
    )
    # by template, then direction; ties keep minutia order as in make_cylinders
    kept_offsets = np.zeros(counts.size + 1, np.int64)
    if total:
        compact_by_direction(ma.copy(), ok, offsets, bits, valid, mx, my, ma, kept_offsets)
    kept = int(kept_offsets[-1])
    # the dropped rows' room stays at the end of the arrays (a tenth or so) rather than
    # the kept rows being copied once more into fresh memory
    return Cylinders(
        bits=bits[:kept],
        valid=valid[:kept],
        x=mx[:kept].astype(np.float32),
        y=my[:kept].astype(np.float32),
        angle=ma[:kept].astype(np.float32),
    ), kept_offsets
