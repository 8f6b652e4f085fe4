"""Map raw MCC scores to calibrated scores, ``-10 * log10(FMR)``, and refit the map.

The false match rate of a raw score ``v`` is the share of impostor comparisons scoring at
least ``v``. Up to a tail threshold ``u`` (the ``TAIL_COUNT``-th highest impostor score)
it is read off the empirical impostor distribution at a few dozen knots; beyond ``u`` the
exceedances are modelled as exponential (a generalised Pareto tail with shape 0, fitted
by maximum likelihood: scale = mean exceedance), which makes the calibrated score grow
linearly in the raw score there. The map is monotone by construction. Each consolidation
stage (the cheap stage's score for candidates it dropped, LSS-R for the rest) has its
own map, so both land on the same FMR scale.

Recalibrate (derived numbers only are written, no templates)::

    python -m matcher.calibration --templates DIR [DIR ...] --out matcher/data/mcc_calibration.json

Impostors are every pair of templates of different fingers: within each folder every
cross-finger pair, and every pair across folders.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).with_name("data") / "mcc_calibration.json"
TAIL_COUNT = 200  # impostor scores above the tail threshold used for the exponential fit
# Past SATURATE_FROM the linear tail is extrapolation far beyond the data; it is bent
# smoothly towards MAX_SCORE so scores stay strictly increasing (strong candidates still
# rank) without claiming absurd FMRs such as 1e-100.
SATURATE_FROM = 60.0
MAX_SCORE = 100.0


@dataclass(frozen=True)
class StageCalibration:
    """Raw -> calibrated score map of one consolidation stage."""

    raw: np.ndarray  # ascending knots, float64
    score: np.ndarray  # calibrated score at each knot, non-decreasing
    tail_slope: float  # calibrated points per raw unit beyond the last knot

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores (float32) for raw scores."""
        r = np.asarray(raw, dtype=np.float64)
        out = np.interp(r, self.raw, self.score, left=0.0)
        beyond = r > self.raw[-1]
        if np.any(beyond):
            out = np.where(beyond, self.score[-1] + self.tail_slope * (r - self.raw[-1]), out)
        span = MAX_SCORE - SATURATE_FROM
        high = out > SATURATE_FROM
        if np.any(high):
            bent = SATURATE_FROM + span * -np.expm1(-(out - SATURATE_FROM) / span)
            out = np.where(high, bent, out)
        return np.maximum(out, 0.0).astype(np.float32)

    def raw_for(self, score: float) -> float:
        """The smallest raw score whose calibrated score reaches ``score`` (inverse map)."""
        if score <= self.score[0]:
            return float(self.raw[0])
        if score > self.score[-1]:
            return float(self.raw[-1] + (score - self.score[-1]) / self.tail_slope)
        k = int(np.searchsorted(self.score, score, side="left"))
        s0, s1 = self.score[k - 1], self.score[k]
        r0, r1 = self.raw[k - 1], self.raw[k]
        return float(r1 if s1 == s0 else r0 + (score - s0) * (r1 - r0) / (s1 - s0))

    def to_json(self) -> dict:
        """Plain lists for the JSON file."""
        return {
            "raw": [round(float(v), 7) for v in self.raw],
            "score": [round(float(v), 4) for v in self.score],
            "tail_slope": round(float(self.tail_slope), 4),
        }

    @classmethod
    def from_json(cls, obj: dict) -> StageCalibration:
        """Read and check one stage's table."""
        raw = np.asarray(obj["raw"], dtype=np.float64)
        score = np.asarray(obj["score"], dtype=np.float64)
        if raw.ndim != 1 or raw.shape != score.shape or raw.size < 2:
            raise ValueError("calibration table: raw and score must be equal-length lists")
        if np.any(np.diff(raw) <= 0) or np.any(np.diff(score) < 0):
            raise ValueError("calibration table is not monotone")
        return cls(raw, score, float(obj["tail_slope"]))


