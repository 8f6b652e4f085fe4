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
        num = np.sqrt((self.gxx - self.gyy) ** 2 + 4.0 * self.gxy**2)
        return num / np.maximum(self.energy, 1e-9)


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
    # Doubled gradient angle; the ridge direction is perpendicular to the gradient.
    c = tensor.gxx - tensor.gyy
    s = 2.0 * tensor.gxy
    norm = np.sqrt(c * c + s * s) + 1e-9
    weight = np.where(mask, 1.0, 0.05).astype(np.float32)
    c = smooth_field((c / norm) * weight, params.orientation_smooth_sigma)
    s = smooth_field((s / norm) * weight, params.orientation_smooth_sigma)
    # cv2.phase (within 0.01 degree of arctan2, and some 50 times faster here) is in
    # [0, 2 pi), so the ridge angle lands in [pi/2, 3 pi/2) and folds back once.
    ridge = 0.5 * cv2.phase(c, s) + np.float32(np.pi / 2.0)
    ridge[ridge >= np.float32(np.pi)] -= np.float32(np.pi)
    return ridge
