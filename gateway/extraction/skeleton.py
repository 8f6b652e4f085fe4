"""Binarisation of the enhanced image and thinning to a one-pixel ridge skeleton."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.morphology import skeletonize

from gateway.extraction.params import ExtractionParams


def binarise(enhanced: np.ndarray, mask: np.ndarray, params: ExtractionParams) -> np.ndarray:
    """Ridge pixels (True) where the enhanced response is positive inside the mask.

    Tiny ridge fragments and tiny valley holes are removed: both thin into false
    endings, islands and lakes.
    """
    ridges = ((enhanced > 0) & mask).astype(np.uint8)
    ridges = _drop_small_components(ridges, params.min_blob_area)
    holes = _drop_small_components((1 - ridges) * mask.astype(np.uint8), params.min_blob_area)
    return (mask & (holes == 0)).astype(bool)


def thin(ridges: np.ndarray) -> np.ndarray:
    """One-pixel-wide, 8-connected skeleton of the ridge map as uint8 0/1."""
    return skeletonize(ridges).astype(np.uint8)


def _drop_small_components(binary: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return binary
    keep = np.zeros(n, np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]
