"""Wide Gaussian smoothing of slowly varying fields, done at reduced resolution.

Orientation, contrast and ridge-period fields are smoothed with sigmas of 7-16 px; at
full resolution those blurs cost more than the whole Gabor bank. Averaging the field down
by a few pixels (a box pre-filter), blurring with the reduced sigma and interpolating
back gives the same smooth result for a fraction of the work.
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_field(field: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian blur of ``field`` (float32) with ``sigma`` pixels, same shape.

    ``out`` (float32, the field's shape; it may be ``field`` itself) receives the result
    instead of a new array: every fresh full-size array costs page faults.
    """
    factor = int(min(4, sigma // 3))
    h, w = field.shape
    if factor < 2 or min(h, w) < 8 * factor:
        return cv2.GaussianBlur(field, (0, 0), sigma, dst=out)
    small = cv2.resize(field, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    # The box average already smoothed by about factor / sqrt(12); take it off the sigma.
    rest = np.sqrt(max(sigma**2 - factor**2 / 12.0, 0.25)) / factor
    small = cv2.GaussianBlur(small, (0, 0), rest)
    return cv2.resize(small, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
