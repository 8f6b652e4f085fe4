"""Fingerprint image files and bytes -> uint8 grayscale array and resolution.

Reads PNG, TIFF, BMP (Pillow) and WSQ (the ``wsq`` Pillow plugin). The resolution comes
from the file when it carries a plausible one (PNG pHYs, TIFF/BMP resolution tags, the
NISTCOM "PPI" comment of WSQ), else from the caller, else 500 ppi with
``ppi_source == "default"`` so the caller can warn. Placeholder resolutions that image
software writes when it does not know (1, 72 or 96 dpi, as in the FVC TIFFs) are ignored.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wsq  # noqa: F401  (registers the WSQ format with Pillow)
from PIL import Image, UnidentifiedImageError

DEFAULT_PPI = 500.0
_PLAUSIBLE_PPI = (250.0, 2000.0)
_PLACEHOLDER_DPI = {72.0, 96.0}
_WSQ_PPI = re.compile(rb"\bPPI\s+(-?\d+)")


class ImageDecodeError(ValueError):
    """The file or bytes are not a readable fingerprint image; the message says why."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image; unpacks as ``image, ppi = load_image(...)``."""

    image: np.ndarray  # uint8, H x W
    ppi: float
    ppi_source: str  # "file", "given" or "default"

    def __iter__(self):
        return iter((self.image, self.ppi))

    @property
    def ppi_assumed(self) -> bool:
        """True when neither the file nor the caller said the resolution."""
        return self.ppi_source == "default"


def load_image(source: str | Path | bytes, ppi: float | None = None) -> LoadedImage:
    """Decode a PNG, TIFF, BMP or WSQ file (path or bytes) to grayscale uint8."""
    data = _read(source)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = _to_gray_uint8(im)
            file_ppi = _file_ppi(im, data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            f"cannot decode {_name(source)} as a PNG, TIFF, BMP or WSQ image ({exc})"
        ) from None
    if image.ndim != 2 or min(image.shape) < 1:
        raise ImageDecodeError(f"{_name(source)} holds no 2-D image")
    if file_ppi is not None:
        return LoadedImage(image, file_ppi, "file")
    if ppi is not None:
        return LoadedImage(image, float(ppi), "given")
    return LoadedImage(image, DEFAULT_PPI, "default")


def _read(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {source}: {exc.strerror}") from None
    if not data:
        raise ImageDecodeError(f"{_name(source)} is empty")
    return data


def _name(source: str | Path | bytes) -> str:
    return "the image bytes" if isinstance(source, bytes | bytearray | memoryview) else str(
        source)


def _to_gray_uint8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        return np.round((arr - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)
    if im.mode != "L":
        # Palette and colour images (some sensors' TIFFs) go through their own palette.
        im = im.convert("L")
    return np.array(im, dtype=np.uint8)


def _file_ppi(im: Image.Image, data: bytes) -> float | None:
    if im.format == "WSQ":
        m = _WSQ_PPI.search(data[:4096])
        value = float(m.group(1)) if m else None
    else:
        dpi = im.info.get("dpi")
        value = float(dpi[0]) if dpi else None
    if value is None:
        return None
    # PNG stores pixels per metre, so 1000 ppi reads back as 999.998.
    value = round(value, 1)
    if value in _PLACEHOLDER_DPI:
        return None
    lo, hi = _PLAUSIBLE_PPI
    return value if lo <= value <= hi else None
