"""MCC comparator end to end: encode, stack, calibrated scores, threads, real templates."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

from matcher.comparator import Comparator
from matcher.cylinders import CylinderParams, make_cylinders
from matcher.mcc import MccComparator, MccGallery
from matcher.template import Template, make_template

DATA = Path(
    os.environ.get("INK_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
ISO = DATA / "fvc2002-iso"


def synthetic(seed: int, n: int = 36, size: int = 480) -> Template:
    """Minutiae spread over the middle of a size x size image, at least 12 px apart."""
    rng = np.random.default_rng(seed)
    pts: list[tuple[float, float]] = []
    while len(pts) < n:
        x, y = rng.uniform(size * 0.3, size * 0.7, 2)
        if all((x - a) ** 2 + (y - b) ** 2 >= 144 for a, b in pts):
            pts.append((x, y))
    xy = np.array(pts)
    return make_template(
        xy[:, 0], xy[:, 1], rng.uniform(0, 2 * math.pi, n), width=size, height=size
    )


def moved(t: Template, degrees: float, dx: float, dy: float) -> Template:
    """The same print rotated counter-clockwise (as seen) about the centre, then shifted."""
    phi = math.radians(degrees)
    cx, cy = t.width / 2, t.height / 2
    x = t.x - cx
    y = t.y - cy
    # image y points down, so a counter-clockwise turn as seen is this matrix
    nx = cx + x * math.cos(phi) + y * math.sin(phi) + dx
    ny = cy - x * math.sin(phi) + y * math.cos(phi) + dy
    return make_template(nx, ny, t.angle + phi, width=t.width, height=t.height, ppi=t.ppi)


@pytest.fixture(scope="module")
def mcc() -> MccComparator:
    return MccComparator(threads=2)


def test_is_a_comparator(mcc: MccComparator) -> None:
    # the protocol is not runtime-checkable: check its members by name
    for member in ("encode", "stack", "scores"):
        assert callable(getattr(mcc, member)), member
        assert member in Comparator.__dict__
    assert mcc.name == "mcc"


def test_self_and_moved_copy_score_far_above_an_unrelated_print(mcc: MccComparator) -> None:
    a = synthetic(1)
    gallery = mcc.stack([mcc.encode(x) for x in (a, moved(a, 25, 18, -12), synthetic(2))])
    scores = mcc.scores(mcc.encode(a), gallery)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    self_score, moved_score, other = scores
    # 40 is FMR 1e-4; an unrelated print should look like an ordinary impostor
    assert self_score > 40 and moved_score > 40
    assert other < 20
    assert moved_score > other + 25


def test_mirror_image_is_not_a_match(mcc: MccComparator) -> None:
    a = synthetic(3)
    mirrored = make_template(
        a.width - 1 - a.x, a.y, math.pi - a.angle, width=a.width, height=a.height
    )
    scores = mcc.scores(mcc.encode(a), mcc.stack([mcc.encode(a), mcc.encode(mirrored)]))
    assert scores[0] > scores[1] + 20


def test_resolution_is_normalised_to_500_ppi(mcc: MccComparator) -> None:
    a = synthetic(4)
    hi = make_template(a.x * 2, a.y * 2, a.angle, width=a.width * 2, height=a.height * 2, ppi=1000)
    enc_a, enc_hi = mcc.encode(a), mcc.encode(hi)
    np.testing.assert_array_equal(enc_a.bits, enc_hi.bits)
    gallery = mcc.stack([enc_hi, mcc.encode(synthetic(5))])
    scores = mcc.scores(enc_a, gallery)
    assert scores[0] > 40 > scores[1]


def test_scores_are_symmetric(mcc: MccComparator) -> None:
    prints = [synthetic(s) for s in range(10, 16)] + [moved(synthetic(10), -30, 5, 9)]
    enc = [mcc.encode(p) for p in prints]
    gallery = mcc.stack(enc)
    matrix = np.stack([mcc.raw_scores(e, gallery, gate=0.0)[1] for e in enc])
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-9)


def test_gallery_is_contiguous_and_ordered(mcc: MccComparator) -> None:
    enc = [mcc.encode(synthetic(s, n=20 + s)) for s in range(5)]
    gallery = mcc.stack(enc)
    assert isinstance(gallery, MccGallery) and len(gallery) == 5
    for arr in (gallery.bits, gallery.valid, gallery.x, gallery.y, gallery.angle):
        assert arr.flags.c_contiguous
    assert list(np.diff(gallery.offsets)) == [len(e) for e in enc]
    probe = mcc.encode(synthetic(2, n=22))
    whole = mcc.scores(probe, gallery)
    one_by_one = [mcc.scores(probe, mcc.stack([e]))[0] for e in enc]
    np.testing.assert_array_equal(whole, np.array(one_by_one, np.float32))
    assert int(np.argmax(whole)) == 2


def test_empty_templates_and_galleries(mcc: MccComparator) -> None:
    empty = make_template([], [], [], width=300, height=300)
    few = make_template([100, 120], [100, 130], [0.5, 1.0], width=300, height=300)
    assert len(mcc.encode(empty)) == 0
    assert len(mcc.encode(few)) == 0  # a cylinder needs at least minM neighbours
    a = mcc.encode(synthetic(6))
    assert mcc.scores(a, mcc.stack([])).shape == (0,)
    scores = mcc.scores(mcc.encode(empty), mcc.stack([a, mcc.encode(few)]))
    np.testing.assert_array_equal(scores, np.zeros(2, np.float32))


def test_cylinders_sorted_by_direction_with_valid_bits_inside_validity() -> None:
    t = synthetic(7)
    c = make_cylinders(t.x, t.y, t.angle, CylinderParams())
    assert 0 < len(c.angle) <= len(t)
    assert np.all(np.diff(c.angle) >= 0)
    valid = np.tile(c.valid, (1, 6))
    assert np.all(c.bits & ~valid == 0)  # no bit set outside a valid cell
    assert np.all(c.bits.any(axis=1))


def test_concurrent_searches_from_python_threads(mcc: MccComparator) -> None:
    probes = [mcc.encode(synthetic(s)) for s in range(20, 24)]
    gallery = mcc.stack([mcc.encode(synthetic(s)) for s in range(30, 230)] + probes)
    expected = [mcc.scores(p, gallery) for p in probes]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = [mcc.scores(probes[k], gallery) for _ in range(5)]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert numba.threading_layer() in ("omp", "tbb")
    for k in range(4):
        for got in results[k]:
            np.testing.assert_array_equal(got, expected[k])
        assert int(np.argmax(expected[k])) == 200 + k


@pytest.mark.realdata
@pytest.mark.skipif(not ISO.is_dir(), reason="../shared/data/fvc2002-iso not present")
def test_real_templates_genuine_beat_impostors(mcc: MccComparator) -> None:
    from matcher.formats import decode_template

    files = sorted((ISO / "DB1_B").glob("10[1-4]_[1-4].iso"))
    enc = [mcc.encode(decode_template(f.read_bytes())) for f in files]
    fingers = np.array([f.stem.split("_")[0] for f in files])
    gallery = mcc.stack(enc)
    matrix = np.stack([mcc.scores(e, gallery) for e in enc])
    same = fingers[:, None] == fingers[None, :]
    off_diag = ~np.eye(len(files), dtype=bool)
    genuine = matrix[same & off_diag]
    impostor = matrix[~same]
    assert np.median(genuine) > 30 > np.median(impostor)
    assert np.median(impostor) < 10
    # every print's best other match is the same finger for most prints
    best = np.where(off_diag, matrix, -1).argmax(axis=1)
    assert np.mean(fingers[best] == fingers) >= 0.8


def test_serial_and_parallel_paths_agree(mcc: MccComparator) -> None:
    enc = [mcc.encode(synthetic(s)) for s in range(300, 400)]
    gallery = mcc.stack(enc)  # above the serial-path size
    one = MccComparator(threads=1, calibration=mcc.calibration)
    probe = mcc.encode(moved(synthetic(350), 10, 4, 4))
    np.testing.assert_array_equal(mcc.scores(probe, gallery), one.scores(probe, gallery))
    assert int(np.argmax(one.scores(probe, gallery))) == 50


def test_gated_candidates_keep_their_calibrated_cheap_score(mcc: MccComparator) -> None:
    enc = [mcc.encode(synthetic(s)) for s in range(500, 540)]
    gallery = mcc.stack(enc)
    probe = enc[7]
    cheap, lssr = mcc.raw_scores(probe, gallery)
    gated = lssr < 0
    assert gated.sum() >= 30 and lssr[7] >= 0  # the print itself passes the gate
    scores = mcc.scores(probe, gallery)
    np.testing.assert_array_equal(scores[gated], mcc.calibration.cheap(cheap[gated]))
    # dropped candidates stay below the gate's calibrated score
    assert np.all(scores[gated] < mcc.gate_score + 1e-3)


def test_large_gallery_relaxes_a_shortlist_only() -> None:
    from matcher.mcc import shortlist_size

    mcc = MccComparator(threads=2)
    enc = [mcc.encode(synthetic(s, n=28)) for s in range(1000, 1300)]
    target = mcc.encode(moved(synthetic(1100, n=28), -15, 6, -3))
    gallery = mcc.stack(enc)
    assert len(gallery) > shortlist_size(len(gallery))
    # a gate of 0 lets every candidate through, so the shortlist cap decides
    loose = MccComparator(threads=2, calibration=mcc.calibration, gate_score=0.0)
    cheap, lssr = loose.raw_scores(target, gallery)
    assert (lssr >= 0).sum() == shortlist_size(len(gallery))
    # the shortlist is the best by cheap score, and its LSS-R is the full computation
    listed = np.flatnonzero(lssr >= 0)
    assert cheap[listed].min() >= np.sort(cheap)[-len(listed)]
    _cheap, everything = loose.raw_scores(target, gallery, gate=0.0)
    np.testing.assert_array_equal(lssr[listed], everything[listed])
    assert int(np.argmax(loose.scores(target, gallery))) == 100


def test_parts_of_a_gallery_share_one_shortlist() -> None:
    """An index's segments are searched as one gallery: the scores of its parts are the
    whole gallery's, so the LSS-R shortlist is global, not per part."""
    from matcher.mcc import shortlist_size

    mcc = MccComparator(threads=2)
    loose = MccComparator(threads=2, calibration=mcc.calibration, gate_score=0.0)
    enc = [mcc.encode(synthetic(s, n=28)) for s in range(1000, 1300)]
    target = mcc.encode(moved(synthetic(1100, n=28), -15, 6, -3))
    whole = loose.scores(target, mcc.stack(enc))
    rows = [np.arange(0, 120), np.arange(1, 60), np.flatnonzero(np.arange(120) % 6 != 0)]
    galleries = [mcc.stack(enc[:120]), mcc.stack(enc[120:180]), mcc.stack(enc[180:])]
    parts = loose.scores_of_parts(target, list(zip(galleries, rows, strict=True)))
    picked = np.concatenate([rows[0], 120 + rows[1], 180 + rows[2]])
    assert picked.size > shortlist_size(picked.size)
    # the same rows of the whole gallery, one shortlist among them
    np.testing.assert_array_equal(
        np.concatenate(parts), loose.scores(target, mcc.stack(enc), rows=picked)[picked]
    )
    assert np.concatenate(parts).max() == whole.max()  # the mate (row 100) is picked
    # per part, each small part would have had LSS-R everywhere: not the same scores
    separate = np.concatenate([loose.scores(target, g, rows=r)[r]
                               for g, r in zip(galleries, rows, strict=True)])
    assert not np.array_equal(separate, np.concatenate(parts))


