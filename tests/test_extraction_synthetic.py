"""Synthetic ridge patterns with minutiae at known places, for the extraction tests.

The generators live here with the test that guards their own geometry.

A phase field 2 pi v / T + atan2(v, u) draws parallel ridges (along u) with exactly one
minutia at its singularity: one more ridge and one more valley on the side of +u than on
the side of -u (checked by counting in the tests). Whether the minutia is an ending or a
bifurcation depends on the tone (a negative swaps them), but its ISO direction is the
same either way: towards +u, along the extra ridge (ending) or between the two branches
that enclose the extra valley (bifurcation).
"""

from __future__ import annotations

import math

import numpy as np


def single_minutia_image(
    size: int = 200, angle: float = 0.0, period: float = 9.0, centre: tuple[float, float] | None
    = None,
) -> np.ndarray:
    """uint8 ridges (dark) with one minutia at ``centre`` pointing at ISO ``angle``."""
    cx, cy = centre if centre is not None else ((size - 1) / 2.0, (size - 1) / 2.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Direction in image coordinates (y down) and the frame (u along the direction).
    ex, ey = math.cos(angle), -math.sin(angle)
    u = (xx - cx) * ex + (yy - cy) * ey
    v = -(xx - cx) * ey + (yy - cy) * ex
    phase = 2.0 * math.pi * v / period + np.arctan2(v, u)
    return np.clip(128.0 + 90.0 * np.cos(phase), 0, 255).astype(np.uint8)


def several_minutiae_image(size: int = 320, period: float = 9.0) -> tuple[np.ndarray, list]:
    """Ridges with several well-separated minutiae; returns the image and (x, y, angle)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = 2.0 * math.pi * (0.8 * yy + 0.6 * xx) / period
    truth = []
    spots = [(90, 90), (230, 100), (100, 230), (220, 220), (160, 160)]
    for cx, cy in spots:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        phase = phase + sign * np.arctan2(
            0.8 * (yy - cy) + 0.6 * (xx - cx), 0.6 * (yy - cy) - 0.8 * (xx - cx))
        truth.append((cx, cy, sign))
    image = np.clip(128.0 + 90.0 * np.cos(phase), 0, 255).astype(np.uint8)
    return image, truth


def _dark_runs(line: np.ndarray) -> int:
    dark = line < 128
    return int(np.sum(dark[1:] & ~dark[:-1]))


def test_synthetic_image_has_its_extra_ridge_on_the_direction_side():
    # Guards the generator the angle tests rely on: for angle 0 the extra ridge lies to
    # the right (+x) of the singularity, so the ISO direction there is 0.
    img = single_minutia_image(200, 0.0)
    assert _dark_runs(img[20:180, 170]) == _dark_runs(img[20:180, 30]) + 1
