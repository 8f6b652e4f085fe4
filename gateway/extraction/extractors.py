"""The registry of extractors: a name -> a function from (image, ppi) to a Template.

All extractors share the pipeline (scaling, mask, orientation, enhancement, filters,
angles, quality); they differ in their parameters or in the minutia detector.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from gateway.extraction.ffe_detector import detect_with_ffe
from gateway.extraction.params import DEFAULT_PARAMS, FAST_PARAMS
from gateway.extraction.pipeline import detect_by_crossing_number, run_pipeline
from matcher.template import Template

Extractor = Callable[[np.ndarray, float], Template]


def _pipeline_extractor(**kwargs) -> Extractor:
    run = partial(run_pipeline, **kwargs)

    def extract(image: np.ndarray, ppi: float) -> Template:
        return run(image, ppi)[0]

    return extract


REGISTRY: dict[str, Extractor] = {
    # The pipeline with its crossing-number detector: the default.
    "ink": _pipeline_extractor(params=DEFAULT_PARAMS, detector=detect_by_crossing_number),
    # A smaller Gabor bank (8 orientations, one period): for slow gateways.
    "ink-fast": _pipeline_extractor(params=FAST_PARAMS, detector=detect_by_crossing_number),
    # The design card's fingerprint-feature-extractor inside the pipeline.
    "ffe": _pipeline_extractor(params=DEFAULT_PARAMS, detector=detect_with_ffe),
}
EXTRACTORS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_EXTRACTOR = "ink"


def get_extractor(name: str | None) -> Extractor:
    """The extractor called ``name`` (the default for None), or a ValueError naming them."""
    key = DEFAULT_EXTRACTOR if name is None else name
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}"
        ) from None
