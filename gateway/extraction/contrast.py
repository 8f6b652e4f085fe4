"""Local contrast normalisation: zero local mean and unit local deviation.

Dry prints are faint and wet ones dark; dividing by the local deviation makes the later
stages see ridges of the same amplitude everywhere. The sign is flipped so that ridges
(dark on the sensor) come out positive.
"""

from __future__ import annotations

import cv2
import numpy as np


def normalise_contrast(image: np.ndarray, sigma: float) -> np.ndarray:
    """Ridges-positive image with local mean 0 and local standard deviation about 1."""
    mean = cv2.GaussianBlur(image, (0, 0), sigma)
    centred = mean - image
    var = cv2.GaussianBlur(centred * centred, (0, 0), sigma)
    # The floor keeps a flat background from being amplified into fake ridges.
    return centred / np.sqrt(np.maximum(var, 1e-4))
