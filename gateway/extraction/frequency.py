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
from numba import njit

from gateway.extraction.order_statistics import masked_median
from gateway.extraction.params import ExtractionParams
from gateway.extraction.smoothing import smooth_field


def ridge_period(
    normalised: np.ndarray, mask: np.ndarray, params: ExtractionParams
) -> np.ndarray:
    """Ridge period in pixels per pixel (float32), filled outside the mask."""
    smooth = cv2.GaussianBlur(normalised, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    _squares(smooth, gx, gy)  # smooth -> smooth^2, gx -> gx^2 + gy^2
    win = params.frequency_block / 2.0
    var_i = smooth_field(smooth, win, out=smooth)
    var_g = smooth_field(gx, win, out=gx)
    period = var_i  # written over in place
    _period_from_variances(var_i, var_g, np.float32(params.min_period),
                           np.float32(params.max_period), period)
    inside = np.ascontiguousarray(mask, np.bool_)
    fill = masked_median(period, inside) if inside.any() else params.default_period
    _fill_outside(period, inside, np.float32(fill))
    return smooth_field(period, win, out=period)


def period_bins(period: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` representative periods for the Gabor bank, from the print's own spread."""
    if count <= 1:
        inside = mask if mask.any() else np.ones(period.shape, bool)
        return np.array([masked_median(period, inside)], np.float32)
    values = period[mask] if mask.any() else period.reshape(-1)
    qs = np.linspace(15.0, 85.0, count)
    return np.percentile(values, qs).astype(np.float32)


# The kernels below do elementwise float32 arithmetic in NumPy's order (the results are
# bit for bit those of the array expressions they replace) in one pass and no temporary.

@njit(cache=True, nogil=True)
def _squares(smooth: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> None:  # pragma: no cover
    """smooth = smooth^2 and gx = gx^2 + gy^2, in place."""
    s, x, y = smooth.ravel(), gx.ravel(), gy.ravel()
    for i in range(s.shape[0]):
        s[i] = s[i] * s[i]
        x[i] = x[i] * x[i] + y[i] * y[i]


@njit(cache=True, nogil=True)
def _period_from_variances(var_i: np.ndarray, var_g: np.ndarray, lo: np.float32,
                           hi: np.float32, out: np.ndarray) -> None:  # pragma: no cover
    """2 pi sqrt(var_i / max(var_g, 1e-9)), clipped to [lo, hi]."""
    vi, vg, o = var_i.ravel(), var_g.ravel(), out.ravel()
    two_pi, floor = np.float32(2.0 * np.pi), np.float32(1e-9)
    for i in range(o.shape[0]):
        p = two_pi * np.sqrt(vi[i] / max(vg[i], floor))
        o[i] = min(max(p, lo), hi)


@njit(cache=True, nogil=True)
def _fill_outside(period: np.ndarray, mask: np.ndarray,
                  fill: np.float32) -> None:  # pragma: no cover
    p, m = period.ravel(), mask.ravel()
    for i in range(p.shape[0]):
        if not m[i]:
            p[i] = fill
