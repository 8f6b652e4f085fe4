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
    h, w = index.shape
    found = np.full(ys.shape, -1, np.int32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        yy = np.clip(ys + dy, 0, h - 1)
        xx = np.clip(xs + dx, 0, w - 1)
        hit = index[yy, xx]
        found = np.where(found >= 0, found, hit)
    return found


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
    x = cands.x[ends].astype(np.float64)
    y = cands.y[ends].astype(np.float64)
    vx = x[None, :] - x[:, None]  # from i to j
    vy = y[None, :] - y[:, None]
    dist = np.hypot(vx, vy)
    np.fill_diagonal(dist, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_i = -(vx * dx[ends][:, None] + vy * dy[ends][:, None]) / dist
    cos_min = np.cos(params.break_angle)
    cos_j = cos_i.T  # the same test seen from the other ending
    facing = (dist < params.break_distance) & (cos_i > cos_min) & (cos_j > cos_min)
    return ends[np.unique(np.nonzero(facing)[0])].astype(np.int32)


def clusters(cands: Candidates, params: ExtractionParams) -> np.ndarray:
    """Candidates crowded by many others: smudges, scars, creases and noise."""
    if len(cands) < 2:
        return np.zeros(0, np.int32)
    x = cands.x.astype(np.float64)
    y = cands.y.astype(np.float64)
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    neighbours = (dist < params.cluster_radius).sum(axis=1) - 1
    return np.flatnonzero(neighbours >= params.cluster_count).astype(np.int32)


def inner_mask(mask: np.ndarray, params: ExtractionParams) -> np.ndarray:
    """The mask eroded by ``border_margin``, also away from the image edges."""
    m = np.pad(mask.astype(np.uint8), 1)  # so the image edge counts as background
    r = int(round(params.border_margin))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(m, kernel)[1:-1, 1:-1].astype(bool)


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


def outside_inner_mask(cands: Candidates, inner: np.ndarray) -> np.ndarray:
    """Candidates on the rim of the print or off it."""
    return np.flatnonzero(~inner[cands.y, cands.x]).astype(np.int32)
