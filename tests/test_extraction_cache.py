"""The benchmark runner's cache of extracted templates (benchmarks.fvc.TemplateCache)."""

from __future__ import annotations

import math

import pytest

from benchmarks.fvc import TemplateCache
from gateway.extraction import extract
from tests.test_extraction_synthetic import several_minutiae_image


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("INK_NO_CACHE", raising=False)
    return tmp_path


def test_round_trip_keeps_the_template(cache_dir):
    img, _ = several_minutiae_image()
    t = extract(img, 500.0, "ink")
    data = img.tobytes()
    cache = TemplateCache("ink")
    assert cache.get(data, 500.0) is None
    cache.put(data, 500.0, t)
    back = TemplateCache("ink").get(data, 500.0)
    assert back is not None and back.same_minutiae(t, xy_tol=1e-4, angle_tol=1e-6)
    assert (back.width, back.height, back.ppi, back.image_quality) == (
        t.width, t.height, t.ppi, t.image_quality)
    assert math.isclose(float(back.quality.sum()), float(t.quality.sum()))
    # Another extractor, another ppi or other bytes do not see it.
    assert TemplateCache("mindtct").get(data, 500.0) is None
    assert cache.get(data, 1000.0) is None
    assert cache.get(data + b"x", 500.0) is None


def test_can_be_turned_off(cache_dir, monkeypatch):
    img, _ = several_minutiae_image()
    t = extract(img, 500.0, "ink")
    monkeypatch.setenv("INK_NO_CACHE", "1")
    cache = TemplateCache("ink")
    cache.put(img.tobytes(), 500.0, t)
    assert cache.get(img.tobytes(), 500.0) is None
    assert not any(cache_dir.rglob("*.npz"))
