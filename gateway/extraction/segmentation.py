"""Segmentation: which part of the image is finger, as a boolean mask.

A pixel is foreground when its neighbourhood has enough gradient energy and that energy
is oriented (coherent) the way ridges are; blocks decide, then morphology keeps one
solid region. A blank or pure-noise image yields an empty mask.
"""

from __future__ import annotations

import cv2
import numpy as np
from numba import njit

from gateway.extraction.connected_runs import components, paint
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
    disc = _Disc(params.segment_close_radius)
    mask = disc.dilate(disc.erode(disc.erode(disc.dilate(mask))))  # close, then open
    return _largest_regions_filled(mask, params.segment_min_area_px)


def _largest_regions_filled(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Keep the largest component (and others nearly as large), with holes filled."""
    finger = components(mask, 1, eight_connected=True)
    if finger.count == 0 or int(finger.area.max()) < min_area:
        return np.zeros(mask.shape, bool)
    out = np.zeros(mask.shape, np.uint8)
    paint(out, finger, finger.area >= max(min_area, int(finger.area.max()) // 3), 1)
    # Holes: background (4-connected, as a flood fill spreads) that does not reach the
    # image's edge.
    background = components(out, 0, eight_connected=False)
    paint(out, background, ~background.on_edge, 1)
    return out.view(bool)


class _Disc:
    """Binary dilation and erosion by OpenCV's ellipse of radius r, decomposed.

    The ellipse is a stack of centred rows, their half-widths growing towards the
    middle. Dilating every image row by each half-width in turn (small increments of a
    one-row kernel) and OR-ing each result into the output rows it serves gives exactly
    cv2.dilate with the ellipse (and erode with AND), pixels past the image's edge not
    counting, at half its cost: OpenCV runs a non-rectangular kernel point by point.
    """

    def __init__(self, r: int):
        ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        half = (ellipse.sum(axis=1).astype(np.int64) - 1) // 2
        self.steps = []  # (one-row kernel widening the last half-width, its row offsets)
        done = 0
        for width in np.unique(half):
            grow = int(width) - done
            kernel = np.ones((1, 2 * grow + 1), np.uint8) if grow else None
            self.steps.append((kernel, np.flatnonzero(half == width).astype(np.int64) - r))
            done = int(width)

    def dilate(self, image: np.ndarray) -> np.ndarray:
        """cv2.dilate(image, ellipse) of a 0/1 uint8 image."""
        return self._apply(image, cv2.dilate, False)

    def erode(self, image: np.ndarray) -> np.ndarray:
        """cv2.erode(image, ellipse) of a 0/1 uint8 image."""
        return self._apply(image, cv2.erode, True)

    def _apply(self, image: np.ndarray, row_op, erode: bool) -> np.ndarray:
        rows = image.copy()
        out = np.full(image.shape, 1 if erode else 0, np.uint8)
        for kernel, offsets in self.steps:
            if kernel is not None:
                row_op(rows, kernel, dst=rows)
            _combine_shifted_rows(rows, offsets, erode, out)
        return out


@njit(cache=True, nogil=True)
def _combine_shifted_rows(rows: np.ndarray, offsets: np.ndarray, erode: bool,
                          out: np.ndarray) -> None:  # pragma: no cover
    """out[y] &= (erode) or |= rows[y + d] for each offset d, rows past the edge skipped."""
    h, w = rows.shape
    for d in offsets:
        for y in range(max(0, -d), min(h, h - d)):
            src = rows[y + d]
            dst = out[y]
            if erode:
                for x in range(w):
                    dst[x] &= src[x]
            else:
                for x in range(w):
                    dst[x] |= src[x]
