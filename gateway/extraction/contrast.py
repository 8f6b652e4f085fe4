"""Local contrast normalisation: zero local mean and unit local deviation.

Dry prints are faint and wet ones dark; dividing by the local deviation makes the later
stages see ridges of the same amplitude everywhere. The sign is flipped so that ridges
(dark on the sensor) come out positive.
"""

from __future__ import annotations

import numpy as np

from gateway.extraction.smoothing import smooth_field


def normalise_contrast(image: np.ndarray, sigma: float) -> np.ndarray:
    """Ridges-positive image with local mean 0 and local standard deviation about 1."""
    mean = smooth_field(image, sigma)
    centred = mean - image
    var = smooth_field(centred * centred, sigma)
    # The floor keeps a flat background from being amplified into fake ridges.
    return centred / np.sqrt(np.maximum(var, 1e-4))
