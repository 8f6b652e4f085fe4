"""The extraction's Numba kernels against the plain NumPy / OpenCV they replace.

Each kernel promises the reference's result bit for bit (the front stages are shared
with the LEADER extractor, whose accuracy was measured on the old ones), so every test
compares with ``array_equal``, not a tolerance.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway.extraction import minutiae_filters as filters
from gateway.extraction.connected_runs import components, paint
from gateway.extraction.contrast import normalise_contrast
from gateway.extraction.enhancement import _even_fast_length
from gateway.extraction.frequency import period_bins, ridge_period
from gateway.extraction.minutiae_detection import (
    NEIGHBOUR_DX,
    NEIGHBOUR_DY,
    Candidates,
    crossing_number,
    crossing_number_candidates,
)
from gateway.extraction.order_statistics import masked_median, masked_percentile
from gateway.extraction.orientation import GradientTensor, gradient_tensor, orientation_field
from gateway.extraction.params import DEFAULT_PARAMS
from gateway.extraction.segmentation import _Disc, _largest_regions_filled
from gateway.extraction.skeleton import binarise
from gateway.extraction.smoothing import smooth_field
from matcher.allocator import keep_freed_heap
from matcher.template import MinutiaKind

RNG_SEED = 7


def _blocky(rng: np.random.Generator, h: int, w: int, block: int = 8) -> np.ndarray:
    """A random 0/1 mask of blocks, as segmentation makes, with some pixel noise."""
    blocks = (rng.random((max(1, h // block), max(1, w // block))) < rng.random())
    mask = cv2.resize(blocks.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    mask[rng.random((h, w)) < 0.03] ^= 1
    return mask


def _print_like(rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """A ridge pattern with noise and a blank rim, as float32 in 0..1."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(xx - 0.45 * size, yy - 0.55 * size)
    img = 0.5 + 0.35 * np.cos(2 * np.pi * r / 9.0) + 0.05 * rng.standard_normal((size, size))
    img[:, : size // 8] = 0.9
    return np.clip(img, 0, 1).astype(np.float32)


# --- order statistics ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "clipped", "ties", "constant", "heavy"])
def test_masked_median_and_percentile_are_numpys(kind):
    rng = np.random.default_rng(RNG_SEED)
    for n in (1, 2, 3, 10, 999, 20_000):
        values = {
            "normal": rng.standard_normal(n),
            "clipped": np.clip(rng.normal(10, 3, n), 5, 15),  # many values on the bounds
            "ties": rng.integers(0, 4, n).astype(float),
            "constant": np.full(n, 2.5),
            "heavy": np.abs(rng.standard_normal(n)) ** 5,
        }[kind].astype(np.float32).reshape(1, -1)
        mask = rng.random(values.shape) < 0.7
        mask[0, 0] = True
        assert masked_median(values, mask) == float(np.median(values[mask]))
        for q in (0.0, 15.0, 50.0, 85.0, 90.0, 100.0):
            assert masked_percentile(values, mask, q) == float(np.percentile(values[mask], q))


def test_masked_order_statistics_refuse_an_empty_selection():
    values = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError):
        masked_median(values, np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        masked_percentile(values.astype(np.float64), np.ones((3, 3), bool), 50.0)


# --- connected components on runs ---------------------------------------------------

@pytest.mark.parametrize("eight", [True, False])
def test_components_are_opencvs_partition(eight):
    rng = np.random.default_rng(RNG_SEED)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        image = _blocky(rng, h, w) if trial % 2 else (rng.random((h, w)) < 0.5).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            image, connectivity=8 if eight else 4)
        found = components(image, 1, eight_connected=eight)
        assert found.count == n - 1
        assert sorted(found.area) == sorted(stats[1:, cv2.CC_STAT_AREA])
        # Same partition: every run lies in one OpenCV component, one per label.
        ours = np.full(image.shape, -1)
        for r, a, b, lab in zip(found.row, found.start, found.stop, found.label, strict=True):
            ours[r, a:b] = lab
        assert np.array_equal(ours >= 0, image == 1)
        pairs = {(int(o), int(c)) for o, c in zip(ours[image == 1], labels[image == 1],
                                                   strict=True)}
        assert len(pairs) == found.count == len({c for _, c in pairs})
        # Painting components back.
        big = found.area >= 5
        painted = np.zeros_like(image)
        paint(painted, found, big, 1)
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= 5
        assert np.array_equal(painted.astype(bool), keep[labels])


def test_components_flag_those_on_the_edge():
    image = np.zeros((7, 7), np.uint8)
    image[0, 3] = 1  # on the edge
    image[3, 3] = 1  # inside
    found = components(image, 1, eight_connected=True)
    edge = {int(r): bool(found.on_edge[lab]) for r, lab in zip(found.row, found.label,
                                                                 strict=True)}
    assert edge == {0: True, 3: False}


