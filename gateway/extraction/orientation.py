"""Ridge orientation field from the gradient structure tensor.

Angles here are in the working image's frame, x right and y down: ``theta`` is the ridge
direction as atan2(dy, dx) folded into [0, pi). The ISO angle (counter-clockwise as seen,
direction vector (cos a, -sin a)) is made only when minutiae get their final direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numba import njit

from gateway.extraction.params import ExtractionParams
from gateway.extraction.smoothing import smooth_field


@dataclass(frozen=True)
class GradientTensor:
    """Smoothed structure tensor components: sums of gx*gx, gy*gy and gx*gy."""

    gxx: np.ndarray
    gyy: np.ndarray
    gxy: np.ndarray

    @property
    def energy(self) -> np.ndarray:
        """Local gradient energy: high on ridges, low on a flat background."""
        return self.gxx + self.gyy

    @cached_property
    def coherence(self) -> np.ndarray:
        """0 for isotropic texture (noise), 1 for perfectly parallel ridges.

        Segmentation, minutia quality and image quality all read it: computed once.
        """
        out = np.empty_like(self.gxx)
        _coherence(self.gxx, self.gyy, self.gxy, out)
        return out


def gradient_tensor(image: np.ndarray, params: ExtractionParams) -> GradientTensor:
    """The structure tensor of ``image`` averaged over a Gaussian window."""
    smooth = cv2.GaussianBlur(image, (0, 0), params.gradient_sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    s = params.orientation_sigma
    return GradientTensor(
        gxx=smooth_field(gx * gx, s),
        gyy=smooth_field(gy * gy, s),
        gxy=smooth_field(gx * gy, s),
    )


def orientation_field(
    tensor: GradientTensor, mask: np.ndarray, params: ExtractionParams
) -> np.ndarray:
    """Ridge direction in [0, pi) per pixel, smoothed as doubled-angle unit vectors.

    Unit vectors (not energy-weighted ones) are smoothed a second time so that creases
    and smudges borrow the direction of the clean ridges around them; outside the mask the
    field is still defined (it is smooth) but not trusted.
    """
    # Doubled gradient angle (the ridge direction is perpendicular to the gradient) as
    # unit vectors, down-weighted off the finger.
    c = np.empty_like(tensor.gxx)
    s = np.empty_like(tensor.gxx)
    _doubled_angle_vectors(tensor.gxx, tensor.gyy, tensor.gxy,
                           np.ascontiguousarray(mask, np.bool_), c, s)
    c = smooth_field(c, params.orientation_smooth_sigma, out=c)
    s = smooth_field(s, params.orientation_smooth_sigma, out=s)
    # cv2.phase (within 0.01 degree of arctan2, and some 50 times faster here) is in
    # [0, 2 pi), so the ridge angle lands in [pi/2, 3 pi/2) and folds back once.
    ridge = cv2.phase(c, s, angleInDegrees=False)
    _halve_and_fold(ridge)
    return ridge


# The kernels below do elementwise float32 arithmetic in NumPy's order (the results are
# bit for bit those of the array expressions they replace) in one pass and no temporary.

@njit(cache=True, nogil=True)
def _coherence(gxx: np.ndarray, gyy: np.ndarray, gxy: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover
    """sqrt((gxx - gyy)^2 + 4 gxy^2) / max(gxx + gyy, 1e-9)."""
    a, b, c, o = gxx.ravel(), gyy.ravel(), gxy.ravel(), out.ravel()
    four, floor = np.float32(4.0), np.float32(1e-9)
    for i in range(o.shape[0]):
        d = a[i] - b[i]
        o[i] = np.sqrt(d * d + four * (c[i] * c[i])) / max(a[i] + b[i], floor)


@njit(cache=True, nogil=True)
def _doubled_angle_vectors(gxx: np.ndarray, gyy: np.ndarray, gxy: np.ndarray,
                           mask: np.ndarray, c: np.ndarray,
                           s: np.ndarray) -> None:  # pragma: no cover
    """(c, s) = (gxx - gyy, 2 gxy) / their norm, times 1 on the mask and 0.05 off it."""
    a, b, g, m, co, so = gxx.ravel(), gyy.ravel(), gxy.ravel(), mask.ravel(), c.ravel(), s.ravel()
    two, tiny, off = np.float32(2.0), np.float32(1e-9), np.float32(0.05)
    for i in range(co.shape[0]):
        x = a[i] - b[i]
        y = two * g[i]
        norm = np.sqrt(x * x + y * y) + tiny
        weight = np.float32(1.0) if m[i] else off
        co[i] = (x / norm) * weight
        so[i] = (y / norm) * weight


@njit(cache=True, nogil=True)
def _halve_and_fold(phase: np.ndarray) -> None:  # pragma: no cover
    """phase / 2 + pi / 2, folded into [0, pi)."""
    p = phase.ravel()
    half, quarter_turn, pi = np.float32(0.5), np.float32(np.pi / 2.0), np.float32(np.pi)
    for i in range(p.shape[0]):
        r = half * p[i] + quarter_turn
        if r >= pi:
            r -= pi
        p[i] = r
