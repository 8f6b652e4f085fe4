"""Local contrast normalisation: zero local mean and unit local deviation.

Dry prints are faint and wet ones dark; dividing by the local deviation makes the later
stages see ridges of the same amplitude everywhere. The sign is flipped so that ridges
(dark on the sensor) come out positive.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gateway.extraction.smoothing import smooth_field


def normalise_contrast(image: np.ndarray, sigma: float) -> np.ndarray:
    """Ridges-positive image with local mean 0 and local standard deviation about 1."""
    mean = smooth_field(image, sigma)
    centred = np.empty_like(mean)
    _centre(mean, np.ascontiguousarray(image, np.float32), centred, mean)
    var = smooth_field(mean, sigma, out=mean)  # ``mean`` now holds the squares
    _divide_by_deviation(centred, var)
    return centred


# The kernels below do elementwise float32 arithmetic in NumPy's order (the results are
# bit for bit those of the array expressions they replace) in one pass and no temporary.

@njit(cache=True, nogil=True)
def _centre(mean: np.ndarray, image: np.ndarray, centred: np.ndarray,
            squares: np.ndarray) -> None:  # pragma: no cover
    """centred = mean - image and squares = centred ** 2 (``squares`` may be ``mean``)."""
    m, im, c, sq = mean.ravel(), image.ravel(), centred.ravel(), squares.ravel()
    for i in range(m.shape[0]):
        d = m[i] - im[i]
        c[i] = d
        sq[i] = d * d


@njit(cache=True, nogil=True)
def _divide_by_deviation(centred: np.ndarray, var: np.ndarray) -> None:  # pragma: no cover
    """centred /= sqrt(max(var, 1e-4)): the floor keeps a flat background from being
    amplified into fake ridges."""
    c, v = centred.ravel(), var.ravel()
    floor = np.float32(1e-4)
    for i in range(c.shape[0]):
        c[i] = c[i] / np.sqrt(max(v[i], floor))
