"""pytest-benchmark suites for the MCC kernels.

    pytest benchmarks/test_kernels.py --benchmark-enable

Uses the fvc2002-iso templates when ../shared/data is there, synthetic prints otherwise
(speed depends on the minutia count, which the test ids state).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from matcher.mcc import MccComparator
from matcher.template import Template, make_template

DATA = Path(
    os.environ.get("INK_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
ISO_DB1 = DATA / "fvc2002-iso" / "DB1_B"


def _templates() -> list[Template]:
    if ISO_DB1.is_dir():
        from matcher.formats import decode_template

        return [decode_template(p.read_bytes()) for p in sorted(ISO_DB1.glob("*.iso"))]
    rng = np.random.default_rng(0)
    return [
        make_template(
            rng.uniform(40, 260, 35), rng.uniform(40, 360, 35), rng.uniform(0, 2 * math.pi, 35),
            width=300, height=400,
        )
        for _ in range(80)
    ]


@pytest.fixture(scope="module")
def setup():
    mcc = MccComparator(threads=2)
    templates = _templates()
    encoded = [mcc.encode(t) for t in templates]
    sizes = np.array([len(t) for t in templates])
    probe = encoded[int(np.argmin(np.abs(sizes - 35)))]
    return mcc, templates, encoded, probe


def test_cylinder_creation(benchmark, setup) -> None:
    mcc, templates, _encoded, _probe = setup
    benchmark(lambda: [mcc.encode(t) for t in templates[:20]])


@pytest.mark.parametrize("threads", [1, 2])
def test_one_to_many_4096(benchmark, setup, threads: int) -> None:
    mcc, _templates_, encoded, probe = setup
    gallery = mcc.stack([encoded[i % len(encoded)] for i in range(4096)])
    searcher = MccComparator(threads=threads, calibration=mcc.calibration)
    scores = benchmark(searcher.scores, probe, gallery)
    assert scores.shape == (4096,)


def test_one_to_many_full_lssr_4096(benchmark, setup) -> None:
    mcc, _templates_, encoded, probe = setup
    gallery = mcc.stack([encoded[i % len(encoded)] for i in range(4096)])
    cheap, lssr = benchmark(mcc.raw_scores, probe, gallery, 0.0)
    assert np.all(lssr >= 0)


def test_one_to_one(benchmark, setup) -> None:
    mcc, _templates_, encoded, probe = setup
    gallery = mcc.stack([encoded[1]])
    benchmark(mcc.scores, probe, gallery)
