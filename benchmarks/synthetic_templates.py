"""Random-but-plausible minutiae templates for load and fault runs (no real prints needed).

Minutiae spread over a finger-sized area with a smooth orientation field, so that
neighbouring minutiae have related directions as on a real finger; a second impression
of the same finger is the same minutiae moved, rotated, jittered and partly missing.
Deterministic per seed, so a run can rebuild a gallery template from its seed alone.
"""

from __future__ import annotations

import math

import numpy as np

from matcher.template import Template, make_template

SIZE = (300, 400)  # width, height in pixels at 500 ppi


def plausible_template(seed: int, finger: int = 2, n: int | None = None) -> Template:
    """One finger's minutiae; ``n`` defaults to a count between 25 and 55."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    n = int(rng.integers(25, 56)) if n is None else n
    x = rng.uniform(30, w - 30, n)
    y = rng.uniform(30, h - 30, n)
    a0, fx, fy = rng.uniform(0, math.pi), rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02)
    ridge = a0 + np.sin(x * fx) + np.cos(y * fy)
    angle = (ridge + rng.integers(0, 2, n) * math.pi + rng.normal(0, 0.1, n)) % (2 * math.pi)
    return make_template(x, y, angle, rng.integers(1, 3, n), rng.integers(40, 100, n),
                         width=w, height=h, finger=finger)


def another_impression(t: Template, seed: int, keep: float = 0.8) -> Template:
    """The same finger scanned again: shifted, rotated a little, noisy, partly missing."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(t), size=max(1, int(round(len(t) * keep))), replace=False))
    r = math.radians(rng.uniform(-15, 15))
    cx, cy = t.width / 2, t.height / 2
    dx, dy = t.x[chosen] - cx, t.y[chosen] - cy
    shift = rng.uniform(-15, 15, 2)
    # Rotating the image counter-clockwise by r (y down) adds r to every ISO angle.
    x = cx + dx * math.cos(r) + dy * math.sin(r) + shift[0] + rng.normal(0, 2, chosen.size)
    y = cy - dx * math.sin(r) + dy * math.cos(r) + shift[1] + rng.normal(0, 2, chosen.size)
    angle = (t.angle[chosen] + r + rng.normal(0, 0.05, chosen.size)) % (2 * math.pi)
    inside = (x >= 0) & (y >= 0) & (x < t.width) & (y < t.height)
    return make_template(x[inside], y[inside], angle[inside], t.kind[chosen][inside],
                         t.quality[chosen][inside], width=t.width, height=t.height,
                         ppi=t.ppi, finger=int(t.finger))