# --- segmentation -------------------------------------------------------------------

@pytest.mark.parametrize("r", [0, 1, 4, 10, 12])
def test_disc_morphology_is_opencvs_ellipse(r):
    rng = np.random.default_rng(RNG_SEED + r)
    disc = _Disc(r)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        image = _blocky(rng, h, w, block=16)
        assert np.array_equal(disc.dilate(image), cv2.dilate(image, ellipse))
        assert np.array_equal(disc.erode(image), cv2.erode(image, ellipse))


def _largest_reference(mask: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1 or stats[1:, cv2.CC_STAT_AREA].max() < min_area:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, np.uint8)
    keep[1:] = areas >= max(min_area, int(areas.max()) // 3)
    flood = np.pad(keep[labels], 1)
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8),
                  (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


def test_largest_regions_with_holes_filled_as_labelling_and_flood_fill_do():
    rng = np.random.default_rng(RNG_SEED)
    for trial in range(80):
        h, w = (int(v) for v in rng.integers(1, 100, 2))
        mask = _blocky(rng, h, w) if trial % 3 else (rng.random((h, w)) < 0.6).astype(np.uint8)
        for min_area in (1, 30):
            got = _largest_regions_filled(mask.copy(), min_area)
            assert got.dtype == bool
            assert np.array_equal(got, _largest_reference(mask, min_area))


# --- front-stage arithmetic ---------------------------------------------------------

def test_contrast_orientation_coherence_and_period_are_the_array_expressions():
    rng = np.random.default_rng(RNG_SEED)
    params = DEFAULT_PARAMS
    work = _print_like(rng)
    mask = np.zeros(work.shape, bool)
    mask[20:-20, 30:-15] = True

    mean = smooth_field(work, params.normalise_sigma)
    centred = mean - work
    var = smooth_field(centred * centred, params.normalise_sigma)
    normalised = normalise_contrast(work, params.normalise_sigma)
    assert np.array_equal(normalised, centred / np.sqrt(np.maximum(var, 1e-4)))

    t = gradient_tensor(work, params)
    coherence = (np.sqrt((t.gxx - t.gyy) ** 2 + 4.0 * t.gxy**2)
                 / np.maximum(t.gxx + t.gyy, 1e-9))
    assert np.array_equal(GradientTensor(t.gxx, t.gyy, t.gxy).coherence, coherence)

    c, s = t.gxx - t.gyy, 2.0 * t.gxy
    norm = np.sqrt(c * c + s * s) + 1e-9
    weight = np.where(mask, 1.0, 0.05).astype(np.float32)
    c = smooth_field((c / norm) * weight, params.orientation_smooth_sigma)
    s = smooth_field((s / norm) * weight, params.orientation_smooth_sigma)
    ridge = 0.5 * cv2.phase(c, s) + np.float32(np.pi / 2.0)
    ridge[ridge >= np.float32(np.pi)] -= np.float32(np.pi)
    assert np.array_equal(orientation_field(t, mask, params), ridge)

    smooth = cv2.GaussianBlur(normalised, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    win = params.frequency_block / 2.0
    period = 2.0 * np.pi * np.sqrt(smooth_field(smooth * smooth, win)
                                   / np.maximum(smooth_field(gx * gx + gy * gy, win), 1e-9))
    period = np.clip(period, params.min_period, params.max_period).astype(np.float32)
    period = np.where(mask, period, float(np.median(period[mask]))).astype(np.float32)
    expected = smooth_field(period, win)
    got = ridge_period(normalised, mask, params)
    assert np.array_equal(got, expected)
    assert period_bins(got, mask, 1)[0] == np.float32(np.median(got[mask]))


def test_smooth_field_writes_into_out_and_in_place():
    field = _print_like(np.random.default_rng(RNG_SEED))
    for sigma in (1.0, 7.0, 12.0):
        want = smooth_field(field, sigma)
        out = np.empty_like(field)
        assert smooth_field(field, sigma, out=out) is out and np.array_equal(out, want)
        own = field.copy()
        assert np.array_equal(smooth_field(own, sigma, out=own), want)


# --- binarisation and minutiae -------------------------------------------------------

def _binarise_reference(enhanced: np.ndarray, mask: np.ndarray, min_area: int) -> np.ndarray:
    def drop(binary: np.ndarray) -> np.ndarray:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        keep = np.zeros(n, np.uint8)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        return keep[labels]

    ridges = drop(((enhanced > 0) & mask).astype(np.uint8))
    holes = drop((1 - ridges) * mask.astype(np.uint8))
    return mask & (holes == 0)


def test_binarise_drops_small_ridges_and_fills_small_holes_as_before():
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(10):
        enhanced = cv2.GaussianBlur(rng.standard_normal((90, 120)).astype(np.float32),
                                    (0, 0), 1.5)
        mask = _blocky(rng, 90, 120, block=30).astype(bool)
        got = binarise(enhanced, mask, DEFAULT_PARAMS)
        assert got.dtype == bool
        assert np.array_equal(got, _binarise_reference(enhanced, mask,
                                                       DEFAULT_PARAMS.min_blob_area))


def test_crossing_numbers_and_candidates_are_the_ring_formula():
    rng = np.random.default_rng(RNG_SEED)
    for density in (0.1, 0.3, 0.6):
        skeleton = (rng.random((60, 75)) < density).astype(np.uint8)
        padded = np.pad(skeleton.astype(np.int8), 1)
        ring = [padded[1 + dy : 61 + dy, 1 + dx : 76 + dx]
                for dy, dx in zip(NEIGHBOUR_DY, NEIGHBOUR_DX, strict=True)]
        changes = sum(np.abs(ring[k] - ring[(k + 1) % 8]) for k in range(8))
        expected = ((changes // 2) * skeleton).astype(np.uint8)
        cn = crossing_number(skeleton)
        assert np.array_equal(cn, expected)
        found = crossing_number_candidates(skeleton, cn)
        ys, xs = np.nonzero((cn == 1) | (cn == 3))
        assert np.array_equal(found.y, ys) and np.array_equal(found.x, xs)
        kinds = np.where(cn[ys, xs] == 1, MinutiaKind.ENDING, MinutiaKind.BIFURCATION)
        assert np.array_equal(found.kind, kinds)


def _random_candidates(rng: np.random.Generator, n: int, size: int) -> Candidates:
    flat = rng.choice(size * size, n, replace=False)
    kind = np.where(rng.random(n) < 0.6, MinutiaKind.ENDING, MinutiaKind.BIFURCATION)
    return Candidates((flat % size).astype(np.int32), (flat // size).astype(np.int32),
                      kind.astype(np.uint8))


def test_rim_breaks_and_clusters_reject_what_the_array_rules_rejected():
    rng = np.random.default_rng(RNG_SEED)
    params = DEFAULT_PARAMS
    for _ in range(10):
        size = 90
        cands = _random_candidates(rng, 150, size)
        mask = _blocky(rng, size, size, block=30).astype(bool)
        # rim: the mask eroded by the disc, the image's edge counting as background
        r = int(round(params.border_margin))
        ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        inner = cv2.erode(np.pad(mask.astype(np.uint8), 1), ellipse)[1:-1, 1:-1].astype(bool)
        assert np.array_equal(filters.rim(cands, mask, params),
                              np.flatnonzero(~inner[cands.y, cands.x]))
        # clusters: more than cluster_count others within the radius
        x, y = cands.x.astype(float), cands.y.astype(float)
        dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        crowded = np.flatnonzero((dist < params.cluster_radius).sum(1) - 1
                                 >= params.cluster_count)
        assert np.array_equal(filters.clusters(cands, params), crowded)
        # ridge breaks: endings that face each other across a small gap
        angle = rng.uniform(0, 2 * np.pi, len(cands))
        dx, dy = np.cos(angle), np.sin(angle)
        ends = np.flatnonzero(cands.kind == MinutiaKind.ENDING)
        vx, vy = x[ends][None, :] - x[ends][:, None], y[ends][None, :] - y[ends][:, None]
        d = np.hypot(vx, vy)
        np.fill_diagonal(d, np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos_i = -(vx * dx[ends][:, None] + vy * dy[ends][:, None]) / d
        cos_min = np.cos(params.break_angle)
        cos_j = cos_i.T  # the same test seen from the other ending
        facing = (d < params.break_distance) & (cos_i > cos_min) & (cos_j > cos_min)
        assert np.array_equal(filters.ridge_breaks(cands, dx, dy, params),
                              ends[np.unique(np.nonzero(facing)[0])])


# --- Gabor grid sizes and the allocator -----------------------------------------------

def test_coarse_gabor_grids_are_even_and_fast():
    def smooth(n: int) -> bool:
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(2, 700):
        m = _even_fast_length(n)
        assert m >= n and m % 2 == 0 and smooth(m)
        assert not any(k % 2 == 0 and smooth(k) for k in range(n, m))
    assert _even_fast_length(225) == 240  # not 226 = 2 x 113


def test_keep_freed_heap_takes_on_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator tuning is for glibc")
    assert keep_freed_heap() is True