def test_rank_sort_orders_the_cheap_stage_keys() -> None:
    from matcher.similarity import _rank_sort

    @numba.njit
    def sort_head(keys: np.ndarray, n: int) -> np.ndarray:
        out = np.empty_like(keys)
        _rank_sort(keys, n, out)
        return keys

    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 17, 48, 64):
        keys = rng.choice(1 << 40, size=80, replace=False).astype(np.int64)
        want = np.concatenate([np.sort(keys[:n]), keys[n:]])
        np.testing.assert_array_equal(sort_head(keys.copy(), n), want)


def test_prefetch_leaves_arrays_and_scores_alone(mcc: MccComparator) -> None:
    from matcher.similarity import _prefetch_rows

    @numba.njit
    def touch(a: np.ndarray, r0: int, r1: int) -> None:
        _prefetch_rows(a, r0, r1, a.shape[1])

    a = np.arange(35 * 24, dtype=np.uint64).reshape(35, 24)
    before = a.copy()
    for r0, r1 in ((0, 35), (34, 35), (35, 35), (3, 9)):  # up to and at the array's end
        touch(a, r0, r1)
    np.testing.assert_array_equal(a, before)
    # a gallery whose last template is the probe: the prefetch past the end is harmless
    enc = [mcc.encode(synthetic(s)) for s in range(1400, 1480)]
    cheap, lssr = mcc.raw_scores(enc[-1], mcc.stack(enc), gate=0.0)
    alone, alone_lssr = mcc.raw_scores(enc[-1], mcc.stack(enc[-1:]), gate=0.0)
    assert cheap[-1] == alone[0] and lssr[-1] == alone_lssr[0] > 0.5


