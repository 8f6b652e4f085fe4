"""The design card's fingerprint-feature-extractor as a minutia detector in our pipeline.

The package thins a white-ridge binary image itself and reports endings and
"bifurcations" (skeleton pixels with three neighbours, so staircase corners too). Here
it only proposes candidates on our enhanced, binarised ridge map; our mask, branch
tracing, spurious-minutiae rules and orientation-field angles do the rest. Its quirks:
``locX`` is the row and ``locY`` the column, ridges must be white (255), and its own
angles (degrees, y up, coarse) are not used.
"""

from __future__ import annotations

import warnings

import numpy as np

from gateway.extraction.minutiae_detection import Candidates
from matcher.template import MinutiaKind


def detect_with_ffe(ridges: np.ndarray, skeleton: np.ndarray, cn: np.ndarray) -> Candidates:
    """Candidates from fingerprint_feature_extractor run on our ridge map."""
    import fingerprint_feature_extractor  # slow to import and optional: load on first use

    with warnings.catch_warnings():
        # It calls deprecated scikit-image and NumPy APIs on every image.
        warnings.simplefilter("ignore")
        endings, bifurcations = fingerprint_feature_extractor.extract_minutiae_features(
            ridges.astype(np.uint8) * 255, invertImage=False, showResult=False,
            saveResult=False,
        )
    rows = [m.locX for m in endings] + [m.locX for m in bifurcations]
    cols = [m.locY for m in endings] + [m.locY for m in bifurcations]
    kinds = [MinutiaKind.ENDING] * len(endings) + [MinutiaKind.BIFURCATION] * len(bifurcations)
    y = np.asarray(rows, np.int32)
    x = np.asarray(cols, np.int32)
    kind = np.asarray(kinds, np.uint8)
    # Its points are skeleton pixels of the same skeletonisation; keep only those that are
    # on ours so branch tracing starts on the ridge.
    on = skeleton[y, x] > 0 if y.size else np.zeros(0, bool)
    return Candidates(x[on], y[on], kind[on])
