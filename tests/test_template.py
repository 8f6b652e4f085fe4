"""Tests of the in-memory minutiae template (matcher/template.py): validation and scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matcher.template import (
    MAX_MINUTIAE,
    Finger,
    MinutiaKind,
    TemplateError,
    finger_from_code,
    make_template,
)


def three_minutiae(**kw):
    args = {"width": 300, "height": 400}
    args.update(kw)
    return make_template([10, 150.5, 299], [0, 200, 399.5], [0.1, 3.0, 6.0], **args)


def test_a_valid_template_has_the_documented_dtypes_and_defaults():
    t = three_minutiae()
    assert len(t) == 3
    assert (t.x.dtype, t.y.dtype, t.angle.dtype) == (np.float32,) * 3
    assert (t.kind.dtype, t.quality.dtype) == (np.uint8, np.uint8)
    assert t.kind.tolist() == [MinutiaKind.ENDING] * 3 and t.quality.tolist() == [0, 0, 0]
    assert t.ppi == 500.0 and t.finger is Finger.UNKNOWN


@pytest.mark.parametrize(
    ("x", "y"), [(300, 10), (10, 400), (-0.5, 10), (10, -1), (float("nan"), 1), (1, math.inf)]
)
def test_a_minutia_outside_the_image_is_rejected(x, y):
    with pytest.raises(TemplateError, match="outside|finite"):
        make_template([5, x], [5, y], [0, 0], width=300, height=400)


@pytest.mark.parametrize("ppi", [50, 99.9, 2001, float("nan"), math.inf, 0, -500])
def test_an_absurd_resolution_is_rejected(ppi):
    with pytest.raises(TemplateError, match="ppi"):
        three_minutiae(ppi=ppi)


@pytest.mark.parametrize("kind", [3, 255, -1])
def test_an_unknown_minutia_kind_is_rejected(kind):
    with pytest.raises(TemplateError, match="kind"):
        three_minutiae(kind=[1, kind, 2])


def test_quality_outside_0_to_100_is_rejected():
    with pytest.raises(TemplateError, match="quality"):
        three_minutiae(quality=[0, 101, 5])
    with pytest.raises(TemplateError, match="image quality"):
        three_minutiae(image_quality=101)


def test_too_many_minutiae_are_rejected_and_the_limit_is_accepted():
    n = MAX_MINUTIAE
    assert len(make_template(np.ones(n), np.ones(n), np.zeros(n), width=4, height=4)) == n
    with pytest.raises(TemplateError, match="more than"):
        make_template(np.ones(n + 1), np.ones(n + 1), np.zeros(n + 1), width=4, height=4)


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (4097, 10), (-3, 10)])
def test_an_absurd_image_size_is_rejected(width, height):
    with pytest.raises(TemplateError, match="image size"):
        make_template([], [], [], width=width, height=height)


def test_arrays_of_different_lengths_are_rejected():
    with pytest.raises(TemplateError, match="differ in length"):
        make_template([1, 2], [1], [0, 0], width=10, height=10)


def test_finger_codes_outside_0_to_10_are_rejected():
    assert finger_from_code(7) is Finger.LEFT_INDEX and Finger.LEFT_INDEX.label == "left index"
    with pytest.raises(TemplateError, match="FGP"):
        three_minutiae(finger=11)
    with pytest.raises(TemplateError, match="FGP"):
        three_minutiae().with_finger(-1)


def test_angles_wrap_into_0_to_2pi():
    t = make_template(
        [1] * 5, [1] * 5, [-math.pi / 2, 2 * math.pi, 7 * math.pi, -4 * math.pi, 0.25],
        width=4, height=4,
    )
    assert np.allclose(t.angle, [1.5 * math.pi, 0, math.pi, 0, 0.25], atol=1e-6)
    assert np.all((t.angle >= 0) & (t.angle <= 2 * math.pi))


def test_at_ppi_scales_coordinates_and_size_and_keeps_angles():
    t = three_minutiae(ppi=500, kind=[0, 1, 2], quality=[10, 20, 30], finger=2)
    hi = t.at_ppi(1000)
    assert (hi.ppi, hi.width, hi.height) == (1000.0, 600, 800)
    assert hi.x.tolist() == [20, 301, 598] and hi.y.tolist() == [0, 400, 799]
    np.testing.assert_array_equal(hi.angle, t.angle)
    np.testing.assert_array_equal(hi.kind, t.kind)
    assert hi.finger is Finger.RIGHT_INDEX
    back = hi.at_ppi(500)
    assert (back.ppi, back.width, back.height) == (500.0, 300, 400)
    assert back.same_minutiae(t, xy_tol=1e-4)
    np.testing.assert_array_equal(back.quality, t.quality)
    assert t.at_ppi(500) is t


def test_same_minutiae_notices_a_moved_or_turned_minutia():
    t = three_minutiae()
    moved = make_template(t.x + np.float32([0, 0.6, 0]), t.y, t.angle, width=300, height=400)
    turned = make_template(t.x, t.y, t.angle + np.float32([0, 0, 0.01]), width=300, height=400)
    assert t.same_minutiae(three_minutiae())
    assert not t.same_minutiae(moved)
    assert not t.same_minutiae(turned) and t.same_minutiae(turned, angle_tol=0.02)
