"""Tests of the synthetic fingerprint generator (fixtures/) and the committed demo set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures.area import CANVAS_HEIGHT, CANVAS_WIDTH, sample_area
from fixtures.demo import DEMO_DIR, DEMO_SEED, demo_prints, load_demo_manifest
from fixtures.generate import main as generate_main
from fixtures.impressions import make_impression, make_print
from fixtures.masters import make_master
from fixtures.orientation import (
    CLASS_SHARES,
    FieldParams,
    PatternClass,
    Singularities,
    orientation_field,
    sample_pattern,
)
from fixtures.sensors import SENSORS, sensor_named


@pytest.fixture(scope="module")
def master():
    return make_master(11, "S0001", 2)


def test_same_seed_gives_identical_prints(master):
    again = make_master(11, "S0001", 2)
    assert np.array_equal(master.ridges, again.ridges)
    a = make_impression(master, SENSORS["r307"], 11, 3)
    b = make_impression(again, SENSORS["r307"], 11, 3)
    assert np.array_equal(a, b)


def test_other_seed_impression_or_finger_gives_other_prints(master):
    base = make_impression(master, SENSORS["r307"], 11, 1).astype(int)
    other_impression = make_impression(master, SENSORS["r307"], 11, 2).astype(int)
    other_finger = make_print(11, "S0001", 7, 1, SENSORS["r307"]).astype(int)
    other_seed = make_print(12, "S0001", 2, 1, SENSORS["r307"]).astype(int)
    for other in (other_impression, other_finger, other_seed):
        assert np.mean(np.abs(base - other)) > 10.0


@pytest.mark.parametrize("name", sorted(SENSORS))
def test_sensor_geometry_and_look(master, name):
    sensor = sensor_named(name)
    image = make_impression(master, sensor, 11, 1)
    assert image.dtype == np.uint8
    assert image.shape == (sensor.height, sensor.width)
    # Dark ridges on a light background: both must be present and well apart.
    assert np.percentile(image, 95) > 170
    assert np.percentile(image, 5) < 110
    if sensor.bits == 4:
        assert np.all(image % 17 == 0)  # 4-bit grey expanded by * 17, as the ZFM driver does


def test_unknown_sensor_is_refused():
    with pytest.raises(ValueError, match="r307"):
        sensor_named("r999")


def test_master_has_plausible_ridge_period(master):
    # Count sign changes along the middle row of the pad: two per ridge period.
    row = master.ridges[int(master.area.top + 0.6 * (master.area.bottom - master.area.top))]
    inside = row[master.mask[int(master.area.top + 0.6 * (master.area.bottom -
                                                            master.area.top))] > 0.99]
    crossings = np.count_nonzero(np.diff(np.sign(inside)) != 0)
    period = 2.0 * inside.size / max(crossings, 1)
    assert 7.0 < period < 13.0


def test_core_and_delta_have_poincare_index_plus_and_minus_half():
    area = sample_area(np.random.default_rng(0))
    core, delta = (200.0, 230.0), (110.0, 360.0)
    params = FieldParams(PatternClass.RIGHT_LOOP, Singularities((core,), (delta,)),
                         40.0, 100.0, 200.0)
    field = orientation_field(params, area, CANVAS_WIDTH, CANVAS_HEIGHT)

    def index(cx: float, cy: float) -> float:
        # Walk counter-clockwise as seen on the image (y down: angle goes negative in y).
        t = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
        xs = np.round(cx + 12 * np.cos(t)).astype(int)
        ys = np.round(cy - 12 * np.sin(t)).astype(int)
        a = field[ys, xs].astype(float)
        d = np.diff(np.append(a, a[0]))
        d = (d + math.pi / 2) % math.pi - math.pi / 2
        return float(d.sum() / (2 * math.pi))

    assert index(*core) == pytest.approx(0.5, abs=0.05)
    assert index(*delta) == pytest.approx(-0.5, abs=0.05)
    assert index(300.0, 120.0) == pytest.approx(0.0, abs=0.05)


def test_pattern_classes_follow_the_population_shares():
    rng = np.random.default_rng(3)
    draws = [sample_pattern(rng, 2) for _ in range(4000)]
    share = {c: draws.count(c) / len(draws) for c in PatternClass}
    assert share[PatternClass.RIGHT_LOOP] == pytest.approx(CLASS_SHARES[2], abs=0.03)
    assert share[PatternClass.WHORL] == pytest.approx(CLASS_SHARES[4], abs=0.03)
    left_hand = [sample_pattern(rng, 7) for _ in range(2000)]
    assert left_hand.count(PatternClass.LEFT_LOOP) > 5 * left_hand.count(PatternClass.RIGHT_LOOP)


def test_cli_writes_prints_and_manifest(tmp_path):
    assert generate_main(["--subjects", "2", "--fingers", "1", "--impressions", "2",
                          "--out", str(tmp_path), "--sensor", "r503", "--seed", "5",
                          "--workers", "1"]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert files == ["S0001_1_1.png", "S0001_1_2.png", "S0002_1_1.png", "S0002_1_2.png"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["subjects"] == ["S0001", "S0002"]
    assert manifest["fingers"] == [1]
    assert (manifest["sensor"], manifest["ppi"], manifest["seed"]) == ("r503", 500.0, 5)
    image = cv2.imread(str(tmp_path / "S0002_1_2.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (192, 192)
    assert np.array_equal(image, make_print(5, "S0002", 1, 2, SENSORS["r503"]))


# --- the committed demo set -------------------------------------------------------------

def _files(folder: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in folder.glob("*/*.png")}


def test_demo_manifest_matches_the_files():
    manifest = load_demo_manifest()
    listed = [p["file"] for p in manifest["watchlist"]["prints"] + manifest["probes"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == _files(DEMO_DIR)
    assert manifest["seed"] == DEMO_SEED
    assert [p.file for p in demo_prints()] == listed


def test_demo_probes_say_who_they_belong_to():
    manifest = load_demo_manifest()
    enrolled = {(p["subject"], p["finger"]): p for p in manifest["watchlist"]["prints"]}
    assert len(enrolled) == 100
    assert {s for s, _ in enrolled} == {f"S{i:04d}" for i in range(1, 51)}
    mates = [p for p in manifest["probes"] if p["mate"] is not None]
    strangers = [p for p in manifest["probes"] if p["mate"] is None]
    assert len(mates) == 10 and len(strangers) == 5
    for p in mates:
        enrolment = enrolled[(p["mate"], p["finger"])]
        assert p["impression"] != enrolment["impression"]
    for p in strangers:
        assert p["subject"] not in {s for s, _ in enrolled}
    for p in manifest["watchlist"]["prints"] + manifest["probes"]:
        assert Path(p["file"]).name == f"{p['subject']}_{p['finger']}_{p['impression']}.png"


def test_demo_is_small():
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


@pytest.mark.parametrize("index", [0, 57, 100, 110])  # watchlist, watchlist, mate, stranger
def test_regenerating_a_committed_print_reproduces_it(index):
    entry = demo_prints()[index]
    stored = cv2.imread(str(DEMO_DIR / entry.file), cv2.IMREAD_UNCHANGED)
    fresh = make_print(DEMO_SEED, entry.subject, entry.finger, entry.impression,
                       sensor_named(entry.sensor), enrolment=entry.enrolment)
    assert stored.shape == fresh.shape
    # Bit-exact on the machine that wrote it; a CPU with other SIMD paths may round a
    # filter output differently, so allow a sliver of pixels one grey step off.
    differ = np.abs(stored.astype(int) - fresh.astype(int)) > 17
    assert differ.mean() < 0.01
