"""The in-memory minutiae template: one finger, structure of arrays.

Conventions (DESIGN.md, the ISO/IEC 19794-2 convention): x, y in pixels with the origin
at the top-left, x to the right, y down; ``angle`` in radians in [0, 2*pi), measured
counter-clockwise from +x as seen on the image, so a minutia's direction vector in image
coordinates is ``(cos a, -sin a)``; ``kind`` as ISO codes it; ``quality`` 0..100.
The resolution (ppi) and the finger position travel with the template, because the
matcher rescales to 500 ppi before comparing and a probe with a known finger searches
that finger first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

TWO_PI = 2.0 * math.pi
MATCHER_PPI = 500.0

# Bounds that catch garbage rather than limit real prints: a 1000 ppi rolled print is
# under 2000 px on a side, and ISO 2005 allows at most 255 minutiae per view.
MAX_IMAGE_SIDE = 4096
MAX_MINUTIAE = 255
MIN_PPI = 100.0
MAX_PPI = 2000.0


class TemplateError(ValueError):
    """A template or template record is malformed; the message says what and where."""


class MinutiaKind(IntEnum):
    """Minutia type, with the ISO/IEC 19794-2 two-bit codes."""

    OTHER = 0
    ENDING = 1
    BIFURCATION = 2


class Finger(IntEnum):
    """ANSI/NIST finger position (FGP) codes, as ISO/IEC 19794-2 uses them."""

    UNKNOWN = 0
    RIGHT_THUMB = 1
    RIGHT_INDEX = 2
    RIGHT_MIDDLE = 3
    RIGHT_RING = 4
    RIGHT_LITTLE = 5
    LEFT_THUMB = 6
    LEFT_INDEX = 7
    LEFT_MIDDLE = 8
    LEFT_RING = 9
    LEFT_LITTLE = 10

    @property
    def label(self) -> str:
        """A name for people: 'right index', 'unknown finger'."""
        if self is Finger.UNKNOWN:
            return "unknown finger"
        return self.name.lower().replace("_", " ")


def finger_from_code(code: int) -> Finger:
    """The Finger for an FGP code, with a clear error for codes outside 0..10."""
    try:
        return Finger(int(code))
    except ValueError:
        raise TemplateError(
            f"finger position {code} is not an FGP code: use 0 (unknown) or 1..10 "
            "(1 right thumb ... 10 left little)"
        ) from None


@dataclass(frozen=True, eq=False)
class Template:
    """Minutiae of one finger impression, as parallel arrays.

    Build one with :func:`make_template`, which validates and normalises dtypes; the
    constructor trusts its arguments.
    """

    x: np.ndarray  # float32, pixels
    y: np.ndarray  # float32, pixels
    angle: np.ndarray  # float32, radians in [0, 2*pi)
    kind: np.ndarray  # uint8, MinutiaKind codes
    quality: np.ndarray  # uint8, 0..100
    width: int
    height: int
    ppi: float = MATCHER_PPI
    finger: Finger = Finger.UNKNOWN
    impression: int = 0  # ISO impression type: 0 live-scan plain, 1 live-scan rolled, ...
    image_quality: int = 0  # 0..100, 0 when not reported
    metadata: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def at_ppi(self, ppi: float = MATCHER_PPI) -> Template:
        """The same minutiae rescaled to ``ppi``; angles do not change with scale."""
        if abs(self.ppi - ppi) < 1e-6:
            return self
        s = ppi / self.ppi
        return Template(
            x=(self.x * s).astype(np.float32),
            y=(self.y * s).astype(np.float32),
            angle=self.angle,
            kind=self.kind,
            quality=self.quality,
            width=max(1, round(self.width * s)),
            height=max(1, round(self.height * s)),
            ppi=float(ppi),
            finger=self.finger,
            impression=self.impression,
            image_quality=self.image_quality,
            metadata=self.metadata,
        )

    def with_finger(self, finger: int) -> Template:
        """A copy that claims another finger position."""
        return Template(
            self.x, self.y, self.angle, self.kind, self.quality, self.width, self.height,
            self.ppi, finger_from_code(finger), self.impression, self.image_quality,
            self.metadata,
        )

    def same_minutiae(self, other: Template, xy_tol: float = 0.5, angle_tol: float = 0.0) -> bool:
        """True when both hold the same minutiae in the same order, within tolerances."""
        if len(self) != len(other):
            return False
        da = np.abs((self.angle - other.angle + math.pi) % TWO_PI - math.pi)
        return bool(
            np.all(np.abs(self.x - other.x) <= xy_tol)
            and np.all(np.abs(self.y - other.y) <= xy_tol)
            and np.all(da <= angle_tol + 1e-6)
            and np.array_equal(self.kind, other.kind)
        )


def _plausible(xs, ys, angles, kinds, quals, width: int, height: int) -> bool:
    """Whether minutiae pass every check of :func:`make_template`, by a few reductions
    (a NaN fails every comparison, so it fails here too); which check fails is worked out
    only when one does, for the message."""
    return bool(
        xs.min() >= 0 and ys.min() >= 0 and xs.max() < width and ys.max() < height
        and np.isfinite(angles.sum()) and kinds.min() >= 0 and kinds.max() <= 2
        and quals.min() >= 0 and quals.max() <= 100
    )


def make_template(
    x,
    y,
    angle,
    kind=None,
    quality=None,
    *,
    width: int,
    height: int,
    ppi: float = MATCHER_PPI,
    finger: int = 0,
    impression: int = 0,
    image_quality: int = 0,
    metadata: dict | None = None,
) -> Template:
    """Validate minutiae and build a :class:`Template`.

    Raises :class:`TemplateError` with an actionable message for absurd input: sizes or
    resolution out of range, coordinates outside the image, angles that are not finite,
    unknown minutia kinds, qualities outside 0..100, or too many minutiae.
    """
    xs = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    ys = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    angles = np.ascontiguousarray(angle, dtype=np.float64).reshape(-1)
    n = xs.shape[0]
    kinds = (
        np.full(n, MinutiaKind.ENDING, np.uint8)
        if kind is None
        else np.ascontiguousarray(kind).reshape(-1)
    )
    quals = (
        np.zeros(n, np.uint8) if quality is None else np.ascontiguousarray(quality).reshape(-1)
    )
    if not (ys.shape[0] == angles.shape[0] == kinds.shape[0] == quals.shape[0] == n):
        raise TemplateError(
            f"minutiae arrays differ in length (x {n}, y {ys.shape[0]}, angle "
            f"{angles.shape[0]}, kind {kinds.shape[0]}, quality {quals.shape[0]})"
        )
    if n > MAX_MINUTIAE:
        raise TemplateError(f"{n} minutiae is more than the {MAX_MINUTIAE} a template may hold")
    if not (0 < int(width) <= MAX_IMAGE_SIDE and 0 < int(height) <= MAX_IMAGE_SIDE):
        raise TemplateError(
            f"image size {width}x{height} is outside 1..{MAX_IMAGE_SIDE} pixels per side"
        )
    if not (math.isfinite(ppi) and MIN_PPI <= ppi <= MAX_PPI):
        raise TemplateError(
            f"resolution {ppi} ppi is outside {MIN_PPI:.0f}..{MAX_PPI:.0f}; "
            "say the scanner's real resolution (most are 500 ppi)"
        )
    if n and not _plausible(xs, ys, angles, kinds, quals, width, height):
        if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
            raise TemplateError("a minutia has a coordinate that is not a finite number")
        bad = np.flatnonzero((xs < 0) | (ys < 0) | (xs >= width) | (ys >= height))
        if bad.size:
            # The message names the minutia, never its coordinates: it may be a probe's.
            raise TemplateError(
                f"{bad.size} minutiae (the first is number {int(bad[0])}) lie outside the "
                f"{width}x{height} image; check the image size and that coordinates are "
                "pixels with the origin at the top-left"
            )
        if not np.all(np.isfinite(angles)):
            raise TemplateError("a minutia has an angle that is not a finite number")
        if kinds.min() < 0 or kinds.max() > 2:
            raise TemplateError("minutia kind must be 0 (other), 1 (ending) or 2 (bifurcation)")
        if quals.min() < 0 or quals.max() > 100:
            raise TemplateError("minutia quality must be within 0..100")
    if not 0 <= int(image_quality) <= 100:
        raise TemplateError("image quality must be within 0..100")
    return Template(
        x=xs,
        y=ys,
        angle=np.mod(angles, TWO_PI).astype(np.float32),
        kind=kinds.astype(np.uint8),
        quality=quals.astype(np.uint8),
        width=int(width),
        height=int(height),
        ppi=float(ppi),
        finger=finger_from_code(finger),
        impression=int(impression),
        image_quality=int(image_quality),
        metadata=dict(metadata or {}),
    )
