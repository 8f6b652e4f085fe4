"""Local ridge period (pixels per ridge-valley cycle) at every pixel.

For a sinusoidal ridge pattern I = A cos(2 pi u / T) the ratio of the intensity variance
to the gradient variance is (T / 2 pi)^2, so the period follows from two Gaussian-weighted
local averages: no per-block peak search and no Python loop. Noise raises the gradient
variance, so the image is lightly smoothed first and the result is clipped to the periods
real fingers have and smoothed again.
"""

from __future__ import annotations

import cv2
import numpy as np

from gateway.extraction.params import ExtractionParams
from gateway.extraction.smoothing import smooth_field


def ridge_period(
    normalised: np.ndarray, mask: np.ndarray, params: ExtractionParams
) -> np.ndarray:
    """Ridge period in pixels per pixel (float32), filled outside the mask."""
    smooth = cv2.GaussianBlur(normalised, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    win = params.frequency_block / 2.0
    var_i = smooth_field(smooth * smooth, win)
    var_g = smooth_field(gx * gx + gy * gy, win)
    period = 2.0 * np.pi * np.sqrt(var_i / np.maximum(var_g, 1e-9))
    period = np.clip(period, params.min_period, params.max_period).astype(np.float32)
    fill = float(np.median(period[mask])) if mask.any() else params.default_period
    period = np.where(mask, period, fill).astype(np.float32)
    return smooth_field(period, win)


def period_bins(period: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` representative periods for the Gabor bank, from the print's own spread."""
    values = period[mask] if mask.any() else period.reshape(-1)
    if count <= 1:
        return np.array([float(np.median(values))], np.float32)
    qs = np.linspace(15.0, 85.0, count)
    return np.percentile(values, qs).astype(np.float32)
