"""Extraction pipeline: contract, ISO angle convention, geometric consistency, filters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.extraction import DEFAULT_EXTRACTOR, EXTRACTORS, extract
from gateway.extraction.minutiae_detection import crossing_number
from gateway.extraction.params import DEFAULT_PARAMS
from gateway.extraction.pipeline import run_pipeline
from matcher.template import MinutiaKind, Template
from tests.test_extraction_synthetic import several_minutiae_image, single_minutia_image

# The image-to-template contract holds for every extractor we would ship as a mode
# (LEADER's own convention tests are in test_extraction_detectors.py: it is slow).
CONTRACT_EXTRACTORS = ["ink", "ink-mindtct", "mindtct"]


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def test_contract_names_and_default():
    assert DEFAULT_EXTRACTOR in EXTRACTORS
    assert set(CONTRACT_EXTRACTORS) | {"ffe", "leader"} <= set(EXTRACTORS)
    # the default, LEADER, has its convention tests in test_extraction_detectors.py
    assert DEFAULT_EXTRACTOR in CONTRACT_EXTRACTORS + ["leader"]
    with pytest.raises(ValueError, match="unknown extractor"):
        extract(single_minutia_image(), 500.0, extractor="nope")


@pytest.mark.parametrize("degrees", [0, 60, 135, 200, 290])
@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_single_minutia_position_and_iso_angle(degrees, negative, name):
    angle = math.radians(degrees)
    img = single_minutia_image(200, angle)
    if negative:
        img = 255 - img
    t = extract(img, 500.0, name)
    assert isinstance(t, Template)
    assert len(t) == 1, "a clean pattern with one singularity has exactly one minutia"
    assert math.hypot(t.x[0] - 99.5, t.y[0] - 99.5) <= 5.0
    # ISO 19794-2: an ending points into its ridge, a bifurcation between its branches;
    # both point at the extra ridge's side, whatever the tone.
    assert _angle_diff(float(t.angle[0]), angle) <= math.radians(15)
    # Dark extra ridge = ending; in the negative the extra ridge is the valley = fork.
    expected = MinutiaKind.BIFURCATION if not negative else MinutiaKind.ENDING
    assert t.kind[0] == expected


@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_template_fields_follow_the_contract(name):
    img, _ = several_minutiae_image()
    t = extract(img, 500.0, name)
    assert t.finger == 0 and t.ppi == 500.0
    assert (t.width, t.height) == (img.shape[1], img.shape[0])
    assert 1 <= t.image_quality <= 100
    assert len(t) >= 3
    assert np.all((t.quality >= 1) & (t.quality <= 100))
    assert np.all((t.angle >= 0) & (t.angle < 2 * math.pi))


@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_coordinates_come_back_in_the_input_frame_at_other_resolutions(name):
    # The same pattern scanned at 1000 ppi is twice as large: minutiae must sit at twice
    # the coordinates, with the same angle, and the template must say 1000 ppi.
    angle = math.radians(40)
    t500 = extract(single_minutia_image(200, angle), 500.0, name)
    t1000 = extract(single_minutia_image(400, angle, period=18.0), 1000.0, name)
    assert t1000.ppi == 1000.0 and t1000.width == 400
    assert len(t500) == len(t1000) == 1
    assert math.hypot(t1000.x[0] - 2 * t500.x[0], t1000.y[0] - 2 * t500.y[0]) <= 6.0
    assert _angle_diff(float(t1000.angle[0]), float(t500.angle[0])) <= math.radians(10)


def _direction(t: Template) -> tuple[np.ndarray, np.ndarray]:
    return np.cos(t.angle), -np.sin(t.angle)


ANGLE_TOL = math.radians(20)


def _match_share(a_xy, a_dir, b_xy, b_dir, xy_tol=4.0, angle_tol=ANGLE_TOL) -> float:
    """Share of minutiae of a that have a partner in b within the tolerances."""
    hits = 0
    for (x, y), (dx, dy) in zip(a_xy, a_dir, strict=True):
        d = np.hypot(b_xy[:, 0] - x, b_xy[:, 1] - y)
        cos = b_dir[:, 0] * dx + b_dir[:, 1] * dy
        if np.any((d <= xy_tol) & (cos >= math.cos(angle_tol))):
            hits += 1
    return hits / max(1, len(a_xy))


@pytest.mark.parametrize("transform", ["transpose", "rot90", "flip_lr"])
@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_geometric_transforms_move_minutiae_accordingly(transform, name):
    img, _ = several_minutiae_image()
    h, w = img.shape
    base = extract(img, 500.0, name)
    dx, dy = _direction(base)
    x, y = base.x.astype(float), base.y.astype(float)
    if transform == "transpose":
        moved = img.T
        exp_xy = np.stack([y, x], 1)
        exp_dir = np.stack([dy, dx], 1)
    elif transform == "rot90":  # counter-clockwise as seen: (x, y) -> (y, W - 1 - x)
        moved = np.rot90(img)
        exp_xy = np.stack([y, w - 1 - x], 1)
        exp_dir = np.stack([dy, -dx], 1)
    else:
        moved = img[:, ::-1]
        exp_xy = np.stack([w - 1 - x, y], 1)
        exp_dir = np.stack([-dx, dy], 1)
    got = extract(np.ascontiguousarray(moved), 500.0, name)
    got_xy = np.stack([got.x, got.y], 1).astype(float)
    got_dir = np.stack(_direction(got), 1)
    assert len(base) >= 3
    assert _match_share(exp_xy, exp_dir, got_xy, got_dir) >= 0.8
    assert _match_share(got_xy, got_dir, exp_xy, exp_dir) >= 0.8


@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_blank_image_has_no_minutiae_and_zero_quality(name):
    t = extract(np.full((300, 300), 220, np.uint8), 500.0, name)
    assert len(t) == 0 and t.image_quality == 0


@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_noise_image_yields_few_minutiae(name):
    rng = np.random.default_rng(1)
    t = extract(rng.integers(0, 256, (300, 300)).astype(np.uint8), 500.0, name)
    assert len(t) <= 3


@pytest.mark.parametrize("name", CONTRACT_EXTRACTORS)
def test_rejects_non_grayscale_input(name):
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((100, 100, 3), np.uint8), 500.0, name)
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((100, 100), np.float32), 500.0, name)


def test_debug_stages_are_inspectable_and_consistent():
    img, _ = several_minutiae_image()
    t, st = run_pipeline(img, 500.0, debug=True)
    assert st is not None
    assert st.mask.shape == st.orientation.shape == st.skeleton.shape == img.shape
    assert st.mask_input_frame.shape == img.shape
    assert np.all((st.orientation >= 0) & (st.orientation < math.pi))
    assert np.all(st.skeleton[~st.mask] == 0)
    # The skeleton is thin: no 2x2 block of ridge pixels.
    s = st.skeleton.astype(bool)
    assert not np.any(s[1:, 1:] & s[:-1, 1:] & s[1:, :-1] & s[:-1, :-1])
    assert sum(st.removed.values()) + len(t) == len(st.candidates)
    assert len(st.minutiae) == len(t)


def test_orientation_field_follows_the_ridges():
    # Ridges along 30 degrees (ISO, counter-clockwise as seen): image-frame direction
    # atan2(dy, dx) = -30 degrees, i.e. 150 degrees folded into [0, 180).
    a = math.radians(30)
    yy, xx = np.mgrid[0:200, 0:200].astype(float)
    across = -xx * math.sin(-a) + yy * math.cos(-a)
    img = np.clip(128 + 90 * np.cos(2 * math.pi * across / 9.0), 0, 255).astype(np.uint8)
    _, st = run_pipeline(img, 500.0, debug=True)
    theta = float(np.median(st.orientation[60:140, 60:140]))
    assert abs(theta - math.radians(150)) < math.radians(3)
    assert abs(float(np.median(st.period[st.mask])) - 9.0) < 1.0


def test_crossing_number_marks_ending_and_fork():
    s = np.zeros((9, 9), np.uint8)
    s[4, 1:5] = 1  # a stem ...
    s[3, 5] = s[2, 6] = 1  # ... forking up-right
    s[5, 5] = s[6, 6] = 1  # ... and down-right
    cn = crossing_number(s)
    assert cn[4, 1] == 1
    assert cn[4, 4] == 3
    assert cn[4, 2] == 2


def test_cap_keeps_at_most_max_minutiae():
    from dataclasses import replace

    img, _ = several_minutiae_image()
    t, st = run_pipeline(img, 500.0, params=replace(DEFAULT_PARAMS, max_minutiae=2),
                         debug=True)
    assert len(t) == 2
    assert st.removed["cap"] >= 1
