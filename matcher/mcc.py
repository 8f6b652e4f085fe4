"""The MCC comparator: templates -> cylinders -> calibrated scores against a gallery.

Implements :class:`matcher.comparator.Comparator` with Minutia Cylinder-Code (bit
cylinders, LSS-R consolidation). ``encode`` rescales a template to 500 ppi and builds its
valid cylinders; ``stack`` concatenates many encodings into one contiguous
structure-of-arrays gallery; ``scores`` runs the parallel Numba search and calibrates.

Two stages per candidate (:mod:`matcher.similarity`): a cheap score for every candidate
(a small relaxation over the best pairs by approximate local similarity), and the full
LSS-R only where the cheap score reaches the gate (calibrated ``gate_score``, FMR 5 %).
Candidates the gate drops keep their calibrated cheap score, which is then low. Both
stages share one FMR scale (:mod:`matcher.calibration`). In a gallery of more than 256
templates at most the best 1 % (at least 256) of the candidates that pass the gate, by
cheap score, get LSS-R, which bounds the cost of a search whatever the probe.

LSS-R is symmetric in probe and gallery template (up to ties in pair order); the cheap
stage is nearly so. ``benchmarks.fvc`` keeps the higher score of the two directions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from matcher.calibration import ScoreCalibration, load_calibration
from matcher.cylinders import (
    CylinderParams,
    bit_density,
    make_cylinders,
    make_cylinders_batch,
    make_sketches,
)
from matcher.similarity import (
    MatchParams,
    search,
    search_listed,
    search_serial,
)
from matcher.template import MATCHER_PPI, Template

# The cheap stage drops a candidate whose cheap score is calibrated below this (FMR 5 %):
# on the development data that skipped LSS-R for 95 % of impostors and lost no genuine
# comparison whose LSS-R score would have reached 20 (FMR 1 %); see benchmarks/fvc.py
# --no-gate for the comparison.
DEFAULT_GATE_SCORE = 13.0
SERIAL_BELOW = 64  # galleries smaller than this are scored on the calling thread
# In a large gallery, LSS-R goes to at most this many of the candidates that pass the
# gate (the best by cheap score): some probes pass the gate with many impostors, and
# the rest of a 1:N ranking does not need LSS-R. Galleries up to SHORTLIST_MIN (every
# 1:1 and FVC run) are unaffected.
SHORTLIST_MIN = 256
SHORTLIST_SHARE = 0.01


@dataclass(frozen=True)
class MccTemplate:
    """Valid cylinders of one template, sorted by direction (an ``encode`` result)."""

    bits: np.ndarray  # (n, words) uint64
    valid: np.ndarray  # (n, 4) uint64
    density: np.ndarray  # (n, 2) float64: bits per valid cell and its root (cheap stage)
    sketch: np.ndarray  # (n, 1 + nd) uint64: 8 x 8 coarse cylinder (cheap stage)
    sketch_density: np.ndarray  # (n, 2) float64
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
    density: np.ndarray
    sketch: np.ndarray
    sketch_density: np.ndarray
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    offsets: np.ndarray  # (G + 1,) int64

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)


NO_RELAXATION = 2.0  # a gate above any raw score: cheap stage only


def shortlist_size(gallery_size: int) -> int:
    """How many candidates of a gallery may get LSS-R under the default gate."""
    return max(SHORTLIST_MIN, int(np.ceil(SHORTLIST_SHARE * gallery_size)))


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
        gate_score: float | None = DEFAULT_GATE_SCORE,
        threads: int | None = None,
    ) -> None:
        self.cylinder_params = cylinder_params or CylinderParams()
        self.match_params = match_params or MatchParams()
        self._calibration = calibration
        self.gate_score = gate_score
        self._gate: float | None = None
        wanted = int(threads or _default_threads())
        self.threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
        # One parallel launch at a time: a launch already keeps every core busy, and
        # concurrent ones (a server's worker threads) only oversubscribe them -- 64 load
        # clients got 0.63 searches/s that way against 1.4/s for one search alone. (The
        # workqueue threading layer would even abort on concurrent launches.) Small
        # galleries, 1:1 checks among them, run serially on the caller's thread, unqueued.
        self._launch = threading.Lock()

    def encode(self, template: Template) -> MccTemplate:
        """Valid cylinders of the template rescaled to 500 ppi."""
        t = template.at_ppi(MATCHER_PPI)
        c = make_cylinders(t.x, t.y, t.angle, self.cylinder_params)
        sketch, sketch_density = make_sketches(c.bits, c.valid)
        return MccTemplate(
            c.bits, c.valid, bit_density(c.bits, c.valid), sketch, sketch_density,
            c.x, c.y, c.angle,
        )

    def encode_many(
        self, templates: Sequence[Template], *, threads: int | None = None
    ) -> MccGallery:
        """``stack([encode(t) for t in templates])``, with the cylinders built in parallel
        on ``threads`` cores (default :attr:`threads`) and no per-template Python work
        beyond rescaling (the bulk enrolment path)."""
        numba.set_num_threads(max(1, min(threads or self.threads, self.threads)))
        scaled = [t.at_ppi(MATCHER_PPI) for t in templates]
        c, offsets = make_cylinders_batch(
            [(t.x, t.y, t.angle) for t in scaled], self.cylinder_params
        )
        sketch, sketch_density = make_sketches(c.bits, c.valid)
        return MccGallery(
            bits=c.bits, valid=c.valid, density=bit_density(c.bits, c.valid), sketch=sketch,
            sketch_density=sketch_density, x=c.x, y=c.y, angle=c.angle, offsets=offsets,
        )

    def stack(self, encoded: Sequence[MccTemplate]) -> MccGallery:
        """Concatenate encodings into one gallery (order kept)."""
        words = self.cylinder_params.words
        counts = np.array([len(e) for e in encoded], dtype=np.int64)
        offsets = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if not encoded:
            return MccGallery(
                np.zeros((0, words), np.uint64), np.zeros((0, 4), np.uint64),
                np.zeros((0, 2), np.float64),
                np.zeros((0, 1 + self.cylinder_params.nd), np.uint64), np.zeros((0, 2), np.float64),
                np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                offsets,
            )
        return MccGallery(
            bits=np.ascontiguousarray(np.concatenate([e.bits for e in encoded])),
            valid=np.ascontiguousarray(np.concatenate([e.valid for e in encoded])),
            density=np.ascontiguousarray(np.concatenate([e.density for e in encoded])),
            sketch=np.ascontiguousarray(np.concatenate([e.sketch for e in encoded])),
            sketch_density=np.ascontiguousarray(
                np.concatenate([e.sketch_density for e in encoded])
            ),
            x=np.ascontiguousarray(np.concatenate([e.x for e in encoded])),
            y=np.ascontiguousarray(np.concatenate([e.y for e in encoded])),
            angle=np.ascontiguousarray(np.concatenate([e.angle for e in encoded])),
            offsets=offsets,
        )

    def raw_scores(
        self, probe: MccTemplate, gallery: MccGallery, gate: float | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw (cheap stage, LSS-R) scores in [0, 1]; LSS-R is -1 where it was not computed.

        With ``gate`` given, LSS-R is computed wherever the cheap score reaches it
        (``gate=0.0``: everywhere). By default the comparator's gate applies, and when
        more candidates are compared than :func:`shortlist_size` allows LSS-R for, only
        that many of those that pass it, the best by cheap score, get LSS-R. ``rows``
        (ascending) restricts the comparison to those gallery templates; the others keep
        cheap 0 and LSS-R -1.
        """
        g = len(gallery)
        cheap = np.zeros(g, np.float64)
        lssr = np.full(g, -1.0, np.float64)
        rows = np.arange(g, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if rows.size == 0:
            return cheap, lssr
        limit = shortlist_size(rows.size)
        if gate is None and rows.size > limit:
            return self._shortlisted(probe, gallery, cheap, lssr, limit, rows)
        gate = self.gate if gate is None else float(gate)
        probe_arrays = (
            probe.bits, probe.valid, probe.density, probe.sketch, probe.sketch_density,
            probe.x, probe.y, probe.angle,
        )
        gallery_arrays = (
            gallery.bits, gallery.valid, gallery.density, gallery.sketch,
            gallery.sketch_density, gallery.x, gallery.y, gallery.angle, gallery.offsets,
        )
        if self.threads == 1 or rows.size < SERIAL_BELOW:
            # nogil: other Python threads run meanwhile, and no thread pool is involved
            search_serial(*probe_arrays, *gallery_arrays, self.match_params, gate, rows, cheap,
                          lssr)
            return cheap, lssr
        # set per call: numba's thread count belongs to the calling thread
        numba.set_num_threads(self.threads)
        chunks = max(1, min(rows.size, 8 * self.threads))
        args = (*probe_arrays, *gallery_arrays, self.match_params, gate, rows, chunks, cheap,
                lssr)
        with self._launch:
            search(*args)
        return cheap, lssr

    def _shortlisted(
        self, probe: MccTemplate, gallery: MccGallery, cheap: np.ndarray, lssr: np.ndarray,
        limit: int, rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cheap stage for every candidate, then LSS-R for the shortlist only."""
        cheap, lssr = self.raw_scores(probe, gallery, gate=NO_RELAXATION, rows=rows)
        self._relax(probe, gallery, self._shortlist(cheap[rows], limit, rows), lssr)
        return cheap, lssr

    def _shortlist(self, cheap: np.ndarray, limit: int, rows: np.ndarray) -> np.ndarray:
        """Of ``rows`` (cheap scores in the same order), the at most ``limit`` best that
        pass the gate, ascending."""
        passing = np.flatnonzero(cheap >= self.gate)
        if passing.size > limit:
            passing = passing[np.argpartition(-cheap[passing], limit - 1)[:limit]]
        return np.sort(rows[passing]).astype(np.int64)

    def _relax(
        self, probe: MccTemplate, gallery: MccGallery, listed: np.ndarray, lssr: np.ndarray
    ) -> None:
        """LSS-R of the listed rows into ``lssr``."""
        if listed.size == 0:
            return
        numba.set_num_threads(self.threads)
        args = (
            probe.bits, probe.valid, probe.x, probe.y, probe.angle,
            gallery.bits, gallery.valid, gallery.x, gallery.y, gallery.angle, gallery.offsets,
            self.match_params, listed, max(1, min(listed.size, 4 * self.threads)), lssr,
        )
        with self._launch:
            search_listed(*args)

    def scores_of_parts(
        self, probe: MccTemplate, parts: Sequence[tuple[MccGallery, np.ndarray]]
    ) -> list[np.ndarray]:
        """Calibrated scores of the listed rows of several galleries (see the protocol):
        the cheap stage for every row, and LSS-R for one shortlist of
        :func:`shortlist_size` over all the rows -- per part it would be that many per
        segment of a large index."""
        parts = [(g, np.asarray(r, np.int64)) for g, r in parts]
        total = sum(r.size for _, r in parts)
        if total <= shortlist_size(total):  # LSS-R wherever the gate passes
            return [self.scores(probe, g, rows=r)[r] for g, r in parts]
        raw = [self.raw_scores(probe, g, gate=NO_RELAXATION, rows=r) for g, r in parts]
        cheap = np.concatenate([c[r] for (c, _), (_, r) in zip(raw, parts, strict=True)])
        owner = np.repeat(np.arange(len(parts)), [r.size for _, r in parts])
        places = np.concatenate([np.arange(r.size) for _, r in parts])
        best = self._shortlist(cheap, shortlist_size(total), np.arange(total))
        out = []
        for i, ((g, r), (c, lssr)) in enumerate(zip(parts, raw, strict=True)):
            self._relax(probe, g, r[places[best[owner[best] == i]]], lssr)
            out.append(self.calibrate(c[r], lssr[r]))
        return out

    @property
    def gate(self) -> float:
        """Raw cheap-stage score below which LSS-R is skipped (0: never skipped)."""
        if self._gate is None:
            self._gate = (
                0.0 if self.gate_score is None else self.calibration.cheap.raw_for(self.gate_score)
            )
        return self._gate

    @property
    def calibration(self) -> ScoreCalibration:
        """The raw -> calibrated map (the shipped table unless one was given)."""
        if self._calibration is None:
            self._calibration = load_calibration()
        return self._calibration

    def calibrate(self, cheap: np.ndarray, lssr: np.ndarray) -> np.ndarray:
        """Calibrated scores from raw stage scores (LSS-R where computed, else cheap)."""
        full = lssr >= 0.0
        return np.where(
            full, self.calibration.lssr(np.maximum(lssr, 0.0)), self.calibration.cheap(cheap)
        ).astype(np.float32)

    def scores(
        self, probe: MccTemplate, gallery: MccGallery, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated scores, ``-10 log10(FMR)``, of the probe against every gallery row,
        or against ``rows`` only (ascending; the others score 0)."""
        cheap, lssr = self.raw_scores(probe, gallery, rows=rows)
        return self.calibrate(cheap, lssr)
