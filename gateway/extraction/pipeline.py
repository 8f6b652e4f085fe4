"""The extraction pipeline: a fingerprint image in, a minutiae template out.

Read :func:`run_pipeline` top to bottom: it is the description of the method. Each stage
is a small function in its own module with its numbers in :class:`ExtractionParams`;
with ``debug=True`` every intermediate result comes back in a :class:`Stages` record so a
person (or a test) can look at it. Everything happens at 500 ppi; coordinates go back to
the input image's frame at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from gateway.extraction import minutiae_filters as filters
from gateway.extraction.contrast import normalise_contrast
from gateway.extraction.enhancement import gabor_enhance
from gateway.extraction.frequency import ridge_period
from gateway.extraction.minutiae_detection import (
    Candidates,
    crossing_number,
    crossing_number_candidates,
)
from gateway.extraction.minutiae_direction import iso_angle, minutia_directions
from gateway.extraction.minutiae_quality import keep_best, minutia_quality
from gateway.extraction.orientation import gradient_tensor, orientation_field
from gateway.extraction.params import DEFAULT_PARAMS, ExtractionParams
from gateway.extraction.quality import quality_from_maps
from gateway.extraction.scaling import to_input_frame, to_working_resolution
from gateway.extraction.segmentation import segmentation_mask
from gateway.extraction.skeleton import binarise, thin
from gateway.extraction.skeleton_tracing import trace_branches
from matcher.template import MinutiaKind, Template, make_template

# Finds minutia candidates given the ridge map and its skeleton (with crossing numbers).
MinutiaDetector = Callable[[np.ndarray, np.ndarray, np.ndarray], Candidates]


def detect_by_crossing_number(ridges: np.ndarray, skeleton: np.ndarray,
                              cn: np.ndarray) -> Candidates:
    """The pipeline's own detector: crossing number on the skeleton."""
    return crossing_number_candidates(skeleton, cn)


@dataclass
class Stages:
    """Every intermediate result of one run, in the working (500 ppi) frame."""

    scale: float = 1.0  # working pixels per input pixel
    image: np.ndarray | None = None
    normalised: np.ndarray | None = None
    mask: np.ndarray | None = None
    coherence: np.ndarray | None = None
    orientation: np.ndarray | None = None
    period: np.ndarray | None = None
    enhanced: np.ndarray | None = None
    ridges: np.ndarray | None = None
    skeleton: np.ndarray | None = None
    candidates: Candidates | None = None
    removed: dict[str, int] = field(default_factory=dict)  # filter name -> count
    minutiae: Candidates | None = None  # after filters and cap, working frame
    mask_input_frame: np.ndarray | None = None


def run_pipeline(
    image: np.ndarray,
    ppi: float,
    params: ExtractionParams = DEFAULT_PARAMS,
    detector: MinutiaDetector = detect_by_crossing_number,
    debug: bool = False,
) -> tuple[Template, Stages | None]:
    """Minutiae of a uint8 grayscale image (dark ridges); see the module docstring."""
    _check_image(image)
    work, scale = to_working_resolution(image, ppi)
    normalised = normalise_contrast(work, params.normalise_sigma)
    tensor = gradient_tensor(work, params)
    mask = segmentation_mask(tensor, params)
    theta = orientation_field(tensor, mask, params)
    period = ridge_period(normalised, mask, params)
    enhanced = gabor_enhance(normalised, theta, period, mask, params)
    ridges = binarise(enhanced, mask, params)
    skeleton = thin(ridges)
    cn = crossing_number(skeleton)
    raw = detector(ridges, skeleton, cn)
    kept, dx, dy, removed = _filter_minutiae(raw, skeleton, cn, theta, mask, params)
    quality = minutia_quality(kept.x, kept.y, tensor.coherence, enhanced, mask)
    best = keep_best(quality, params.max_minutiae)
    removed["cap"] = len(kept) - best.size
    kept, dx, dy, quality = kept.subset(best), dx[best], dy[best], quality[best]

    h, w = image.shape
    x, y = to_input_frame(kept.x, kept.y, scale, w, h)
    template = make_template(
        x, y, iso_angle(dx, dy), kept.kind, quality, width=w, height=h, ppi=ppi,
        image_quality=quality_from_maps(mask, tensor.coherence, period),
        metadata={"raw_minutiae": len(raw)},
    )
    if not debug:
        return template, None
    stages = Stages(
        scale=scale, image=work, normalised=normalised, mask=mask,
        coherence=tensor.coherence, orientation=theta, period=period, enhanced=enhanced,
        ridges=ridges, skeleton=skeleton, candidates=raw, removed=removed, minutiae=kept,
        mask_input_frame=_mask_to_input(mask, w, h),
    )
    return template, stages


def _filter_minutiae(
    raw: Candidates, skeleton: np.ndarray, cn: np.ndarray, theta: np.ndarray,
    mask: np.ndarray, params: ExtractionParams,
) -> tuple[Candidates, np.ndarray, np.ndarray, dict[str, int]]:
    """Apply the false-minutiae rules; the survivors with their direction vectors."""
    traces = trace_branches(skeleton, cn, raw, params.trace_length, params.direction_length)
    dx, dy = minutia_directions(raw, traces, theta)
    index = filters.candidate_index_map(raw, skeleton.shape)
    expected_branches = np.where(raw.kind == MinutiaKind.ENDING, 1, 3)
    rules = {
        "malformed": np.flatnonzero(traces.count != expected_branches),
        "spur": filters.spurs(raw, traces, index, params),
        "short_ridge": filters.short_ridges(raw, traces, index, params),
        "bridge": filters.bridges(raw, traces, index, params),
        "ridge_break": filters.ridge_breaks(raw, dx, dy, params),
        "cluster": filters.clusters(raw, params),
        "truncated": filters.truncated_ridges(raw, dx, dy, mask, params),
        "rim": filters.rim(raw, mask, params),
    }
    keep = np.ones(len(raw), bool)
    removed: dict[str, int] = {}
    for name, rejected in rules.items():
        removed[name] = int(keep[rejected].sum())  # counted once, by the first rule
        keep[rejected] = False
    return raw.subset(keep), dx[keep], dy[keep], removed


def _mask_to_input(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (width, height),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("extraction needs a 2-D uint8 grayscale image (ridges dark)")
    if min(image.shape) < 32:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for a print")