@dataclass(frozen=True)
class ScoreCalibration:
    """Calibration of both stages plus what it was fitted on."""

    lssr: StageCalibration
    cheap: StageCalibration
    impostors: int
    source: str

    def save(self, path: Path) -> None:
        """Write the table as small, readable JSON."""
        doc = {
            "scale": "-10*log10(FMR)",
            "impostors": self.impostors,
            "source": self.source,
            "tail": f"exponential above the {TAIL_COUNT}-th highest impostor score",
            "lssr": self.lssr.to_json(),
            "cheap": self.cheap.to_json(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, indent=1)
        # one line per list keeps the file short and diffs readable
        text = re.sub(r"\[\s+([^\]]*?)\s+\]", lambda m: f"[{' '.join(m.group(1).split())}]", text)
        path.write_text(text + "\n")


def load_calibration(path: Path | None = None) -> ScoreCalibration:
    """The calibration table shipped with the matcher (or the one at ``path``)."""
    doc = json.loads(Path(path or DEFAULT_PATH).read_text())
    return ScoreCalibration(
        lssr=StageCalibration.from_json(doc["lssr"]),
        cheap=StageCalibration.from_json(doc["cheap"]),
        impostors=int(doc["impostors"]),
        source=str(doc.get("source", "")),
    )


def fit_stage(impostor_raw: np.ndarray, tail_count: int = TAIL_COUNT) -> StageCalibration:
    """Fit the raw -> ``-10 log10(FMR)`` map of one stage from impostor raw scores."""
    r = np.sort(np.asarray(impostor_raw, dtype=np.float64))[::-1]  # descending
    n = r.size
    if n < 2 * tail_count:
        raise ValueError(f"need at least {2 * tail_count} impostor scores, got {n}")
    u = r[tail_count - 1]
    exceed = r[:tail_count] - u
    beta = max(float(exceed.mean()), 1e-6)
    # knots: exceedance counts spaced evenly in log FMR from the tail threshold down to all
    counts = np.unique(np.round(np.geomspace(tail_count, n, 48)).astype(np.int64))
    values = r[counts - 1]
    ascending = np.sort(r)
    raw_knots: list[float] = []
    score_knots: list[float] = []
    for v in np.unique(values):
        at_least = n - np.searchsorted(ascending, v, side="left")
        raw_knots.append(float(v))
        score_knots.append(-10.0 * math.log10(at_least / n))
    if raw_knots[0] > 0.0:
        raw_knots.insert(0, 0.0)
        score_knots.insert(0, 0.0)
    score = np.maximum.accumulate(np.asarray(score_knots))
    return StageCalibration(
        raw=np.asarray(raw_knots), score=score, tail_slope=10.0 / (math.log(10.0) * beta)
    )


def _fingers_and_paths(folders: Sequence[Path]) -> list[tuple[str, Path]]:
    """(finger key, path) of every template file; the key includes the folder."""
    from benchmarks.fvc import list_templates

    out: list[tuple[str, Path]] = []
    for folder in folders:
        for key, _impression, path in list_templates(folder):
            out.append((f"{folder.resolve()}::{key}", path))
    return out


def impostor_raw_scores(folders: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Raw (cheap stage, LSS-R) scores of every different-finger pair over the folders."""
    from matcher.formats import decode_template
    from matcher.mcc import MccComparator

    items = _fingers_and_paths(folders)
    mcc = MccComparator()
    encoded = [mcc.encode(decode_template(p.read_bytes())) for _k, p in items]
    keys = np.array([k for k, _p in items])
    cheap_all: list[np.ndarray] = []
    lssr_all: list[np.ndarray] = []
    for i in range(len(encoded) - 1):
        others = [j for j in range(i + 1, len(encoded)) if keys[j] != keys[i]]
        if not others:
            continue
        gallery = mcc.stack([encoded[j] for j in others])
        cheap, lssr = mcc.raw_scores(encoded[i], gallery, gate=0.0)
        cheap_all.append(cheap)
        lssr_all.append(lssr)
    return np.concatenate(cheap_all), np.concatenate(lssr_all)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: refit the calibration table from folders of ISO/ANSI templates."""
    ap = argparse.ArgumentParser(
        prog="python -m matcher.calibration", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--templates", nargs="+", type=Path, required=True, help="template folders")
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help="JSON file to write")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cheap, lssr = impostor_raw_scores(args.templates)
    cal = ScoreCalibration(
        lssr=fit_stage(lssr),
        cheap=fit_stage(cheap),
        impostors=int(lssr.size),
        source="impostor pairs of "
        + ", ".join(f"{p.resolve().parent.name}/{p.name}" for p in args.templates),
    )
    cal.save(args.out)
    print(
        f"{lssr.size} impostor pairs, {time.perf_counter() - t0:.1f} s; wrote {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
