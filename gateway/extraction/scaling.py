"""Resampling between the input image's pixel frame and the 500 ppi working frame."""

from __future__ import annotations

import cv2
import numpy as np

from gateway.extraction.params import WORKING_PPI


def to_working_resolution(image: np.ndarray, ppi: float) -> tuple[np.ndarray, float]:
    """The image resampled to 500 ppi as float32 in 0..1, and the scale factor used.

    Area averaging when shrinking avoids aliasing fine ridges; bilinear when enlarging.
    """
    scale = WORKING_PPI / float(ppi)
    img = image.astype(np.float32) / 255.0
    if abs(scale - 1.0) < 1e-3:
        return img, 1.0
    h, w = image.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interpolation), scale


def to_input_frame(
    x: np.ndarray, y: np.ndarray, scale: float, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Working-frame pixel coordinates mapped back onto the input image's pixels.

    OpenCV resizing aligns pixel centres ((i + 0.5) / scale - 0.5), so we invert exactly
    that, then clip so a minutia can never fall outside the image.
    """
    xi = (x.astype(np.float64) + 0.5) / scale - 0.5
    yi = (y.astype(np.float64) + 0.5) / scale - 0.5
    return np.clip(xi, 0, width - 1), np.clip(yi, 0, height - 1)
