"""Fusion tails and thresholds follow from calibrated scores (matcher/decision.py)."""

import math

import numpy as np
import pytest

from matcher import decision


def test_single_finger_tail_is_the_fmr_itself() -> None:
    assert decision.sum_tail(40.0, 1) == pytest.approx(1e-4)
    assert decision.sum_tail(0.0, 1) == 1.0


def test_two_finger_tail_matches_simulated_strangers() -> None:
    rng = np.random.default_rng(1)
    # A calibrated stranger score is -10 log10(U) with U uniform.
    scores = -10 * np.log10(rng.uniform(size=(2, 400_000)))
    fused = scores.sum(axis=0)
    for t in (20.0, 30.0, 40.0):
        empirical = float(np.mean(fused >= t))
        assert decision.sum_tail(t, 2) == pytest.approx(empirical, rel=0.1)


def test_threshold_grows_with_the_watchlist() -> None:
    small = decision.hit_threshold(0.01, 1_000, 1, 1)
    large = decision.hit_threshold(0.01, 1_000_000, 1, 1)
    assert small == pytest.approx(50.0, abs=0.01)  # FMR 1e-5 for 1e3 subjects
    assert large == pytest.approx(80.0, abs=0.01)
    assert decision.expected_fpir(large, 1_000_000, 1, 1) == pytest.approx(0.01, rel=1e-3)


def test_threshold_never_below_the_floor() -> None:
    assert decision.hit_threshold(0.5, 1, 1, 1) == decision.MIN_HIT_SCORE


def test_unknown_finger_position_costs_comparisons() -> None:
    known = decision.hit_threshold(0.01, 1000, 1, 1)
    unknown = decision.hit_threshold(0.01, 1000, 10, 1)
    assert unknown == pytest.approx(known + 10.0, abs=0.01)
    assert math.isfinite(decision.verify_threshold(1e-4, 2, 1))


def test_bad_target_is_refused() -> None:
    with pytest.raises(ValueError):
        decision.hit_threshold(0.0, 10, 1, 1)
