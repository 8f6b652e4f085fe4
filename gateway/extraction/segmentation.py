"""Segmentation: which part of the image is finger, as a boolean mask.

A pixel is foreground when its neighbourhood has enough gradient energy and that energy
is oriented (coherent) the way ridges are; blocks decide, then morphology keeps one
solid region. A blank or pure-noise image yields an empty mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from gateway.extraction.orientation import GradientTensor
from gateway.extraction.params import ExtractionParams


def segmentation_mask(tensor: GradientTensor, params: ExtractionParams) -> np.ndarray:
    """Boolean foreground mask in the working frame."""
    energy = tensor.energy
    coherence = tensor.coherence
    h, w = energy.shape
    b = params.segment_block
    bh, bw = max(1, h // b), max(1, w // b)
    # Block means, then a smooth upsampling, make the decision robust to single pores.
    e_blocks = cv2.resize(energy, (bw, bh), interpolation=cv2.INTER_AREA)
    c_blocks = cv2.resize(coherence, (bw, bh), interpolation=cv2.INTER_AREA)
    # The energy scale is the image's own: rel_threshold of its strong-ridge level, with an
    # absolute floor so that a blank image does not promote its faint noise to ridges.
    ridge_level = float(np.percentile(e_blocks, 95))
    threshold = max(params.segment_rel_threshold * ridge_level, params.segment_abs_threshold**2)
    blocks = (e_blocks > threshold) & (c_blocks > params.segment_min_coherence)
    mask = cv2.resize(blocks.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    r = params.segment_close_radius
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return _largest_regions_filled(mask, params.segment_min_area_px)


def _largest_regions_filled(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Keep the largest component (and others nearly as large), with holes filled."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = int(areas.max())
    if best < min_area:
        return np.zeros(mask.shape, bool)
    keep = np.zeros(n, np.uint8)  # per label; a table lookup is cheaper than np.isin
    keep[1:] = areas >= max(min_area, best // 3)
    out = keep[labels]
    # Fill holes: flood the background from the border; what the flood misses is a hole.
    flood = np.pad(out, 1, constant_values=0)
    ff_mask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2)
