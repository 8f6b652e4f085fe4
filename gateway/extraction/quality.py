"""Image quality 0..100 for the gateway's quality gate (an NFIQ 2-like equivalent).

NFIQ 2 predicts how well a print will match from local features; this score uses the
three of them that matter most for a live scan and that our pipeline already computes:

- **usable area**: the segmented finger area in mm^2 (NFIQ 2's FDA/ROI features), full
  credit from ``FULL_AREA_MM2``;
- **orientation certainty**: the mean ridge coherence over the finger (NFIQ 2's OCL),
  0 for noise, near 1 for clear parallel ridges (full credit only for near-synthetic
  clarity, so that real prints spread over the scale instead of saturating);
- **ridge period plausibility**: the share of the finger whose ridge period lies within
  what adult fingers show at 500 ppi (related to NFIQ 2's FDA and RVU).

score = 100 * area_credit * (0.7 * certainty_credit + 0.3 * period_credit). A blank or
pure-noise image has no segmented area and scores 0. The gate asks for a re-scan below
:data:`QUALITY_GATE_THRESHOLD`.
"""

from __future__ import annotations

import numpy as np

from gateway.extraction.contrast import normalise_contrast
from gateway.extraction.frequency import ridge_period
from gateway.extraction.orientation import gradient_tensor
from gateway.extraction.params import DEFAULT_PARAMS, WORKING_PPI
from gateway.extraction.scaling import to_working_resolution
from gateway.extraction.segmentation import segmentation_mask

# Below this, ask the officer for a re-scan instead of searching.
QUALITY_GATE_THRESHOLD = 30

FULL_AREA_MM2 = 80.0
PLAUSIBLE_PERIOD_PX = (6.0, 13.0)  # at 500 ppi: 0.30-0.66 mm ridge-to-ridge
_COHERENCE_FLOOR = 0.15
_COHERENCE_GOOD = 0.90
_PX_PER_MM = WORKING_PPI / 25.4


def image_quality(image: np.ndarray, ppi: float) -> int:
    """Quality 0..100 of a uint8 grayscale print (dark ridges) scanned at ``ppi``."""
    params = DEFAULT_PARAMS
    work, _ = to_working_resolution(image, ppi)
    tensor = gradient_tensor(work, params)
    mask = segmentation_mask(tensor, params)
    if not mask.any():
        return 0
    period = ridge_period(normalise_contrast(work, params.normalise_sigma), mask, params)
    return quality_from_maps(mask, tensor.coherence, period)


def quality_from_maps(mask: np.ndarray, coherence: np.ndarray, period: np.ndarray) -> int:
    """The score from the working-frame (500 ppi) mask, coherence and period maps."""
    if not mask.any():
        return 0
    area_mm2 = float(mask.sum()) / _PX_PER_MM**2
    area_credit = min(1.0, area_mm2 / FULL_AREA_MM2)
    certainty = float(np.mean(coherence[mask]))
    certainty_credit = np.clip(
        (certainty - _COHERENCE_FLOOR) / (_COHERENCE_GOOD - _COHERENCE_FLOOR), 0.0, 1.0
    )
    lo, hi = PLAUSIBLE_PERIOD_PX
    p = period[mask]
    period_credit = float(np.mean((p >= lo) & (p <= hi)))
    score = 100.0 * area_credit * (0.7 * certainty_credit + 0.3 * period_credit)
    return int(np.clip(round(score), 0, 100))
