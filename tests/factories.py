"""Minutiae templates made up for tests: random prints and distorted copies of them."""

from __future__ import annotations

import math

import numpy as np

from matcher.template import Template, make_template


def random_template(seed: int, n: int = 35, finger: int = 2, size=(300, 400)) -> Template:
    """Minutiae spread over a finger-sized area with ridge-like local direction coherence."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = rng.uniform(40, w - 40, n)
    y = rng.uniform(40, h - 40, n)
    # A smooth orientation field, so neighbouring minutiae have related directions.
    a0, fx, fy = rng.uniform(0, math.pi), rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02)
    base = a0 + np.sin(x * fx) + np.cos(y * fy)
    angle = (base + rng.integers(0, 2, n) * math.pi + rng.normal(0, 0.1, n)) % (2 * math.pi)
    return make_template(x, y, angle, rng.integers(1, 3, n), rng.integers(40, 100, n),
                         width=w, height=h, finger=finger)


def distorted_copy(t: Template, seed: int, rotate_deg: float = 12.0, shift=(15.0, -10.0),
                   jitter_px: float = 2.0, keep: float = 0.8) -> Template:
    """Another impression of the same finger: moved, rotated, noisy, partly missing."""
    rng = np.random.default_rng(seed)
    n = len(t)
    chosen = np.sort(rng.choice(n, size=max(1, int(round(n * keep))), replace=False))
    cx, cy = t.width / 2, t.height / 2
    r = math.radians(rotate_deg)
    dx, dy = t.x[chosen] - cx, t.y[chosen] - cy
    # Rotating the image counter-clockwise by r (y down) adds r to every ISO angle.
    x = cx + dx * math.cos(r) + dy * math.sin(r) + shift[0] + rng.normal(0, jitter_px, chosen.size)
    y = cy - dx * math.sin(r) + dy * math.cos(r) + shift[1] + rng.normal(0, jitter_px, chosen.size)
    angle = (t.angle[chosen] + r + rng.normal(0, 0.05, chosen.size)) % (2 * math.pi)
    inside = (x >= 0) & (y >= 0) & (x < t.width) & (y < t.height)
    return make_template(x[inside], y[inside], angle[inside], t.kind[chosen][inside],
                         t.quality[chosen][inside], width=t.width, height=t.height,
                         ppi=t.ppi, finger=int(t.finger))
