"""Fingerprint image -> minutiae template, for the gateway.

``extract(image, ppi)`` runs the default extractor; ``EXTRACTORS`` names all of them.
The returned template is finger 0 (unknown), in the input image's pixels and ``ppi``
(the matcher rescales to 500 ppi itself), with minutia qualities 0..100 and the image
quality set.
"""

from __future__ import annotations

import numpy as np

from gateway.extraction.extractors import DEFAULT_EXTRACTOR, EXTRACTORS, get_extractor
from matcher.template import Template

__all__ = ["DEFAULT_EXTRACTOR", "EXTRACTORS", "extract"]


def extract(image: np.ndarray, ppi: float, extractor: str | None = None) -> Template:
    """Minutiae of a uint8 grayscale print (dark ridges on a light background)."""
    return get_extractor(extractor)(image, float(ppi))
