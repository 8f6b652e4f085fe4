"""Tests of the synthetic fingerprint generator (fixtures/) and the committed demo set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.fft as sfft

from fixtures.area import CANVAS_HEIGHT, CANVAS_WIDTH, sample_area
from fixtures.contact_sheet import LABEL, contact_sheet
from fixtures.demo import DEMO_DIR, DEMO_SEED, demo_prints, load_demo_manifest
from fixtures.distortion import sample_placement
from fixtures.evaluate import compare
from fixtures.generate import main as generate_main
from fixtures.impressions import make_impression, make_print, render_impression
from fixtures.masters import make_master
from fixtures.orientation import (
    CLASS_SHARES,
    FieldParams,
    PatternClass,
    Singularities,
    orientation_field,
    sample_field,
    sample_pattern,
)
from fixtures.ridges import _gabor_multiplier
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
    # The strongest frequency of 64 x 64 patches across the pad, whatever way the ridges
    # run there (counting crossings along a row overstates it where ridges run obliquely).
    a = master.area
    periods = []
    for fy in (0.3, 0.45, 0.6, 0.75):
        for fx in (-0.3, 0.0, 0.3):
            cy = int(a.top + fy * (a.bottom - a.top))
            cx = int(a.centre[0] + fx * 0.5 * (a.left + a.right))
            patch = master.ridges[cy - 32:cy + 32, cx - 32:cx + 32]
            spectrum = np.abs(np.fft.fftshift(np.fft.fft2(patch - patch.mean())))
            iy, ix = np.unravel_index(np.argmax(spectrum), spectrum.shape)
            periods.append(64.0 / math.hypot(iy - 32, ix - 32))
    assert 7.0 < np.median(periods) < 13.0
    assert np.median(periods) == pytest.approx(master.mean_period, rel=0.2)


def _poincare_index(field: np.ndarray, cx: float, cy: float, radius: float = 12.0) -> float:
    # Walk counter-clockwise as seen on the image (y down: angle goes negative in y).
    t = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
    xs = np.round(cx + radius * np.cos(t)).astype(int)
    ys = np.round(cy - radius * np.sin(t)).astype(int)
    a = field[ys, xs].astype(float)
    d = np.diff(np.append(a, a[0]))
    d = (d + math.pi / 2) % math.pi - math.pi / 2
    return float(d.sum() / (2 * math.pi))


def test_core_and_delta_have_poincare_index_plus_and_minus_half():
    area = sample_area(np.random.default_rng(0))
    core, delta = (200.0, 230.0), (110.0, 360.0)
    params = FieldParams(PatternClass.RIGHT_LOOP, Singularities((core,), (delta,)),
                         40.0, 100.0, 200.0)
    field = orientation_field(params, area, CANVAS_WIDTH, CANVAS_HEIGHT)
    assert _poincare_index(field, *core) == pytest.approx(0.5, abs=0.05)
    assert _poincare_index(field, *delta) == pytest.approx(-0.5, abs=0.05)
    assert _poincare_index(field, 300.0, 120.0) == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("pattern", [PatternClass.LEFT_LOOP, PatternClass.WHORL])
def test_warped_and_drifting_fields_keep_their_singular_points(pattern):
    # The per-finger warps and drift bend the flow but must neither move nor remove a
    # core or delta, nor add one: the index is +-1/2 at each and 0 on a loop round none.
    rng = np.random.default_rng(5)
    area = sample_area(rng)
    params = sample_field(rng, pattern, area)
    assert params.warps and params.flow
    field = orientation_field(params, area, CANVAS_WIDTH, CANVAS_HEIGHT)
    plain = orientation_field(FieldParams(*[getattr(params, f) for f in (
        "pattern", "singular", "arch_height", "arch_width", "arch_cx")]), area,
        CANVAS_WIDTH, CANVAS_HEIGHT)
    diff = np.abs(field - plain)
    assert np.median(np.minimum(diff, math.pi - diff)) > 0.05  # the flow did change
    for core in params.singular.cores:
        assert _poincare_index(field, *core, radius=6) == pytest.approx(0.5, abs=0.05)
    for delta in params.singular.deltas:
        assert _poincare_index(field, *delta, radius=6) == pytest.approx(-0.5, abs=0.05)
    # A big loop round every singular point sums them all.
    everything = params.singular.cores + params.singular.deltas
    cx = float(np.mean([p[0] for p in everything]))
    cy = float(np.mean([p[1] for p in everything]))
    radius = 15 + max(math.hypot(x - cx, y - cy) for x, y in everything)
    expected = 0.5 * (len(params.singular.cores) - len(params.singular.deltas))
    assert _poincare_index(field, cx, cy, radius) == pytest.approx(expected, abs=0.05)


def test_gabor_multiplier_filters_like_the_complex_spectrum():
    # The CCS packing of OpenCV's real DFT is easy to get wrong at the edge rows and
    # columns: compare with filtering through scipy's rfft2 and a plain multiply.
    shape = (48, 36)
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    theta, period, sigma = 0.7, 6.0, 2.0
    multiplier = _gabor_multiplier(shape, theta, period, sigma)
    ours = cv2.idft(cv2.dft(image) * multiplier, flags=cv2.DFT_REAL_OUTPUT)
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    ux, uy = math.sin(theta) / period, math.cos(theta) / period
    k = 2.0 * math.pi**2 * sigma**2
    h = (np.exp(-k * ((fy - uy) ** 2 + (fx - ux) ** 2))
         + np.exp(-k * ((fy + uy) ** 2 + (fx + ux) ** 2)))
    h[0, 0] = 0.0
    reference = sfft.irfft2(sfft.rfft2(image) * h, s=shape)
    assert np.abs(ours - reference).max() < 1e-4 * np.abs(reference).max()


def test_enrolment_touches_are_never_hurried():
    rng = np.random.default_rng(2)
    casual = [sample_placement(rng, (0.0, 0.0)).rotation for _ in range(3000)]
    careful = [sample_placement(rng, (0.0, 0.0), careless_share=0.0).rotation
               for _ in range(3000)]
    # Casual touches include hurried ones turned past the careful limit of 20 degrees.
    assert max(abs(r) for r in careful) <= math.radians(20.0) + 1e-9
    assert np.mean(np.abs(casual) > math.radians(20.0)) > 0.01


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


def test_unhurried_changes_only_the_hurried_touches(master):
    from fixtures.distortion import CARELESS_SHARE
    from fixtures.seeding import impression_rng

    # The first draw of an impression decides whether it is hurried.
    hurried = [i for i in range(1, 40)
               if impression_rng(11, "S0001", 2, i).random() < CARELESS_SHARE]
    calm = [i for i in range(1, 40) if i not in hurried]
    assert hurried and calm
    sensor = SENSORS["r307"]
    for i in (hurried[0], calm[0]):
        default = make_impression(master, sensor, 11, i)
        unhurried = make_impression(master, sensor, 11, i, unhurried=True)
        assert np.array_equal(default, unhurried) == (i in calm)


def test_compare_reports_minutiae_scores_and_pictures(tmp_path, monkeypatch):
    # A tiny generated set through the same path as the synthetic-versus-real report;
    # its templates go to a cache of its own, not the user's.
    monkeypatch.setenv("INK_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "set"
    assert generate_main(["--subjects", "2", "--fingers", "2,7", "--impressions", "2",
                          "--out", str(folder), "--seed", "3", "--workers", "1"]) == 0
    histogram, scores = tmp_path / "minutiae.png", tmp_path / "scores.png"
    report = compare([folder], workers=1, histogram=histogram, scores_png=scores)
    result = report["sets"][f"{tmp_path.name}/set"]
    assert (result["fingers"], result["images"]) == (4, 8)
    assert sum(result["minutiae"]["histogram_10"]) == 8
    assert result["genuine"]["n"] == 4 and result["impostor"]["n"] == 24
    assert sum(result["impostor"]["histogram_4"]) == 24
    assert result["genuine"]["median"] > result["impostor"]["p95"]
    assert any((tmp_path / "cache").rglob("*.npz"))
    for path in (histogram, scores):
        picture = cv2.imread(str(path))
        assert picture is not None and picture.shape[1] == 900
        assert picture.std() > 10  # something was drawn on the white canvas


def test_contact_sheet_has_a_row_per_finger():
    sheet = contact_sheet(seed=4, fingers=2, impressions=1, sensor="r503")
    row = LABEL + SENSORS["r503"].height
    assert sheet.dtype == np.uint8
    assert sheet.shape[0] == 2 * (row + 6)
    assert sheet[:, :10].min() < 128  # the master is drawn at the left


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
                       sensor_named(entry.sensor), enrolment=entry.enrolment,
                       unhurried=entry.unhurried)
    assert stored.shape == fresh.shape
    # Bit-exact on the machine that wrote it; a CPU with other SIMD paths may round a
    # filter output differently, so allow a sliver of pixels one grey step off.
    differ = np.abs(stored.astype(int) - fresh.astype(int)) > 17
    assert differ.mean() < 0.01


# --- impression realism: creases, scars, uneven skin, poor touches, the glass -----------

def test_furrows_belong_to_the_finger_and_follow_the_seed():
    a = make_master(11, "S0002", 3)
    b = make_master(11, "S0002", 3)
    assert len(a.furrows) == len(b.furrows)
    assert all(np.array_equal(f.points, g.points) for f, g in zip(a.furrows, b.furrows,
                                                                  strict=True))
    if a.furrow_depth is not None:
        assert np.array_equal(a.furrow_depth, b.furrow_depth)
    # The marks draw from a stream of their own: other seeds give other marks.
    layouts = {tuple(round(float(f.points[0, 0])) for f in make_master(s, "S0002", 3).furrows)
               for s in range(11, 17)}
    assert len(layouts) > 3


def test_creases_crowd_the_lower_pad_and_vary_between_fingers():
    from fixtures.skin_marks import sample_furrows

    rng = np.random.default_rng(8)
    counts, depths = [], []
    for _ in range(400):
        area = sample_area(rng)
        furrows = [f for f in sample_furrows(rng, area) if not f.scar]
        counts.append(len(furrows))
        depths += [(float(np.mean(f.points[:, 1])) - area.top) / (area.bottom - area.top)
                   for f in furrows]
        for f in furrows:
            dx, dy = f.points[-1] - f.points[0]
            assert 0.9 <= f.width <= 7.7  # 0.15-0.4 mm, siblings a little finer
            # Creases cross the finger: never steeper than ~65 degrees (plus waver).
            assert abs(math.atan2(dy, dx) % math.pi - math.pi / 2) > math.radians(15)
    counts = np.asarray(counts)
    # Over-dispersed: many fingers nearly clean, a few heavily creased.
    assert counts.var() > 2.0 * counts.mean()
    assert 0.2 < np.mean(counts == 0) < 0.6
    assert np.mean(counts >= 10) > 0.03
    assert np.mean(np.asarray(depths) > 0.5) > 0.65  # more on the lower pad


def test_a_crease_lightens_a_thin_line_across_the_ridges(master):
    import dataclasses

    from fixtures.seeding import impression_rng
    from fixtures.skin_marks import Furrow, draw_furrows

    # One straight crease through the core region, where an enrolment touch centres.
    cx, cy = master.core_region
    line = np.stack([np.linspace(cx - 120, cx + 120, 16), np.full(16, cy + 20.0)], 1)
    crease = Furrow(line.astype(np.float32), 4.0, 1.0, False)
    depth = draw_furrows((crease,), CANVAS_WIDTH, CANVAS_HEIGHT, np.random.default_rng(0))
    creased = dataclasses.replace(master, furrows=(crease,), furrow_depth=depth)
    clean = dataclasses.replace(master, furrows=(), furrow_depth=None)
    sensor = SENSORS["optical500"]  # 8-bit: no 4-bit steps to hide a change

    def render(m):
        rng = impression_rng(11, "S0001", 2, 1)
        return render_impression(m, sensor, rng, enrolment=True).astype(np.float32)

    with_crease, without = render(creased), render(clean)
    changed = np.abs(with_crease - without) > 12
    assert changed.sum() > 200  # the crease is in view
    ys, xs = np.nonzero(changed)
    # A thin line: long along its main axis, a few pixels across.
    spread = np.sort(np.linalg.eigvalsh(np.cov(np.stack([xs, ys]))))
    assert spread[1] > 40 * spread[0]
    # Lighter where it runs (the skin missed the glass), and the ridges lose contrast
    # along it: dark ridge pixels there turn light.
    assert np.mean(with_crease[changed] - without[changed]) > 15
    band = cv2.dilate(changed.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert with_crease[band].std() < 0.8 * without[band].std()
    # Nothing else moved: same draws, the crease is the only difference (beyond the
    # reach of the optics' blur).
    reach = cv2.dilate(changed.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.abs(with_crease - without)[~reach].max() <= 2


def test_moisture_comes_in_blotches_not_grains():
    from fixtures.skin_condition import Touch, moisture_field

    rng = np.random.default_rng(9)
    touch = Touch(0.5, 0.0, 0.5, None)
    shape = (288, 256)
    fields = [moisture_field(rng, touch, shape) for _ in range(20)]

    def correlation(lag: int) -> float:
        return float(np.mean([np.corrcoef(f[:, :-lag].ravel(), f[:, lag:].ravel())[0, 1]
                              for f in fields]))

    assert correlation(6) > 0.8  # smooth over a ridge period: patches, not noise
    assert correlation(150) < 0.3  # but different across the pad
    stds = [float(f.std()) for f in fields]
    assert 0.25 < np.median(stds) < 0.8  # about the touch's patchiness


def test_poor_touches_are_a_small_share_and_never_at_enrolment():
    from fixtures.skin_condition import POOR_SHARE, PoorTouch, sample_touch

    def draws(**kw):
        rng = np.random.default_rng(10)
        return [sample_touch(rng, **kw) for _ in range(4000)]

    casual = draws(enrolment=False, calm=False)
    calm = draws(enrolment=False, calm=True)
    share = np.mean([t.poor is not None for t in casual])
    assert share == pytest.approx(POOR_SHARE, abs=0.02)
    assert {t.poor for t in casual} == set(PoorTouch) | {None}
    assert all(t.poor is None for t in calm + draws(enrolment=True, calm=False))
    # Same draws: a calm touch differs from the casual one only where that was poor.
    for a, b in zip(casual, calm, strict=True):
        assert (a == b) == (a.poor is None)
    dry = [t.moisture for t in casual if t.poor is PoorTouch.DRY]
    assert max(dry) < -1.0


def test_a_faint_touch_has_less_ridge_contrast(master, monkeypatch):
    from fixtures import impressions
    from fixtures.seeding import impression_rng
    from fixtures.skin_condition import PoorTouch, Touch

    sensor = SENSORS["optical500"]

    def render(poor):
        # The same touch but for its poor kind, and the same draws for everything else.
        monkeypatch.setattr(impressions, "sample_touch",
                            lambda rng, **kw: Touch(0.6, 0.0, 0.4, poor))
        rng = impression_rng(11, "S0001", 2, 5)
        return impressions.render_impression(master, sensor, rng).astype(np.float32)

    normal, faint = render(None), render(PoorTouch.FAINT)
    centre = (slice(150, 350), slice(150, 350))
    assert faint[centre].std() < 0.7 * normal[centre].std()


def test_worn_skin_is_a_finger_trait_that_pales_every_impression(master):
    import dataclasses

    from fixtures.skin_condition import WORN_SHARE, sample_wear

    rng = np.random.default_rng(12)
    wear = np.array([sample_wear(rng) for _ in range(4000)])
    assert np.mean(wear > 0) == pytest.approx(WORN_SHARE, abs=0.02)
    assert wear.max() <= 1.0
    assert make_master(11, "S0001", 2).wear == master.wear  # part of the identity
    healthy = dataclasses.replace(master, wear=0.0)
    worn = dataclasses.replace(master, wear=0.9)
    sensor = SENSORS["optical500"]
    centre = (slice(150, 350), slice(150, 350))
    for impression in range(1, 5):
        a = make_impression(healthy, sensor, 11, impression)[centre].astype(np.float32)
        b = make_impression(worn, sensor, 11, impression)[centre].astype(np.float32)
        assert b.std() < 0.75 * a.std()  # paler ridges in every touch, not some
