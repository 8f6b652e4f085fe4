"""Overlay drawing: colours per kind, direction ticks in the ISO convention, mask tint."""

from __future__ import annotations

import math

import numpy as np

from gateway.extraction import extract
from gateway.extraction.overlay import (
    BIFURCATION_COLOUR,
    ENDING_COLOUR,
    draw_overlay,
)
from matcher.template import MinutiaKind, make_template
from tests.test_extraction_synthetic import single_minutia_image


def _pixels_of(colour, picture: np.ndarray) -> np.ndarray:
    return np.argwhere(np.all(picture == np.array(colour, np.uint8), axis=2))


def _tick_centroid(angle: float, kind: MinutiaKind) -> tuple[float, float]:
    image = np.full((100, 100), 255, np.uint8)
    t = make_template([50], [50], [angle], [kind], [80], width=100, height=100)
    pic = draw_overlay(image, t, zoom=1)
    colour = ENDING_COLOUR if kind == MinutiaKind.ENDING else BIFURCATION_COLOUR
    pts = _pixels_of(colour, pic)
    far = pts[np.hypot(pts[:, 0] - 50.5, pts[:, 1] - 50.5) > 4.5]  # outside the marker
    return float(far[:, 1].mean()), float(far[:, 0].mean())  # x, y


def test_ticks_point_along_the_iso_direction():
    x, y = _tick_centroid(0.0, MinutiaKind.ENDING)
    assert x > 53 and abs(y - 50.5) < 1.5  # 0: to the right
    x, y = _tick_centroid(math.pi / 2, MinutiaKind.ENDING)
    assert y < 48 and abs(x - 50.5) < 1.5  # pi/2: up, as seen (y decreases)
    x, y = _tick_centroid(math.pi, MinutiaKind.BIFURCATION)
    assert x < 48 and abs(y - 50.5) < 1.5


def test_kinds_get_different_colours_and_the_mask_is_tinted():
    image = np.full((80, 80), 200, np.uint8)
    t = make_template([20, 60], [20, 60], [0.0, 1.0],
                      [MinutiaKind.ENDING, MinutiaKind.BIFURCATION], width=80, height=80)
    mask = np.zeros((80, 80), bool)
    mask[10:70, 10:70] = True
    pic = draw_overlay(image, t, mask, zoom=2)
    assert pic.shape == (160, 160, 3) and pic.dtype == np.uint8
    assert len(_pixels_of(ENDING_COLOUR, pic)) > 0
    assert len(_pixels_of(BIFURCATION_COLOUR, pic)) > 0
    assert not np.array_equal(pic[2, 2], pic[80, 40])  # background tinted, print not
    assert np.array_equal(pic[80, 40], [200, 200, 200])


def test_overlay_of_an_extracted_minutia_points_at_its_extra_ridge():
    # End to end: for angle 0 the extra ridge lies to the right, so the drawn tick must.
    img = single_minutia_image(200, 0.0)
    t = extract(img, 500.0)
    pic = draw_overlay(img, t, zoom=1)
    colour = BIFURCATION_COLOUR if t.kind[0] == MinutiaKind.BIFURCATION else ENDING_COLOUR
    pts = _pixels_of(colour, pic)
    assert pts[:, 1].max() - t.x[0] > pts[:, 1].min() - t.x[0] + 8
