"""Score calibration: -10*log10(FMR) from impostor scores, tail model, shipped table, CLI."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from matcher.calibration import (
    DEFAULT_PATH,
    MAX_SCORE,
    TAIL_COUNT,
    ScoreCalibration,
    StageCalibration,
    fit_stage,
    load_calibration,
    main,
)

DATA = Path(
    os.environ.get("INK_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
ISO = DATA / "fvc2002-iso"


def _exponential_impostors(n: int = 50_000, scale: float = 0.01, seed: int = 0) -> np.ndarray:
    """Raw scores whose true FMR is exp(-v / scale): the tail model is exact for them."""
    return np.random.default_rng(seed).exponential(scale, n)


def test_calibrated_score_tracks_true_fmr_inside_the_data_and_in_the_tail() -> None:
    stage = fit_stage(_exponential_impostors())
    for fmr in (0.5, 0.1, 0.01):  # empirical part
        v = -0.01 * math.log(fmr)
        assert stage(np.array([v]))[0] == pytest.approx(-10 * math.log10(fmr), abs=0.3)
    # fitted tail, still inside the data (50 impostors above)
    assert stage(np.array([-0.01 * math.log(1e-3)]))[0] == pytest.approx(30.0, abs=1.0)
    for fmr in (1e-5, 1e-6):  # beyond the largest of 50,000 impostors
        v = -0.01 * math.log(fmr)
        assert stage(np.array([v]))[0] == pytest.approx(-10 * math.log10(fmr), abs=3.0)


def test_map_is_monotone_zero_at_the_bottom_and_saturates_smoothly() -> None:
    stage = fit_stage(_exponential_impostors(seed=1))
    raw = np.linspace(0.0, 1.0, 20_001)
    cal = stage(raw)
    assert cal.dtype == np.float32
    assert cal[0] == 0.0
    assert np.all(np.diff(cal) >= 0)
    # strictly increasing in the tail (below float32 resolution of the saturation):
    # strong candidates keep their order
    tail = cal[(raw > stage.raw[-1]) & (cal < 90)].astype(np.float64)
    assert tail.size > 100 and np.all(np.diff(tail) > 0)
    assert cal.max() <= MAX_SCORE


def test_inverse_map() -> None:
    stage = fit_stage(_exponential_impostors(seed=2))
    for score in (3.0, 13.0, 20.0, 35.0, 45.0):
        raw = stage.raw_for(score)
        assert stage(np.array([raw]))[0] == pytest.approx(score, abs=0.05)


def test_too_few_impostors_is_an_error() -> None:
    with pytest.raises(ValueError, match="impostor"):
        fit_stage(np.zeros(TAIL_COUNT))


def test_table_round_trip_and_rejects_non_monotone(tmp_path: Path) -> None:
    stage = fit_stage(_exponential_impostors(seed=3))
    cal = ScoreCalibration(lssr=stage, cheap=stage, impostors=50_000, source="synthetic")
    path = tmp_path / "cal.json"
    cal.save(path)
    back = load_calibration(path)
    probe = np.linspace(0, 0.2, 101)
    np.testing.assert_allclose(back.lssr(probe), cal.lssr(probe), atol=1e-3)
    bad = {"raw": [0.0, 0.2, 0.1], "score": [0, 1, 2], "tail_slope": 1.0}
    with pytest.raises(ValueError, match="monotone"):
        StageCalibration.from_json(bad)


def test_shipped_table() -> None:
    cal = load_calibration()
    assert DEFAULT_PATH.is_file()
    assert cal.impostors >= 10_000
    for stage in (cal.lssr, cal.cheap):
        assert np.all(np.diff(stage.raw) > 0) and np.all(np.diff(stage.score) >= 0)
        assert stage.tail_slope > 0
        assert stage(np.array([0.0]))[0] == 0.0


@pytest.mark.realdata
@pytest.mark.skipif(not ISO.is_dir(), reason="../shared/data/fvc2002-iso not present")
def test_recalibration_command_on_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "mcc_calibration.json"
    assert main(["--templates", str(ISO / "DB1_B"), "--out", str(out)]) == 0
    cal = load_calibration(out)
    assert cal.impostors == 2880  # every cross-finger pair of 10 fingers x 8 impressions
    assert "DB1_B" in cal.source
    # about 1 % of the impostors it was fitted on score 20 or more
    from matcher.formats import decode_template
    from matcher.mcc import MccComparator

    mcc = MccComparator(calibration=cal)
    files = sorted((ISO / "DB1_B").glob("*.iso"))
    enc = [mcc.encode(decode_template(f.read_bytes())) for f in files]
    fingers = np.array([f.stem.split("_")[0] for f in files])
    gallery = mcc.stack(enc)
    high = total = 0
    for i, e in enumerate(enc):
        cheap, lssr = mcc.raw_scores(e, gallery, gate=0.0)
        s = cal.lssr(lssr)[(fingers != fingers[i]) & (np.arange(len(enc)) > i)]
        high += int((s >= 20).sum())
        total += s.size
    assert total == 2880
    assert 0.004 < high / total < 0.025
