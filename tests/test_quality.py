"""Image quality score for the re-scan gate: blank and noise low, clear prints high."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.extraction import extract
from gateway.extraction.quality import QUALITY_GATE_THRESHOLD, image_quality
from tests.test_extraction_synthetic import several_minutiae_image


def _data_dir() -> Path:
    env = os.environ.get("INK_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_threshold_is_inside_the_scale():
    assert 0 < QUALITY_GATE_THRESHOLD < 100


def test_blank_image_scores_zero():
    assert image_quality(np.full((300, 300), 230, np.uint8), 500.0) == 0


@pytest.mark.parametrize("blur", [0.0, 1.5, 3.0])
def test_noise_scores_below_the_gate(blur):
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (320, 320)).astype(np.uint8)
    if blur:
        noise = cv2.GaussianBlur(noise, (0, 0), blur)
    assert image_quality(noise, 500.0) < QUALITY_GATE_THRESHOLD


def test_clear_ridges_score_high_and_match_the_template_value():
    img, _ = several_minutiae_image()
    q = image_quality(img, 500.0)
    assert q >= 80
    assert extract(img, 500.0).image_quality == q


def test_small_area_and_added_noise_lower_the_score():
    img, _ = several_minutiae_image()
    full = image_quality(img, 500.0)
    small = image_quality(np.ascontiguousarray(img[100:190, 100:190]), 500.0)
    rng = np.random.default_rng(5)
    noisy = np.clip(img + rng.normal(0, 120, img.shape), 0, 255).astype(np.uint8)
    assert small < full
    assert image_quality(noisy, 500.0) < full


def test_resolution_is_taken_into_account():
    # The same ridges said to be at 1000 ppi cover a quarter of the area in mm^2, with
    # implausibly fine ridges once rescaled: the score must drop.
    img, _ = several_minutiae_image()
    assert image_quality(img, 1000.0) < image_quality(img, 500.0)


@pytest.mark.realdata
def test_real_prints_pass_the_gate():
    root = _data_dir()
    folders = [root / "fvc2000" / db for db in ("DB1_B", "DB2_B", "DB3_B")] + [
        root / "neurotechnology" / s for s in ("crossmatch", "uareu")]
    if not all(f.exists() for f in folders):
        pytest.skip("real data folder absent")
    for folder in folders:
        for path in sorted(folder.glob("*.tif"))[:3]:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            assert image_quality(image, 500.0) >= QUALITY_GATE_THRESHOLD, path.name
