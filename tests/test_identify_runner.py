"""The 1:N runner (benchmarks.identify) at a small size: its figures and its real-data mode."""

import json
from pathlib import Path

import pytest

from benchmarks import identify
from matcher.prefilter import LshPrefilter

DATA = identify.data_dir() / "fvc2002-iso"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("INK_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_runner_prints_exactly_the_issue_keys(cache, capsys) -> None:
    assert identify.main(["--gallery-size", "600", "--probes", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["gallery_size", "probes", "p50_ms", "p95_ms", "rank1_hit_rate",
                         "exhaustive_rank1_hit_rate", "penetration", "bytes_per_finger",
                         "enrol_per_s"]
    assert out["gallery_size"] == 600 and out["probes"] == 6
    # 600 fingers are below the candidate stage's size: every finger is scored
    assert out["penetration"] == 1.0
    assert out["rank1_hit_rate"] == out["exhaustive_rank1_hit_rate"] > 0.5
    assert 0 < out["bytes_per_finger"] < 16_000 and out["enrol_per_s"] > 0


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/fvc2002-iso")
def test_real_mates_are_among_the_candidates(cache) -> None:
    # 10 % of 2,030 fingers: about 200 candidates per search, so chance alone would
    # keep a tenth of the mates. (In so small a gallery the 29 other real fingers are
    # 1.4 % of it and crowd the real mates more than a large gallery's would: at
    # 100,000 fingers 2 % keeps about 93 % of them.)
    prefilter = LshPrefilter(share=0.1, min_keep=1, from_rows=0, min_segment_rows=0)
    out = identify.real_mates(2000, prefilter=prefilter, log=lambda *a, **k: None)
    assert out["real_fingers"] == 30 and out["probes"] == 210
    assert out["gallery_size"] == 2030
    assert out["candidate_recall"] >= 0.85
    assert out["rank1_hit_rate"] >= out["candidate_recall"] - 0.02
    assert out["exhaustive_rank1_hit_rate"] >= 0.9
