"""Scale data: synthetic minutiae templates for any gallery size, with mates for probes.

Each master finger gets a pattern class (arch, loop, whorl) with a Sherlock-Monro style
orientation field (zero-pole model around cores and deltas, randomly placed and rotated),
a minutiae count drawn like real plain impressions, and minutiae whose directions follow
the field (ending or bifurcation: either way along the ridge). Fingers that share a class
have similar fields, which is what makes real impostors look alike. A mate is another
impression of the master: rotated, shifted, gently stretched, jittered, with some
minutiae missing and a few spurious ones added, cropped to the sensor.

Deterministic per (seed, index), so a gallery of millions is generated in batches and
never stored as minutiae; the benchmark caches the derived watchlist instead.
"""

from __future__ import annotations

import math

import numpy as np

from matcher.template import Template, make_template

WIDTH, HEIGHT = 320, 420  # pixels at 500 ppi
VERSION = 2  # part of the benchmark's cache key: bump when the generated data changes


def _field(rng: np.random.Generator):
    """An orientation function (x, y) -> ridge angle for one master finger."""
    kind = rng.choice(3, p=(0.15, 0.6, 0.25))  # arch, loop, whorl (rough shares)
    cx, cy = WIDTH / 2 + rng.normal(0, 25), HEIGHT * 0.45 + rng.normal(0, 30)
    rot = rng.normal(0, 0.25)
    if kind == 0:
        amp = rng.uniform(0.3, 0.8)

        def arch(x, y):
            return rot + amp * np.tanh((x - cx) / 80.0) * np.exp(-((y - cy) / 150.0) ** 2)
        return arch
    cores = [(cx, cy)]
    deltas = [(cx + rng.choice((-1, 1)) * rng.uniform(60, 120), cy + rng.uniform(90, 160))]
    if kind == 2:
        cores.append((cx + rng.normal(0, 15), cy + rng.uniform(25, 50)))
        deltas.append((cx - (deltas[0][0] - cx), deltas[0][1] + rng.normal(0, 20)))

    def singular(x, y):
        a = np.full(np.shape(x), rot)
        for px, py in cores:
            a += 0.5 * np.arctan2(y - py, x - px)
        for px, py in deltas:
            a -= 0.5 * np.arctan2(y - py, x - px)
        return a
    return singular


# Tuned so that the 99.9th percentile impostor score is at least that of FVC2002 DB1-3
# (python -m benchmarks.identify --impostors): 29.7 against 28.0 with these values.
DONOR_POOL = 128  # donor fingers (not in any gallery) that lend a patch to every master
DONOR_BASE = 1 << 40  # donors' indices, far from any gallery's
DONOR_SHARE = 0.45


def master(seed: int, index: int, *, donate: bool = True) -> dict:
    """The minutiae of master finger ``index`` of a gallery (image coordinates).

    Recombination: a master takes the minutiae of one region from a donor of the pool
    (as unrelated real fingers share local ridge configurations), which gives the
    impostor score tail real data has; without it impostors are far too easy.
    """
    rng = np.random.default_rng([seed, index])
    field = _field(rng)
    n = int(np.clip(rng.normal(42, 10), 18, 80))
    # an elliptic finger area, minutiae a little denser towards the centre
    r = np.sqrt(rng.uniform(0, 1, n)) ** 1.15
    t = rng.uniform(0, 2 * math.pi, n)
    x = WIDTH / 2 + r * np.cos(t) * (WIDTH * 0.44)
    y = HEIGHT / 2 + r * np.sin(t) * (HEIGHT * 0.45)
    angle = field(x, y) + rng.integers(0, 2, n) * math.pi + rng.normal(0, 0.06, n)
    kind = rng.integers(1, 3, n)
    if donate:
        d = master(seed, DONOR_BASE + int(rng.integers(0, DONOR_POOL)), donate=False)
        # the donor's minutiae within a disc replace this master's there
        px, py = rng.uniform(WIDTH * 0.3, WIDTH * 0.7), rng.uniform(HEIGHT * 0.3, HEIGHT * 0.7)
        radius = math.sqrt(DONOR_SHARE * WIDTH * HEIGHT * 0.6 / math.pi)
        mine = np.hypot(x - px, y - py) > radius
        theirs = np.hypot(d["x"] - px, d["y"] - py) <= radius
        x = np.concatenate([x[mine], d["x"][theirs]])
        y = np.concatenate([y[mine], d["y"][theirs]])
        angle = np.concatenate([angle[mine], d["angle"][theirs]])
        kind = np.concatenate([kind[mine], d["kind"][theirs]])
    return {"x": x, "y": y, "angle": np.mod(angle, 2 * math.pi), "kind": kind}


def impression(m: dict, rng: np.random.Generator, finger: int = 0) -> Template:
    """One scan of a master: moved, rotated, stretched, noisy, partly missing, cropped."""
    n = m["x"].size
    keep = rng.uniform(0, 1, n) > rng.uniform(0.1, 0.3)
    rot = rng.normal(0, math.radians(10))
    dx, dy = rng.normal(0, 18, 2)
    sx, sy = 1 + rng.normal(0, 0.03, 2)
    cx, cy = WIDTH / 2, HEIGHT / 2
    ux, uy = (m["x"] - cx) * sx, (m["y"] - cy) * sy
    x = cx + ux * math.cos(rot) + uy * math.sin(rot) + dx + rng.normal(0, 2.5, n)
    y = cy - ux * math.sin(rot) + uy * math.cos(rot) + dy + rng.normal(0, 2.5, n)
    angle = m["angle"] + rot + rng.normal(0, 0.08, n)
    kind = m["kind"].copy()
    flip = rng.uniform(0, 1, n) < 0.1  # ending read as bifurcation and back
    kind[flip] = 3 - kind[flip]
    extra = int(rng.integers(0, 6))
    x = np.concatenate([x[keep], rng.uniform(20, WIDTH - 20, extra)])
    y = np.concatenate([y[keep], rng.uniform(20, HEIGHT - 20, extra)])
    angle = np.concatenate([angle[keep], rng.uniform(0, 2 * math.pi, extra)])
    kind = np.concatenate([kind[keep], rng.integers(1, 3, extra)])
    inside = (x >= 5) & (y >= 5) & (x < WIDTH - 5) & (y < HEIGHT - 5)
    quality = rng.integers(40, 100, int(inside.sum()))
    return make_template(x[inside], y[inside], np.mod(angle[inside], 2 * math.pi),
                         kind[inside], quality, width=WIDTH, height=HEIGHT, finger=finger)


def gallery_template(seed: int, index: int) -> Template:
    """The enrolled impression of master ``index``."""
    return impression(master(seed, index), np.random.default_rng([seed, index, 1]))


def mate_template(seed: int, index: int) -> Template:
    """A second impression of master ``index`` (a mated probe)."""
    return impression(master(seed, index), np.random.default_rng([seed, index, 2]))


def stranger_template(seed: int, index: int) -> Template:
    """An impression of a finger that is not in the gallery (a non-mated probe)."""
    return gallery_template(seed + 1_000_003, index)
