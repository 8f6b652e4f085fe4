"""Minutiae templates made up for tests: random prints and distorted copies of them.

The generator is the benchmarks' (:mod:`benchmarks.synthetic_templates`); tests fix the
minutia count and the movement, so that what a test asserts does not hang on a draw.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.synthetic_templates import kept_minutiae, moved, plausible_template
from matcher.template import Template


def random_template(seed: int, n: int = 35, finger: int = 2, size=(300, 400)) -> Template:
    """Minutiae spread over a finger-sized area with ridge-like local direction coherence."""
    return plausible_template(seed, finger, n, margin=40.0, size=size)


def distorted_copy(t: Template, seed: int, rotate_deg: float = 12.0, shift=(15.0, -10.0),
                   jitter_px: float = 2.0, keep: float = 0.8) -> Template:
    """Another impression of the same finger: moved, rotated, noisy, partly missing."""
    rng = np.random.default_rng(seed)
    return moved(t, rng, kept_minutiae(t, rng, keep), math.radians(rotate_deg), shift, jitter_px)
