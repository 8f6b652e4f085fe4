"""Minutia candidates on a ridge skeleton by the crossing number (Rutovitz).

The crossing number of a skeleton pixel is half the number of 0/1 changes around its
eight neighbours: 1 marks a ridge ending, 2 a ridge pixel, 3 a bifurcation. Unlike a
neighbour count it does not fire on the staircase corners of a skeleton.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matcher.template import MinutiaKind

# The eight neighbours in cyclic order, clockwise from north as seen on the image.
NEIGHBOUR_DY = np.array([-1, -1, 0, 1, 1, 1, 0, -1], np.int32)
NEIGHBOUR_DX = np.array([0, 1, 1, 1, 0, -1, -1, -1], np.int32)


@dataclass(frozen=True)
class Candidates:
    """Minutia candidates in the working frame: integer pixel positions and kinds."""

    x: np.ndarray  # int32
    y: np.ndarray  # int32
    kind: np.ndarray  # uint8 MinutiaKind

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, keep: np.ndarray) -> Candidates:
        """The candidates where ``keep`` (bool or indices) selects."""
        return Candidates(self.x[keep], self.y[keep], self.kind[keep])


def crossing_number(skeleton: np.ndarray) -> np.ndarray:
    """Crossing number per pixel (uint8), 0 off the skeleton."""
    padded = np.pad(skeleton.astype(np.int8), 1)
    h, w = skeleton.shape
    ring = [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in
            zip(NEIGHBOUR_DY, NEIGHBOUR_DX, strict=True)]
    changes = np.zeros((h, w), np.int8)
    for k in range(8):
        changes += np.abs(ring[k] - ring[(k + 1) % 8])
    return ((changes // 2) * (skeleton > 0)).astype(np.uint8)


def crossing_number_candidates(skeleton: np.ndarray, cn: np.ndarray) -> Candidates:
    """Endings (CN 1) and bifurcations (CN 3) of the skeleton.

    Pixels with CN 4 or more are ridge crossings or tangles: rare on real prints and
    never reliable, so they are not minutiae.
    """
    ys, xs = np.nonzero((cn == 1) | (cn == 3))
    kind = np.where(cn[ys, xs] == 1, MinutiaKind.ENDING, MinutiaKind.BIFURCATION)
    return Candidates(xs.astype(np.int32), ys.astype(np.int32), kind.astype(np.uint8))
