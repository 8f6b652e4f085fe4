"""Quality 0..100 per minutia, and the cap that keeps the best ones.

A minutia is trusted when the ridges around it are clear and parallel (orientation
coherence), when the enhanced ridges there are strong (Gabor response) and when it lies
well inside the print (distance to the mask edge): these are the cues examiners use and
the ones NBIS MINDTCT's reliability combines.
"""

from __future__ import annotations

import cv2
import numpy as np

from gateway.extraction.order_statistics import masked_percentile
from gateway.extraction.smoothing import smooth_field


def minutia_quality(
    xs: np.ndarray, ys: np.ndarray, coherence: np.ndarray, enhanced: np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """Quality 1..100 (uint8) of the minutiae at integer pixels (xs, ys)."""
    if xs.size == 0:
        return np.zeros(0, np.uint8)
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    border = np.clip(dist[ys, xs] / 40.0, 0.0, 1.0)
    clear = np.clip(coherence[ys, xs] / 0.7, 0.0, 1.0)
    amplitude = np.abs(enhanced)
    amplitude = smooth_field(amplitude, 8.0, out=amplitude)
    inside = np.ascontiguousarray(mask, np.bool_)
    level = masked_percentile(amplitude, inside, 90.0) if inside.any() else 1.0
    strong = np.clip(amplitude[ys, xs] / max(level, 1e-6), 0.0, 1.0)
    q = 100.0 * np.sqrt(clear * strong) * (0.4 + 0.6 * border)
    return np.clip(np.round(q), 1, 100).astype(np.uint8)


def keep_best(quality: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` minutiae, highest quality first, ties in input order."""
    order = np.argsort(-quality.astype(np.int32), kind="stable")
    return order[:limit]
