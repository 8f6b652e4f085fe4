"""Random-but-plausible minutiae templates for load and fault runs (no real prints needed).

Minutiae spread over a finger-sized area with a smooth orientation field, so that
neighbouring minutiae have related directions as on a real finger; a second impression
of the same finger is the same minutiae moved, rotated, jittered and partly missing.
Deterministic per seed, so a run can rebuild a gallery template from its seed alone.
The tests' templates (``tests/factories.py``) are these with fixed sizes and movements.
"""

from __future__ import annotations

import math

import numpy as np

from matcher.template import Template, make_template

SIZE = (300, 400)  # width, height in pixels at 500 ppi


def plausible_template(
    seed: int, finger: int = 2, n: int | None = None, *, margin: float = 30.0,
    size: tuple[int, int] = SIZE,
) -> Template:
    """One finger's minutiae, ``margin`` px or more from the edges; ``n`` defaults to a
    count between 25 and 55."""
    rng = np.random.default_rng(seed)
    w, h = size
    n = int(rng.integers(25, 56)) if n is None else n
    x = rng.uniform(margin, w - margin, n)
    y = rng.uniform(margin, h - margin, n)
    a0, fx, fy = rng.uniform(0, math.pi), rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02)
    ridge = a0 + np.sin(x * fx) + np.cos(y * fy)
    angle = (ridge + rng.integers(0, 2, n) * math.pi + rng.normal(0, 0.1, n)) % (2 * math.pi)
    return make_template(x, y, angle, rng.integers(1, 3, n), rng.integers(40, 100, n),
                         width=w, height=h, finger=finger)


def another_impression(t: Template, seed: int, keep: float = 0.8) -> Template:
    """The same finger scanned again: shifted, rotated a little, noisy, partly missing."""
    rng = np.random.default_rng(seed)
    chosen = kept_minutiae(t, rng, keep)
    rotate = math.radians(rng.uniform(-15, 15))
    shift = rng.uniform(-15, 15, 2)
    return moved(t, rng, chosen, rotate, shift, jitter_px=2.0)


def moved(t: Template, rng: np.random.Generator, chosen: np.ndarray, rotate: float,
          shift, jitter_px: float) -> Template:
    """Minutiae ``chosen`` of ``t`` rotated by ``rotate`` radians about the centre, shifted,
    jittered; those that leave the image are dropped."""
    cx, cy = t.width / 2, t.height / 2
    dx, dy = t.x[chosen] - cx, t.y[chosen] - cy
    # Rotating the image counter-clockwise by r (y down) adds r to every ISO angle.
    c, s = math.cos(rotate), math.sin(rotate)
    x = cx + dx * c + dy * s + shift[0] + rng.normal(0, jitter_px, chosen.size)
    y = cy - dx * s + dy * c + shift[1] + rng.normal(0, jitter_px, chosen.size)
    angle = (t.angle[chosen] + rotate + rng.normal(0, 0.05, chosen.size)) % (2 * math.pi)
    inside = (x >= 0) & (y >= 0) & (x < t.width) & (y < t.height)
    return make_template(x[inside], y[inside], angle[inside], t.kind[chosen][inside],
                         t.quality[chosen][inside], width=t.width, height=t.height,
                         ppi=t.ppi, finger=int(t.finger))


def kept_minutiae(t: Template, rng: np.random.Generator, keep: float) -> np.ndarray:
    """A random share ``keep`` of the minutiae (indices, ascending): the rest are missed."""
    return np.sort(rng.choice(len(t), size=max(1, int(round(len(t) * keep))), replace=False))