def test_encode_many_builds_the_gallery_stack_of_encode_builds() -> None:
    mcc = MccComparator()
    templates = [synthetic(s) for s in range(40)]
    templates[3] = templates[3].at_ppi(1000.0)
    templates[5] = make_template([], [], [], width=300, height=300)  # no minutiae at all
    templates[9] = make_template([10.0], [10.0], [0.0], width=300, height=300)  # no cylinder
    one_by_one = mcc.stack([mcc.encode(t) for t in templates])
    at_once = mcc.encode_many(templates)
    for name in ("bits", "valid", "density", "sketch", "sketch_density", "x", "y", "angle",
                 "offsets"):
        got, want = getattr(at_once, name), getattr(one_by_one, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert len(mcc.encode_many([])) == 0


@pytest.mark.parametrize("size", [40, 700])  # serial; parallel with the LSS-R shortlist
def test_scoring_some_rows_gives_their_scores_and_leaves_the_rest(size) -> None:
    mcc = MccComparator(threads=2)
    gallery = mcc.encode_many([synthetic(s) for s in range(size)])
    probe = mcc.encode(synthetic(3))  # the same as row 3
    rows = np.arange(0, size, 3)
    full = mcc.scores(probe, gallery)
    some = mcc.scores(probe, gallery, rows=rows)
    if size <= 256:  # no shortlist: a row's score does not depend on the others compared
        np.testing.assert_array_equal(some[rows], full[rows])
    # with a shortlist (the best 1 % by cheap score get LSS-R) the match still gets it
    assert int(rows[np.argmax(some[rows])]) == 3 and some[3] == full[3]
    assert np.all(some[np.setdiff1d(np.arange(size), rows)] == 0.0)


def test_cheap_stage_sigmoid_tables_follow_the_sigmoids_up_to_their_cut() -> None:
    from matcher.similarity import (
        CHEAP_REACH,
        SIGMOID_STEPS,
        MatchParams,
        _sigmoid,
        _tabled,
        sigmoid_tables,
    )

    @numba.njit
    def read(tab: np.ndarray, r: int, d: np.ndarray, scale: float) -> np.ndarray:
        out = np.empty_like(d)
        for e in range(d.size):
            out[e] = _tabled(tab, r, d[e], scale)
        return out

    p = MatchParams()
    tab = np.empty((3, SIGMOID_STEPS + 3))
    sigmoid_tables(p, tab)
    for r, (mu, tau) in enumerate(((p.mu1, p.tau1), (p.mu2, p.tau2), (p.mu3, p.tau3))):
        cut = mu + CHEAP_REACH / abs(tau)
        d = np.linspace(0.0, cut, 5001)
        want = np.array([_sigmoid(v, mu, tau) for v in d])
        got = read(tab, r, d, SIGMOID_STEPS / cut)
        assert np.max(np.abs(got - want)) < 5e-5, r
        assert want[0] > 0.9 and want[-1] == pytest.approx(math.exp(-CHEAP_REACH), rel=0.01)
        # one step past the cut the factor is 0, however far (the cheap stage ignores it)
        far = np.array([cut * (1 + 2 / SIGMOID_STEPS), 4 * cut, 1e6])
        np.testing.assert_array_equal(read(tab, r, far, SIGMOID_STEPS / cut), 0.0)
