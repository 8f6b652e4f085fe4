"""An external minutia detector (MINDTCT, LEADER) wrapped in our front and back stages.

The front stages (500 ppi resampling, contrast normalisation, structure tensor, mask,
orientation field, ridge period) run first and are handed to the detector, which may
use them (the "ink-mindtct" hybrid feeds MINDTCT our enhanced image) or only look at
the 500 ppi image. Around the detector we keep what our pipeline does well and the
detectors do not: the segmentation mask (rim minutiae), the smooth orientation field
(MINDTCT's angles come in 11.25 degree steps), the image quality for the gate, and a
cap on the count keeping the most confident minutiae. Coordinates go back to the input
image's frame at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from gateway.extraction.contrast import normalise_contrast
from gateway.extraction.detected import DetectedMinutiae
from gateway.extraction.frequency import ridge_period
from gateway.extraction.orientation import (
    GradientTensor,
    gradient_tensor,
    orientation_field,
)
from gateway.extraction.params import DEFAULT_PARAMS, ExtractionParams
from gateway.extraction.quality import quality_from_maps
from gateway.extraction.scaling import to_input_frame, to_working_resolution
from gateway.extraction.segmentation import segmentation_mask
from matcher.template import Template, make_template


@dataclass(frozen=True)
class FrontStages:
    """The pipeline's first stages, in the 500 ppi working frame."""

    scale: float  # working pixels per input pixel
    work: np.ndarray  # float32 0..1, dark ridges
    normalised: np.ndarray  # float32, ridges positive, local mean 0 and deviation ~1
    tensor: GradientTensor
    mask: np.ndarray  # bool, the finger
    theta: np.ndarray  # ridge direction in [0, pi), image frame
    period: np.ndarray  # ridge period in pixels

    @property
    def work_uint8(self) -> np.ndarray:
        """The working image as uint8 grey levels, as the external detectors take it."""
        return np.clip(np.round(self.work * 255.0), 0, 255).astype(np.uint8)


def front_stages(image: np.ndarray, ppi: float, params: ExtractionParams) -> FrontStages:
    """Resample to 500 ppi and compute mask, orientation field and ridge period."""
    work, scale = to_working_resolution(image, ppi)
    normalised = normalise_contrast(work, params.normalise_sigma)
    tensor = gradient_tensor(work, params)
    mask = segmentation_mask(tensor, params)
    theta = orientation_field(tensor, mask, params)
    period = ridge_period(normalised, mask, params)
    return FrontStages(scale, work, normalised, tensor, mask, theta, period)


# A detector reports minutiae in the working frame, given the front stages.
Detector = Callable[[FrontStages], DetectedMinutiae]


@dataclass(frozen=True)
class DetectorSettings:
    """How the detector's raw output is filtered; lengths in 500 ppi pixels."""

    min_confidence: float = 0.0  # the detector's own score, 0..1
    border_margin: float = 0.0  # drop minutiae closer than this to the mask's edge
    # ... or closer than this many ridge periods (the print's median), if that is more:
    # a margin in periods means the same on a child's finger as on an adult's.
    border_periods: float = 0.0
    refine_angles: bool = False  # axis from our orientation field, sense from the detector
    max_refine: float = 0.5  # radians: beyond this the detector disagrees; keep its angle
    max_minutiae: int = 60


@dataclass
class DetectorRun:
    """Intermediate results of one run, for overlays and tests (working frame)."""

    scale: float
    mask: np.ndarray
    raw: DetectedMinutiae
    kept: DetectedMinutiae
    removed: dict[str, int]


def extract_with_detector(
    image: np.ndarray, ppi: float, detector: Detector, settings: DetectorSettings,
    params: ExtractionParams = DEFAULT_PARAMS, debug: bool = False,
) -> tuple[Template, DetectorRun | None]:
    """The template of a uint8 grayscale print found by ``detector``; see the module doc."""
    _check_image(image)
    front = front_stages(image, ppi, params)
    raw = detector(front)
    kept, removed = _filter(raw, front.mask, _rim_margin(front, settings), settings)
    if settings.refine_angles and len(kept):
        kept = _refine_angles(kept, front.theta, settings.max_refine)
    order = np.argsort(-kept.confidence, kind="stable")[: settings.max_minutiae]
    removed["cap"] = len(kept) - order.size
    kept = kept.subset(order)

    h, w = image.shape
    x, y = to_input_frame(kept.x, kept.y, front.scale, w, h)
    quality = np.clip(np.round(100.0 * kept.confidence), 1, 100).astype(np.uint8)
    template = make_template(
        x, y, kept.angle, kept.kind, quality, width=w, height=h, ppi=ppi,
        image_quality=quality_from_maps(front.mask, front.tensor.coherence, front.period),
        metadata={"raw_minutiae": len(raw)},
    )
    if not debug:
        return template, None
    return template, DetectorRun(front.scale, front.mask, raw, kept, removed)


def _rim_margin(front: FrontStages, settings: DetectorSettings) -> float:
    if settings.border_periods <= 0.0 or not front.mask.any():
        return settings.border_margin
    period = float(np.median(front.period[front.mask]))
    return max(settings.border_margin, settings.border_periods * period)


def _filter(raw: DetectedMinutiae, mask: np.ndarray, margin: float,
            settings: DetectorSettings) -> tuple[DetectedMinutiae, dict[str, int]]:
    h, w = mask.shape
    xi = np.clip(np.round(raw.x).astype(np.int64), 0, w - 1)
    yi = np.clip(np.round(raw.y).astype(np.int64), 0, h - 1)
    # Distance to the background, with the image edge counted as background.
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    rim = dist[yi, xi] <= margin
    weak = raw.confidence < settings.min_confidence
    removed = {"rim": int(rim.sum()), "weak": int((weak & ~rim).sum())}
    return raw.subset(~(rim | weak)), removed


def _refine_angles(m: DetectedMinutiae, theta: np.ndarray,
                   max_refine: float) -> DetectedMinutiae:
    h, w = theta.shape
    xi = np.clip(np.round(m.x).astype(np.int64), 0, w - 1)
    yi = np.clip(np.round(m.y).astype(np.int64), 0, h - 1)
    # theta is the ridge axis in image coordinates (y down); the ISO angle of image
    # direction t is -t. Of the two senses of the axis take the one nearer the detector's.
    axis = np.mod(-theta[yi, xi].astype(np.float64), np.pi)
    a = m.angle.astype(np.float64)
    candidates = np.stack([axis, axis + np.pi])
    diff = np.abs(np.mod(candidates - a + np.pi, 2 * np.pi) - np.pi)
    best = candidates[np.argmin(diff, axis=0), np.arange(a.size)]
    off = diff.min(axis=0)
    angle = np.where(off <= max_refine, best, a)
    return DetectedMinutiae(m.x, m.y, np.mod(angle, 2 * np.pi).astype(np.float32), m.kind,
                            m.confidence)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("extraction needs a 2-D uint8 grayscale image (ridges dark)")
    if min(image.shape) < 32:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for a print")
