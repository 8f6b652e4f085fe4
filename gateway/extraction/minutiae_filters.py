"""Removal of false minutiae, each rule a small function returning what it rejects.

The rules follow the structure of the skeleton (spurs, short ridges, bridges and lakes,
broken ridges), the density of candidates (clusters, which mark smudges and scars) and
the segmentation (the rim of the print, where ridges are cut off by the sensor edge).
Every rule sees all candidates, so both ends of a false structure are found before the
rim rule drops anything.
"""

from __future__ import annotations

import cv2
import numpy as np
from numba import njit

from gateway.extraction.minutiae_detection import Candidates
from gateway.extraction.params import ExtractionParams
from gateway.extraction.skeleton_tracing import STOP_ENDING, STOP_JUNCTION, BranchTraces
from matcher.template import MinutiaKind


def candidate_index_map(cands: Candidates, shape: tuple[int, int]) -> np.ndarray:
    """int32 image holding each candidate's index at its pixel, -1 elsewhere."""
    index = np.full(shape, -1, np.int32)
    index[cands.y, cands.x] = np.arange(len(cands), dtype=np.int32)
    return index


def _candidates_at(index: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The candidate on or next to each pixel (junctions can be two pixels wide), or -1."""
    found = np.full(ys.shape, -1, np.int32)
    _first_candidate_around(index, ys.astype(np.int64), xs.astype(np.int64), found)
    return found


# Where a branch's end is looked for: the pixel itself first, then its 4- and 8-neighbours.
_AROUND_DY = np.array([0, 0, 1, 0, -1, 1, 1, -1, -1], np.int64)
_AROUND_DX = np.array([0, 1, 0, -1, 0, 1, -1, 1, -1], np.int64)


@njit(cache=True, nogil=True)
def _first_candidate_around(index: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                            found: np.ndarray) -> None:  # pragma: no cover
    h, w = index.shape
    for i in range(ys.shape[0]):
        for k in range(_AROUND_DY.shape[0]):
            # Clipped to the image, as a pixel on the edge has no neighbour beyond it.
            y = min(max(ys[i] + _AROUND_DY[k], 0), h - 1)
            x = min(max(xs[i] + _AROUND_DX[k], 0), w - 1)
            if index[y, x] >= 0:
                found[i] = index[y, x]
                break


def _structure_pairs(
    cands: Candidates, traces: BranchTraces, index: np.ndarray, stop_code: int,
    max_len: int, own_kind: int,
) -> np.ndarray:
    """Indices of candidates of ``own_kind`` whose branch stops with ``stop_code`` within
    ``max_len`` pixels, together with the candidate found where that branch stopped."""
    own = (cands.kind == own_kind)[:, None]
    used = np.arange(traces.stop.shape[1])[None, :] < traces.count[:, None]
    short = own & used & (traces.stop == stop_code) & (traces.length <= max_len)
    rows, cols = np.nonzero(short)
    if rows.size == 0:
        return np.zeros(0, np.int32)
    other = _candidates_at(index, traces.end_y[rows, cols], traces.end_x[rows, cols])
    return np.unique(np.concatenate([rows, other[other >= 0]])).astype(np.int32)


def spurs(cands: Candidates, traces: BranchTraces, index: np.ndarray,
          params: ExtractionParams) -> np.ndarray:
    """An ending whose ridge reaches a bifurcation within a few pixels: a hair on a ridge."""
    return _structure_pairs(cands, traces, index, STOP_JUNCTION, params.spur_length,
                            MinutiaKind.ENDING)


def short_ridges(cands: Candidates, traces: BranchTraces, index: np.ndarray,
                 params: ExtractionParams) -> np.ndarray:
    """Two endings joined by a ridge shorter than about a period: a dot or fragment."""
    return _structure_pairs(cands, traces, index, STOP_ENDING, params.short_ridge_length,
                            MinutiaKind.ENDING)


def bridges(cands: Candidates, traces: BranchTraces, index: np.ndarray,
            params: ExtractionParams) -> np.ndarray:
    """Two bifurcations joined by a short link: a bridge across a valley or a small lake."""
    return _structure_pairs(cands, traces, index, STOP_JUNCTION, params.bridge_length,
                            MinutiaKind.BIFURCATION)


def ridge_breaks(cands: Candidates, dx: np.ndarray, dy: np.ndarray,
                 params: ExtractionParams) -> np.ndarray:
    """Pairs of endings that face each other across a small gap: one interrupted ridge.

    An ending's direction points into its ridge, so the gap lies behind it (-d); both
    endings must have the other one behind them, within ``break_angle``.
    """
    ends = np.flatnonzero(cands.kind == MinutiaKind.ENDING)
    if ends.size < 2:
        return np.zeros(0, np.int32)
    facing = _facing_pairs(cands.x[ends].astype(np.float64), cands.y[ends].astype(np.float64),
                           np.ascontiguousarray(dx[ends], np.float64),
                           np.ascontiguousarray(dy[ends], np.float64),
                           float(params.break_distance), float(np.cos(params.break_angle)))
    return ends[facing].astype(np.int32)


@njit(cache=True, nogil=True)
def _facing_pairs(x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                  max_distance: float, cos_min: float) -> np.ndarray:  # pragma: no cover
    """Which endings have another within ``max_distance`` behind them that has them
    behind it too."""
    n = x.shape[0]
    facing = np.zeros(n, np.bool_)
    for i in range(n):
        for j in range(i + 1, n):
            vx = x[j] - x[i]
            vy = y[j] - y[i]
            dist = np.hypot(vx, vy)
            if not dist < max_distance:
                continue
            cos_i = -(vx * dx[i] + vy * dy[i]) / dist
            cos_j = -((x[i] - x[j]) * dx[j] + (y[i] - y[j]) * dy[j]) / dist
            if cos_i > cos_min and cos_j > cos_min:
                facing[i] = True
                facing[j] = True
    return facing


def clusters(cands: Candidates, params: ExtractionParams) -> np.ndarray:
    """Candidates crowded by many others: smudges, scars, creases and noise."""
    if len(cands) < 2:
        return np.zeros(0, np.int32)
    neighbours = _neighbour_counts(cands.x.astype(np.float64), cands.y.astype(np.float64),
                                   float(params.cluster_radius))
    return np.flatnonzero(neighbours >= params.cluster_count).astype(np.int32)


@njit(cache=True, nogil=True)
def _neighbour_counts(x: np.ndarray, y: np.ndarray,
                      radius: float) -> np.ndarray:  # pragma: no cover
    n = x.shape[0]
    count = np.zeros(n, np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            if np.hypot(x[i] - x[j], y[i] - y[j]) < radius:
                count[i] += 1
                count[j] += 1
    return count


def rim(cands: Candidates, mask: np.ndarray, params: ExtractionParams) -> np.ndarray:
    """Candidates on the rim of the print or off it: within ``border_margin`` of the
    background or of the image's edge.

    It is the erosion of the mask by a disc (OpenCV's ellipse of that radius), with the
    image's edge as background, read at the candidates only: a minutia or two hundred
    per print instead of every pixel.
    """
    r = int(round(params.border_margin))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    half_width = np.array([(np.flatnonzero(row).size - 1) // 2 for row in disc], np.int64)
    on_rim = _near_background(np.ascontiguousarray(mask, np.bool_), cands.y.astype(np.int64),
                              cands.x.astype(np.int64), half_width)
    return np.flatnonzero(on_rim).astype(np.int32)


@njit(cache=True, nogil=True)
def _near_background(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                     half_width: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Per point, whether the disc of rows ``half_width`` around it meets background;
    one pixel past the image's edge counts as background, farther ones do not count."""
    h, w = mask.shape
    r = half_width.shape[0] // 2
    out = np.zeros(ys.shape[0], np.bool_)
    for i in range(ys.shape[0]):
        for dy in range(-r, r + 1):
            y = ys[i] + dy
            if y < -1 or y > h:
                continue
            reach = half_width[dy + r]
            for x in range(max(xs[i] - reach, -1), min(xs[i] + reach, w) + 1):
                if y < 0 or y >= h or x < 0 or x >= w or not mask[y, x]:
                    out[i] = True
                    break
            if out[i]:
                break
    return out


def truncated_ridges(cands: Candidates, dx: np.ndarray, dy: np.ndarray, mask: np.ndarray,
                     params: ExtractionParams) -> np.ndarray:
    """Endings whose ridge runs on out of the print: cut by the sensor edge, not ended.

    An ending points into its ridge, so a true ending has finger behind it (-d); when
    the mask or the image ends within ``truncation_reach`` behind it, the ridge was cut.
    Endings beside the rim, with ridges running along it, are kept.
    """
    ends = np.flatnonzero(cands.kind == MinutiaKind.ENDING)
    if ends.size == 0:
        return np.zeros(0, np.int32)
    h, w = mask.shape
    cut = np.zeros(ends.size, bool)
    for step in np.arange(4.0, params.truncation_reach + 0.1, 4.0):
        px = np.round(cands.x[ends] - step * dx[ends]).astype(np.int64)
        py = np.round(cands.y[ends] - step * dy[ends]).astype(np.int64)
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        on_finger = np.zeros(ends.size, bool)
        on_finger[inside] = mask[py[inside], px[inside]]
        cut |= ~on_finger
    return ends[cut].astype(np.int32)
