"""Minutia directions: the orientation field's angle, its sign chosen by the skeleton.

ISO/IEC 19794-2 and INCITS 378 place both kinds on the fork of a "Y" (of the valley for
a ridge ending, of the ridge for a bifurcation) and point the direction along the gap
between the two arms of that Y. So a ridge ending points from its end point into the
ridge body, and a bifurcation points away from its stem, between its two branches;
tonally reversing the image keeps every direction.

The orientation field gives a smooth, precise axis (mod pi); the traced branches only
choose which way along that axis, which is robust where a skeleton pixel path is not.
The result is an ISO angle: radians in [0, 2 pi), counter-clockwise as seen on the image,
direction vector (cos a, -sin a) in image coordinates.
"""

from __future__ import annotations

import numpy as np

from gateway.extraction.minutiae_detection import Candidates
from gateway.extraction.skeleton_tracing import BranchTraces
from matcher.template import MinutiaKind


def minutia_directions(
    cands: Candidates, traces: BranchTraces, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction vectors (dx, dy) in image coordinates (y down), one per candidate."""
    t = theta[cands.y, cands.x].astype(np.float64)
    ux, uy = np.cos(t), np.sin(t)
    bx = traces.dir_x.astype(np.float64)
    by = traces.dir_y.astype(np.float64)
    norm = np.hypot(bx, by)
    norm[norm == 0] = 1.0
    used = np.arange(bx.shape[1])[None, :] < traces.count[:, None]
    # Sum of unit branch vectors: an ending's single branch points into the ridge; for a
    # bifurcation the two arms outweigh the opposite stem, so the sum points between them.
    sx = np.where(used, bx / norm, 0.0).sum(axis=1)
    sy = np.where(used, by / norm, 0.0).sum(axis=1)
    is_bif = cands.kind == MinutiaKind.BIFURCATION
    # A bifurcation's arms and stem are not symmetric around the field axis when the fork
    # is wide; the stem alone is the stable cue: the direction is away from it.
    stem_x, stem_y = _stem_vectors(bx / norm, by / norm, traces.count)
    use_stem = is_bif & (traces.count >= 3)
    sx = np.where(use_stem, -stem_x, sx)
    sy = np.where(use_stem, -stem_y, sy)
    sign = np.where(ux * sx + uy * sy >= 0.0, 1.0, -1.0)
    return ux * sign, uy * sign


def iso_angle(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """ISO angle in [0, 2 pi) of image-coordinate direction vectors (y down)."""
    return np.mod(np.arctan2(-dy, dx), 2.0 * np.pi)


def _stem_vectors(
    bx: np.ndarray, by: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per bifurcation, the branch farthest in angle from the other two (its stem)."""
    n = bx.shape[0]
    stem_x = np.zeros(n)
    stem_y = np.zeros(n)
    full = count >= 3
    if not full.any():
        return stem_x, stem_y
    x3, y3 = bx[full, :3], by[full, :3]
    # cos between branch pairs; the stem is the branch whose best partner is worst.
    best_partner = np.full((x3.shape[0], 3), -2.0)
    for a in range(3):
        for b in range(3):
            if a != b:
                best_partner[:, a] = np.maximum(
                    best_partner[:, a], x3[:, a] * x3[:, b] + y3[:, a] * y3[:, b]
                )
    stem = np.argmin(best_partner, axis=1)
    rows = np.arange(x3.shape[0])
    stem_x[full] = x3[rows, stem]
    stem_y[full] = y3[rows, stem]
    return stem_x, stem_y
