"""External minutia detectors (MINDTCT via nbis-py, LEADER via onnxruntime) and the
stages we wrap around them: conventions checked on synthetic minutiae of known
position, direction and kind, so that an angle or axis error in either library's
output (the classic integration failure) shows up here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.extraction import DEFAULT_EXTRACTOR, extract
from gateway.extraction.detected import DetectedMinutiae
from gateway.extraction.detector_extraction import (
    DetectorSettings,
    FrontStages,
    extract_with_detector,
    front_stages,
)
from gateway.extraction.enhanced_mindtct import mindtct_on_image
from gateway.extraction.extractors import extractor_fingerprint
from gateway.extraction.leader import leader_minutiae, leader_model_path
from gateway.extraction.mindtct import mindtct_minutiae
from gateway.extraction.params import DEFAULT_PARAMS
from matcher.template import MinutiaKind
from tests.test_extraction_synthetic import several_minutiae_image, single_minutia_image

DETECTORS = {"mindtct": mindtct_minutiae,
             "leader": leader_minutiae}
EXTRACTORS = ["mindtct", "ink-mindtct", "leader"]


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


@pytest.mark.parametrize("detector", DETECTORS.values(), ids=list(DETECTORS))
@pytest.mark.parametrize("degrees", [0, 60, 135, 200, 290])
@pytest.mark.parametrize("negative", [False, True])
def test_raw_detector_reports_iso_position_angle_and_kind(detector, degrees, negative):
    angle = math.radians(degrees)
    img = single_minutia_image(256, angle)
    if negative:
        img = 255 - img
    found = detector(img)
    near = np.hypot(found.x - 127.5, found.y - 127.5) <= 6.0
    assert near.sum() == 1, "exactly one minutia at the singularity"
    i = int(np.flatnonzero(near)[0])
    # MINDTCT quantises to 11.25 degrees; both must point the ISO way (not y-flipped,
    # not reversed), which an error of 2*angle or pi would break for these angles.
    assert _angle_diff(float(found.angle[i]), angle) <= math.radians(12)
    expected = MinutiaKind.BIFURCATION if not negative else MinutiaKind.ENDING
    assert found.kind[i] == expected
    assert 0.0 <= float(found.confidence[i]) <= 1.0


@pytest.mark.parametrize("name", EXTRACTORS)
def test_extractor_finds_the_known_minutiae_in_the_input_frame(name):
    img, truth = several_minutiae_image()
    t = extract(img, 500.0, extractor=name)
    assert (t.width, t.height, t.ppi) == (img.shape[1], img.shape[0], 500.0)
    for cx, cy, _sign in truth:
        assert np.min(np.hypot(t.x - cx, t.y - cy)) <= 6.0
    assert np.all((t.quality >= 1) & (t.quality <= 100))
    assert t.image_quality > 0


@pytest.mark.parametrize("name", EXTRACTORS)
def test_other_resolutions_map_back_to_the_input_frame(name):
    # The same pattern scanned at 1000 ppi: the detector runs at 500 ppi, the template
    # comes back in the 1000 ppi image's pixels.
    img = single_minutia_image(200, math.radians(60))
    big = np.kron(img, np.ones((2, 2), np.uint8))
    t = extract(big, 1000.0, extractor=name)
    assert t.ppi == 1000.0 and (t.width, t.height) == (400, 400)
    assert np.min(np.hypot(t.x - 199.5, t.y - 199.5)) <= 8.0


@pytest.mark.parametrize("name", EXTRACTORS)
def test_blank_image_gives_no_minutiae(name):
    t = extract(np.full((200, 200), 200, np.uint8), 500.0, extractor=name)
    assert len(t) == 0 and t.image_quality == 0


def _fake_detector(front: FrontStages) -> DetectedMinutiae:
    # A detector that reports one minutia in the middle and one in the image's corner,
    # with a direction 20 degrees off the ridge axis.
    return DetectedMinutiae(
        np.array([100.0, 2.0], np.float32), np.array([100.0, 2.0], np.float32),
        np.array([math.radians(20), 0.0], np.float32),
        np.array([MinutiaKind.ENDING, MinutiaKind.ENDING], np.uint8),
        np.array([0.9, 0.95], np.float32),
    )


def test_wrapper_drops_rim_minutiae_and_refines_angles_on_the_field():
    # Horizontal ridges filling the image: the field's axis is 0 / pi.
    yy = np.mgrid[0:200, 0:200][0].astype(np.float64)
    img = np.clip(128 + 90 * np.cos(2 * math.pi * yy / 9.0), 0, 255).astype(np.uint8)
    plain = DetectorSettings(border_margin=8.0, refine_angles=False)
    t, run = extract_with_detector(img, 500.0, _fake_detector, plain, debug=True)
    assert len(t) == 1 and run.removed["rim"] == 1
    assert math.isclose(float(t.angle[0]), math.radians(20), abs_tol=1e-5)
    refined = extract_with_detector(img, 500.0, _fake_detector,
                                    DetectorSettings(border_margin=8.0, refine_angles=True))[0]
    assert _angle_diff(float(refined.angle[0]), 0.0) <= math.radians(3)


def _row_detector(front: FrontStages) -> DetectedMinutiae:
    # Minutiae 6, 16, 26 and 100 px from the image's left edge, mid-height.
    x = np.array([5.0, 15.0, 25.0, 99.0], np.float32)
    return DetectedMinutiae(x, np.full(4, 100.0, np.float32), np.zeros(4, np.float32),
                            np.full(4, MinutiaKind.ENDING, np.uint8), np.full(4, 0.9, np.float32))


@pytest.mark.parametrize("period", [7.0, 12.0])
def test_rim_margin_in_ridge_periods_follows_the_print(period):
    # The same margin in periods drops more of the rim on coarser ridges.
    yy = np.mgrid[0:200, 0:200][0].astype(np.float64)
    img = np.clip(128 + 90 * np.cos(2 * math.pi * yy / period), 0, 255).astype(np.uint8)
    _, run = extract_with_detector(img, 500.0, _row_detector,
                                   DetectorSettings(border_periods=1.5), debug=True)
    measured = float(np.median(front_stages(img, 500.0, DEFAULT_PARAMS).period))
    assert abs(measured - period) <= 2.0
    margin = 1.5 * measured
    expected_kept = [x for x in (5.0, 15.0, 25.0, 99.0) if x + 1 > margin]
    assert sorted(run.kept.x.tolist()) == expected_kept
    assert run.removed["rim"] == 4 - len(expected_kept)


def test_wrapper_caps_by_confidence():
    img, _ = several_minutiae_image()
    t = extract_with_detector(img, 500.0, mindtct_on_image, DetectorSettings(max_minutiae=2))[0]
    full = extract_with_detector(img, 500.0, mindtct_on_image, DetectorSettings())[0]
    assert len(t) == 2 < len(full)
    assert sorted(t.quality.tolist()) == sorted(full.quality.tolist())[-2:]


def test_leader_model_ships_with_the_installed_package():
    path = leader_model_path()
    assert path.name == "LEADER.onnx" and path.stat().st_size > 1_000_000


def test_fingerprints_differ_between_extractors_and_are_stable():
    names = ["ink", "mindtct", "leader"]
    prints = [extractor_fingerprint(n) for n in names]
    assert len(set(prints)) == 3
    assert prints == [extractor_fingerprint(n) for n in names]
    assert extractor_fingerprint(None) == extractor_fingerprint(DEFAULT_EXTRACTOR)


def test_concurrent_extractions_give_the_sequential_results():
    # The gateway may extract in several threads; NBIS is serialised inside.
    from concurrent.futures import ThreadPoolExecutor

    images = [single_minutia_image(200, math.radians(a)) for a in (10, 100, 190, 280)]
    expected = [extract(im, 500.0, "ink-mindtct") for im in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda im: extract(im, 500.0, "ink-mindtct"), images))
    assert all(a.same_minutiae(b) for a, b in zip(expected, got, strict=True))
