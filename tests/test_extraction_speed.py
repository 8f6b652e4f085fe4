"""The extraction speed runner (benchmarks.extraction_speed) on the committed demo prints."""

import json
from pathlib import Path

from benchmarks import extraction_speed

PROBES = Path(__file__).resolve().parents[1] / "fixtures" / "demo" / "probes"


def test_runner_reports_cpu_per_image(capsys) -> None:
    assert extraction_speed.main(["--images", str(PROBES), "--limit", "3", "--extractor",
                                  "ink", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["folder", "extractor", "images", "median_ms", "p95_ms", "max_ms",
                         "wall_median_ms", "load_average_1min"]
    assert out["images"] == 3 and out["extractor"] == "ink"
    assert 0 < out["median_ms"] <= out["p95_ms"] <= out["max_ms"]


def test_full_frame_fills_500_by_500() -> None:
    (image,) = list(extraction_speed.images(PROBES, 1, full_frame=True))
    assert image.shape == (500, 500)
