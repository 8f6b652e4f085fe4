"""Binarisation of the enhanced image and thinning to a one-pixel ridge skeleton."""

from __future__ import annotations

import numpy as np
from skimage.morphology import skeletonize

from gateway.extraction.connected_runs import components, paint
from gateway.extraction.params import ExtractionParams


def binarise(enhanced: np.ndarray, mask: np.ndarray, params: ExtractionParams) -> np.ndarray:
    """Ridge pixels (True) where the enhanced response is positive inside the mask.

    Tiny ridge fragments and tiny valley holes are removed: both thin into false
    endings, islands and lakes.
    """
    inside = mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)
    ridges = np.greater(enhanced, 0).view(np.uint8)
    ridges &= inside
    _drop_small_components(ridges, params.min_blob_area)
    valleys = np.subtract(inside, ridges)  # 1 - ridge inside the mask, 0 outside
    _drop_small_components(valleys, params.min_blob_area)
    np.subtract(inside, valleys, out=valleys)
    return valleys.view(bool)


def thin(ridges: np.ndarray) -> np.ndarray:
    """One-pixel-wide, 8-connected skeleton of the ridge map as uint8 0/1."""
    skeleton = np.zeros(ridges.shape, np.uint8)
    rows, cols = np.flatnonzero(ridges.any(1)), np.flatnonzero(ridges.any(0))
    if rows.size:
        # Thinning sweeps its whole input every pass: give it the ridges' box only (it
        # treats what lies beyond its input as background, as the empty rest is).
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        skeleton[box] = skeletonize(ridges[box])
    return skeleton


def _drop_small_components(binary: np.ndarray, min_area: int) -> None:
    """Clear, in place, the 8-connected components of a 0/1 uint8 image smaller than
    ``min_area`` pixels."""
    found = components(binary, 1, eight_connected=True)
    paint(binary, found, found.area < min_area, 0)
