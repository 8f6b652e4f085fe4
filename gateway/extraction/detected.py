"""Minutiae as a detector reports them, before our filters: the common currency of the
external detectors (MINDTCT, LEADER) in the 500 ppi working frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectedMinutiae:
    """Parallel arrays: position (px), ISO angle (rad), kind code, confidence 0..1."""

    x: np.ndarray  # float32
    y: np.ndarray  # float32
    angle: np.ndarray  # float32, radians in [0, 2 pi), ISO convention
    kind: np.ndarray  # uint8, MinutiaKind codes
    confidence: np.ndarray  # float32, 0..1, the detector's own certainty

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def empty(cls) -> DetectedMinutiae:
        """No minutiae."""
        f = np.zeros(0, np.float32)
        return cls(f, f, f, np.zeros(0, np.uint8), f)

    def subset(self, keep: np.ndarray) -> DetectedMinutiae:
        """The minutiae selected by a boolean mask or an index array."""
        return DetectedMinutiae(self.x[keep], self.y[keep], self.angle[keep],
                                self.kind[keep], self.confidence[keep])
