"""Open-set decisions from calibrated scores: fusion over fingers, thresholds and FPIR.

Scores are ``s = -10 * log10(FMR)``. For a stranger, ``u = 10 ** (-s / 10)`` is then
uniform on (0, 1]; fusing k independent probe fingers by adding their scores gives a sum
whose tail is known exactly:

    P(S >= t) = u_t * sum_{j < k} (-ln u_t) ** j / j!,   u_t = 10 ** (-t / 10)

A 1:N search that compares against N subjects, each over m candidate fingers per probe
finger (best of m), has ``FPIR ~ N * m**k * P(S >= t)`` (union bound). The HIT threshold is
the t where that equals the target FPIR, so it grows with the watchlist, and each answer
can state its expected FPIR.
"""

from __future__ import annotations

import math

DEFAULT_TARGET_FPIR = 0.01
DEFAULT_TARGET_FMR = 1e-4  # Verify: 40 on the calibrated scale
# Below this a match is never reported, however small the watchlist.
MIN_HIT_SCORE = 30.0


def sum_tail(t: float, k: int) -> float:
    """P(sum of k calibrated stranger scores >= t)."""
    if t <= 0:
        return 1.0
    u = 10.0 ** (-t / 10.0)
    ln = -math.log(u)
    return min(1.0, u * sum(ln**j / math.factorial(j) for j in range(k)))


def expected_fpir(t: float, subjects: int, fingers_per_probe: int, probes: int) -> float:
    """Chance that a stranger reaches score ``t`` in a search of this size."""
    trials = max(1, subjects) * max(1, fingers_per_probe) ** max(1, probes)
    return min(1.0, trials * sum_tail(t, max(1, probes)))


def hit_threshold(
    target_fpir: float, subjects: int, fingers_per_probe: int, probes: int
) -> float:
    """The fused score a HIT needs so that a stranger hits with ``target_fpir`` at most."""
    if not 0.0 < target_fpir < 1.0:
        raise ValueError("the target FPIR must lie strictly between 0 and 1")
    lo, hi = 0.0, 400.0
    for _ in range(80):  # bisection: the tail is monotone in t
        mid = (lo + hi) / 2
        if expected_fpir(mid, subjects, fingers_per_probe, probes) > target_fpir:
            lo = mid
        else:
            hi = mid
    return max(hi, MIN_HIT_SCORE)


def verify_threshold(target_fmr: float, probes: int, fingers_per_probe: int) -> float:
    """The fused score a 1:1 match needs for a false match rate of ``target_fmr``."""
    return hit_threshold(target_fmr, 1, fingers_per_probe, probes)
