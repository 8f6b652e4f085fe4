"""Following skeleton branches away from a minutia candidate (Numba).

For each candidate every branch (one for an ending, three for a bifurcation) is walked
pixel by pixel until it meets another ending or junction, or a length limit. The filters
use where and how soon a branch stops (spurs, short ridges, bridges), and the direction
stage uses where the branch is after a few pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from gateway.extraction.minutiae_detection import NEIGHBOUR_DX, NEIGHBOUR_DY, Candidates

STOP_LENGTH = 0  # walked the full length limit
STOP_ENDING = 1  # reached a ridge end
STOP_JUNCTION = 2  # reached another bifurcation (or crossing)
MAX_BRANCHES = 3


@dataclass(frozen=True)
class BranchTraces:
    """Per candidate and branch (n x 3): where the walk stopped, how far, and why."""

    count: np.ndarray  # int32 (n,), branches found
    end_x: np.ndarray  # int32 (n, 3)
    end_y: np.ndarray
    length: np.ndarray  # int32 (n, 3), pixels walked
    stop: np.ndarray  # int8 (n, 3), STOP_* codes
    dir_x: np.ndarray  # float32 (n, 3), offset of the point ``direction_length`` along
    dir_y: np.ndarray


def trace_branches(
    skeleton: np.ndarray, cn: np.ndarray, cands: Candidates, max_len: int, dir_len: int
) -> BranchTraces:
    """Walk every branch of every candidate; see :class:`BranchTraces`."""
    n = len(cands)
    out = BranchTraces(
        count=np.zeros(n, np.int32),
        end_x=np.zeros((n, MAX_BRANCHES), np.int32),
        end_y=np.zeros((n, MAX_BRANCHES), np.int32),
        length=np.zeros((n, MAX_BRANCHES), np.int32),
        stop=np.zeros((n, MAX_BRANCHES), np.int8),
        dir_x=np.zeros((n, MAX_BRANCHES), np.float32),
        dir_y=np.zeros((n, MAX_BRANCHES), np.float32),
    )
    if n:
        _trace_kernel(
            np.ascontiguousarray(skeleton, np.uint8), np.ascontiguousarray(cn, np.uint8),
            cands.y, cands.x, NEIGHBOUR_DY, NEIGHBOUR_DX, int(max_len), int(dir_len),
            out.count, out.end_y, out.end_x, out.length, out.stop, out.dir_y, out.dir_x,
        )
    return out


@njit(cache=True, nogil=True)
def _trace_kernel(skel, cn, ys, xs, ndy, ndx, max_len, dir_len,
                  count, end_y, end_x, length, stop, dir_y, dir_x):  # pragma: no cover
    h, w = skel.shape
    cap = max_len + 8
    path_y = np.empty(cap, np.int32)
    path_x = np.empty(cap, np.int32)
    start_y = np.empty(8, np.int32)
    start_x = np.empty(8, np.int32)
    for i in range(ys.shape[0]):
        y0 = ys[i]
        x0 = xs[i]
        # Branch starts: one pixel per run of skeleton pixels around the candidate,
        # preferring the 4-connected pixel of a run so the walk does not cut corners.
        nb = 0
        for k in range(8):
            yk = y0 + ndy[k]
            xk = x0 + ndx[k]
            on = 0 <= yk < h and 0 <= xk < w and skel[yk, xk] != 0
            kp = (k + 7) % 8
            yp = y0 + ndy[kp]
            xp = x0 + ndx[kp]
            prev_on = 0 <= yp < h and 0 <= xp < w and skel[yp, xp] != 0
            if on and not prev_on and nb < 8:
                ky, kx = yk, xk
                kn = (k + 1) % 8
                yn = y0 + ndy[kn]
                xn = x0 + ndx[kn]
                if k % 2 == 1 and 0 <= yn < h and 0 <= xn < w and skel[yn, xn] != 0:
                    ky, kx = yn, xn
                start_y[nb] = ky
                start_x[nb] = kx
                nb += 1
        nbr = min(nb, 3)
        count[i] = nbr
        for b in range(nbr):
            # The visited list starts with the candidate and all its branch starts, so a
            # walk never turns back into a sibling branch.
            npath = 0
            path_y[npath] = y0
            path_x[npath] = x0
            npath += 1
            for s in range(nb):
                if s != b:
                    path_y[npath] = start_y[s]
                    path_x[npath] = start_x[s]
                    npath += 1
            cy = start_y[b]
            cx = start_x[b]
            steps = 1
            code = 0
            dir_y[i, b] = cy - y0
            dir_x[i, b] = cx - x0
            while True:
                if steps <= dir_len:
                    dir_y[i, b] = cy - y0
                    dir_x[i, b] = cx - x0
                c = cn[cy, cx]
                if c == 1:
                    code = 1
                    break
                if c >= 3:
                    code = 2
                    break
                if steps >= max_len:
                    code = 0
                    break
                path_y[npath] = cy
                path_x[npath] = cx
                npath += 1
                best = -1
                for k in range(8):
                    yk = cy + ndy[k]
                    xk = cx + ndx[k]
                    if not (0 <= yk < h and 0 <= xk < w) or skel[yk, xk] == 0:
                        continue
                    seen = False
                    for q in range(npath):
                        if path_y[q] == yk and path_x[q] == xk:
                            seen = True
                            break
                    if seen:
                        continue
                    if best < 0 or (k % 2 == 0 and best % 2 == 1):
                        best = k
                if best < 0:
                    code = 1
                    break
                cy = cy + ndy[best]
                cx = cx + ndx[best]
                steps += 1
            end_y[i, b] = cy
            end_x[i, b] = cx
            length[i, b] = steps
            stop[i, b] = code
