"""Minutia candidates on a ridge skeleton by the crossing number (Rutovitz).

The crossing number of a skeleton pixel is half the number of 0/1 changes around its
eight neighbours: 1 marks a ridge ending, 2 a ridge pixel, 3 a bifurcation. Unlike a
neighbour count it does not fire on the staircase corners of a skeleton.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

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
    cn = np.zeros(skeleton.shape, np.uint8)
    # A frame of zeros: past the image's edge there is no ridge.
    _crossing_numbers(np.pad(skeleton.astype(bool, copy=False), 1), _CN_OF_RING, cn)
    return cn


def _cn_of_ring() -> np.ndarray:
    """Half the 0/1 changes around the ring, for every 8-bit ring (bit k = neighbour k)."""
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1
    return (np.abs(bits - np.roll(bits, -1, axis=1)).sum(axis=1) // 2).astype(np.uint8)


_CN_OF_RING = _cn_of_ring()


def crossing_number_candidates(skeleton: np.ndarray, cn: np.ndarray) -> Candidates:
    """Endings (CN 1) and bifurcations (CN 3) of the skeleton, in row-major order.

    Pixels with CN 4 or more are ridge crossings or tangles: rare on real prints and
    never reliable, so they are not minutiae.
    """
    x, y, kind = _endings_and_forks(np.ascontiguousarray(cn, np.uint8),
                                    int(MinutiaKind.ENDING), int(MinutiaKind.BIFURCATION))
    return Candidates(x, y, kind)


@njit(cache=True, nogil=True)
def _crossing_numbers(padded: np.ndarray, cn_of_ring: np.ndarray,
                      cn: np.ndarray) -> None:  # pragma: no cover
    h, w = cn.shape
    for y in range(h):
        for x in range(w):
            if not padded[y + 1, x + 1]:
                continue
            ring = (padded[y, x + 1] | padded[y, x + 2] << 1 | padded[y + 1, x + 2] << 2
                    | padded[y + 2, x + 2] << 3 | padded[y + 2, x + 1] << 4
                    | padded[y + 2, x] << 5 | padded[y + 1, x] << 6 | padded[y, x] << 7)
            cn[y, x] = cn_of_ring[ring]


@njit(cache=True, nogil=True)
def _endings_and_forks(cn: np.ndarray, ending: int,
                       fork: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    h, w = cn.shape
    n = 0
    for y in range(h):
        for x in range(w):
            n += cn[y, x] == 1 or cn[y, x] == 3
    xs = np.empty(n, np.int32)
    ys = np.empty(n, np.int32)
    kind = np.empty(n, np.uint8)
    i = 0
    for y in range(h):
        for x in range(w):
            c = cn[y, x]
            if c == 1 or c == 3:
                xs[i], ys[i] = x, y
                kind[i] = ending if c == 1 else fork
                i += 1
    return xs, ys, kind
