"""The MCC comparator: templates -> cylinders -> calibrated scores against a gallery.

Implements :class:`matcher.comparator.Comparator` with Minutia Cylinder-Code (bit
cylinders, LSS-R consolidation). ``encode`` rescales a template to 500 ppi and builds its
valid cylinders; ``stack`` concatenates many encodings into one contiguous
structure-of-arrays gallery; ``scores`` runs the parallel Numba search and calibrates.

Two stages per candidate: the LSS score (mean of the best local similarities) for every
candidate, and the LSS-R relaxation only where LSS reaches ``gate``. The gate sits far
below any score that can matter for a decision (see ``benchmarks/fvc.py --no-gate``), so
candidates it drops keep their calibrated LSS score, which is then low.

The raw scores are symmetric in probe and gallery template (up to ties in pair order).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from matcher.calibration import ScoreCalibration, load_calibration
from matcher.cylinders import CylinderParams, make_cylinders
from matcher.similarity import CONCURRENT_CALLS_SAFE, MatchParams, search
from matcher.template import MATCHER_PPI, Template

DEFAULT_GATE = 0.0  # raw LSS below which LSS-R is skipped; set after measuring


@dataclass(frozen=True)
class MccTemplate:
    """Valid cylinders of one template, sorted by direction (an ``encode`` result)."""

    bits: np.ndarray  # (n, words) uint64
    valid: np.ndarray  # (n, 4) uint64
    x: np.ndarray  # (n,) float32, 500 ppi, y up
    y: np.ndarray  # (n,) float32
    angle: np.ndarray  # (n,) float32, ascending

    def __len__(self) -> int:
        return int(self.bits.shape[0])


@dataclass(frozen=True)
class MccGallery:
    """Many encodings as contiguous arrays; template g owns rows offsets[g]:offsets[g+1]."""

    bits: np.ndarray
    valid: np.ndarray
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    offsets: np.ndarray  # (G + 1,) int64

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)


def _default_threads() -> int:
    return max(1, min(numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1))


class MccComparator:
    """Minutia Cylinder-Code comparator (see the module docstring)."""

    name = "mcc"

    def __init__(
        self,
        cylinder_params: CylinderParams | None = None,
        match_params: MatchParams | None = None,
        calibration: ScoreCalibration | None = None,
        gate: float = DEFAULT_GATE,
        threads: int | None = None,
    ) -> None:
        self.cylinder_params = cylinder_params or CylinderParams()
        self.match_params = match_params or MatchParams()
        self._calibration = calibration
        self.gate = float(gate)
        wanted = int(threads or _default_threads())
        self.threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
        # the workqueue layer (no OpenMP/TBB) aborts on concurrent launches
        self._serial = None if CONCURRENT_CALLS_SAFE else threading.Lock()

    def encode(self, template: Template) -> MccTemplate:
        """Valid cylinders of the template rescaled to 500 ppi."""
        t = template.at_ppi(MATCHER_PPI)
        c = make_cylinders(t.x, t.y, t.angle, self.cylinder_params)
        return MccTemplate(c.bits, c.valid, c.x, c.y, c.angle)

    def stack(self, encoded: Sequence[MccTemplate]) -> MccGallery:
        """Concatenate encodings into one gallery (order kept)."""
        words = self.cylinder_params.words
        counts = np.array([len(e) for e in encoded], dtype=np.int64)
        offsets = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if not encoded:
            return MccGallery(
                np.zeros((0, words), np.uint64), np.zeros((0, 4), np.uint64),
                np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                offsets,
            )
        return MccGallery(
            bits=np.ascontiguousarray(np.concatenate([e.bits for e in encoded])),
            valid=np.ascontiguousarray(np.concatenate([e.valid for e in encoded])),
            x=np.ascontiguousarray(np.concatenate([e.x for e in encoded])),
            y=np.ascontiguousarray(np.concatenate([e.y for e in encoded])),
            angle=np.ascontiguousarray(np.concatenate([e.angle for e in encoded])),
            offsets=offsets,
        )

    def raw_scores(
        self, probe: MccTemplate, gallery: MccGallery, gate: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw (LSS, LSS-R) scores in [0, 1]; LSS-R is -1 where LSS was below the gate."""
        g = len(gallery)
        lss = np.zeros(g, np.float64)
        lssr = np.full(g, -1.0, np.float64)
        if g == 0:
            return lss, lssr
        gate = self.gate if gate is None else float(gate)
        # set per call: numba's thread count is per calling thread
        numba.set_num_threads(self.threads)
        chunks = max(1, min(g, 8 * self.threads))
        args = (
            probe.bits, probe.valid, probe.x, probe.y, probe.angle,
            gallery.bits, gallery.valid, gallery.x, gallery.y, gallery.angle, gallery.offsets,
            self.match_params, gate, chunks, lss, lssr,
        )
        if self._serial is None:
            search(*args)
        else:
            with self._serial:
                search(*args)
        return lss, lssr

    @property
    def calibration(self) -> ScoreCalibration:
        """The raw -> calibrated map (the shipped table unless one was given)."""
        if self._calibration is None:
            self._calibration = load_calibration()
        return self._calibration

    def calibrate(self, lss: np.ndarray, lssr: np.ndarray) -> np.ndarray:
        """Calibrated scores from raw stage scores (LSS-R where computed, else LSS)."""
        full = lssr >= 0.0
        return np.where(
            full, self.calibration.lssr(np.maximum(lssr, 0.0)), self.calibration.lss(lss)
        ).astype(np.float32)

    def scores(self, probe: MccTemplate, gallery: MccGallery) -> np.ndarray:
        """Calibrated scores, ``-10 log10(FMR)``, of the probe against every gallery row."""
        lss, lssr = self.raw_scores(probe, gallery)
        return self.calibrate(lss, lssr)
