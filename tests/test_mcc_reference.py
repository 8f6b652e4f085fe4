"""The Numba kernels agree with the plain-numpy reference of the same MCC formulas."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from matcher import mcc_reference as ref
from matcher.mcc import MccComparator, MccTemplate
from matcher.template import Template, make_template

DATA = Path(
    os.environ.get("INK_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
ISO_DB1 = DATA / "fvc2002-iso" / "DB1_B"


def _synthetic(seed: int, n: int = 30) -> Template:
    rng = np.random.default_rng(seed)
    return make_template(
        rng.uniform(90, 330, n), rng.uniform(90, 330, n), rng.uniform(0, 2 * math.pi, n),
        width=420, height=420,
    )


def _templates() -> list[Template]:
    """Eighteen real templates (six fingers x three impressions) or synthetic ones."""
    if ISO_DB1.is_dir():
        from matcher.formats import decode_template

        files = [ISO_DB1 / f"{f}_{i}.iso" for f in range(101, 107) for i in (1, 2, 3)]
        return [decode_template(p.read_bytes()) for p in files]
    base = [_synthetic(s) for s in range(9)]
    # half of them perturbed copies, so that some pairs are genuine-like
    jitter = np.random.default_rng(99)
    copies = [
        make_template(
            np.clip(t.x + jitter.normal(0, 2, len(t)), 0, 419),
            np.clip(t.y + jitter.normal(0, 2, len(t)), 0, 419),
            t.angle + jitter.normal(0, 0.05, len(t)), width=420, height=420,
        )
        for t in base
    ]
    return base + copies


def _unpack(enc: MccTemplate, nd: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel bit layout -> booleans (n, 16, 16, nd) and (n, 16, 16)."""
    n = len(enc)
    bits = np.unpackbits(enc.bits.view(np.uint8), bitorder="little").reshape(n, nd, 256)
    valid = np.unpackbits(enc.valid.view(np.uint8), bitorder="little").reshape(n, 256)
    return bits.transpose(0, 2, 1).reshape(n, 16, 16, nd).astype(bool), valid.reshape(
        n, 16, 16
    ).astype(bool)


@pytest.fixture(scope="module")
def encoded() -> tuple[MccComparator, list[Template], list[MccTemplate], list[dict]]:
    mcc = MccComparator(threads=2)
    templates = _templates()
    enc = [mcc.encode(t) for t in templates]
    refs = [ref.cylinders(t.x, t.y, t.angle, mcc.cylinder_params) for t in templates]
    return mcc, templates, enc, refs


def test_cylinders_match_the_reference(encoded) -> None:
    mcc, _templates_, enc, refs = encoded
    nd = mcc.cylinder_params.nd
    for e, r in zip(enc, refs, strict=True):
        bits, valid = _unpack(e, nd)
        assert bits.shape == r["bits"].shape
        np.testing.assert_array_equal(valid, r["valid"])
        np.testing.assert_array_equal(bits, r["bits"])
        np.testing.assert_allclose(e.angle, r["angle"])
        np.testing.assert_allclose(e.x, r["x"])
    assert sum(len(e) for e in enc) > 200


@pytest.mark.slow
def test_scores_match_the_reference_on_hundreds_of_pairs(encoded) -> None:
    mcc, _templates_, enc, refs = encoded
    gallery = mcc.stack(enc)
    p = mcc.match_params
    checked = 0
    strong = 0
    for i, probe in enumerate(enc):
        cheap, lssr = mcc.raw_scores(probe, gallery, gate=0.0)
        for j in range(len(enc)):
            if i == j:
                continue
            want_cheap, want_lssr = ref.scores(refs[i], refs[j], p)
            assert lssr[j] == pytest.approx(want_lssr, abs=1e-9), (i, j)
            assert cheap[j] == pytest.approx(want_cheap, abs=1e-9), (i, j)
            checked += 1
            strong += want_lssr > 0.1
    assert checked >= 300
    assert strong >= 18  # the check covers matching pairs, not only near-zero scores


def test_gate_only_skips_relaxation(encoded) -> None:
    mcc, _templates_, enc, _refs = encoded
    gallery = mcc.stack(enc)
    cheap_all, full = mcc.raw_scores(enc[0], gallery, gate=0.0)
    cheap_gated, gated = mcc.raw_scores(enc[0], gallery, gate=0.02)
    np.testing.assert_array_equal(cheap_all, cheap_gated)
    kept = gated >= 0
    assert 0 < kept.sum() < len(enc)
    np.testing.assert_array_equal(gated[kept], full[kept])
    np.testing.assert_array_equal(kept, cheap_all >= 0.02)


def test_other_direction_counts_match_the_reference_too() -> None:
    """nd = 5 takes the kernels' plain sketch path instead of the unrolled six-word one."""
    from matcher.cylinders import CylinderParams

    mcc = MccComparator(cylinder_params=CylinderParams(nd=5), threads=1)
    base = _synthetic(3)
    templates = [base, _synthetic(4)] + [
        make_template(
            np.clip(base.x + np.random.default_rng(s).normal(0, 2, len(base)), 0, 419),
            base.y, base.angle, width=420, height=420,
        )
        for s in (1, 2)
    ]
    enc = [mcc.encode(t) for t in templates]
    refs = [ref.cylinders(t.x, t.y, t.angle, mcc.cylinder_params) for t in templates]
    gallery = mcc.stack(enc)
    p = mcc.match_params
    for i, probe in enumerate(enc):
        cheap, lssr = mcc.raw_scores(probe, gallery, gate=0.0)
        for j in range(len(enc)):
            want_cheap, want_lssr = ref.scores(refs[i], refs[j], p)
            assert cheap[j] == pytest.approx(want_cheap, abs=1e-9), (i, j)
            assert lssr[j] == pytest.approx(want_lssr, abs=1e-9), (i, j)
    assert cheap[0] > 0.3 and cheap[1] < cheap[0]  # the last probe's mates score high
