"""Fingerprint image files and bytes -> uint8 grayscale array and resolution.

Reads PNG, TIFF, BMP, JPEG, JPEG 2000 and PGM with Pillow, and WSQ with the ``wsq`` plugin
in a child process (:mod:`gateway.extraction.wsq_isolated`: its C decoder can abort the
process on a corrupt file). Every failure is an :class:`ImageDecodeError` whose message
says what to do; sizes beyond :data:`MAX_PIXELS` are refused from the header, before
anything is decoded. The resolution comes from the file when it carries a plausible one
(PNG pHYs, TIFF/BMP/JPEG resolution tags, the NISTCOM "PPI" comment of WSQ), else from
the caller, else 500 ppi with ``ppi_source == "default"`` so the caller can warn.
Placeholder resolutions that image software writes when it does not know (1, 72 or 96
dpi, as in the FVC TIFFs) are ignored.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gateway.extraction.wsq_isolated import WsqDecodeError, decode_wsq, read_wsq_size

DEFAULT_PPI = 500.0
# A 1000 ppi four-finger slap is about 3200 x 3000 pixels; 16 Mpixel leaves room for that
# and refuses headers that would make the decoder allocate gigabytes.
MAX_PIXELS = 4096 * 4096
_PLAUSIBLE_PPI = (250.0, 2000.0)
_PLACEHOLDER_DPI = {72.0, 96.0}
_WSQ_PPI = re.compile(rb"\bPPI\s+(-?\d+)")
_WSQ_SOI = b"\xff\xa0"
# Pillow may decode only these in this process (WSQ never: see wsq_isolated). Limiting
# the list keeps exotic parsers (PSD, EPS via Ghostscript, ...) away from outside input.
_PILLOW_FORMATS = ("PNG", "TIFF", "BMP", "JPEG", "JPEG2000", "PPM")
_KNOWN = "a PNG, TIFF, BMP, JPEG, JPEG 2000, PGM or WSQ image"
# What Pillow's decoders raise on malformed input (struct.error: truncated headers).
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


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
    """Decode an image file (path or bytes) to grayscale uint8; see the module docstring.

    Raises ImageDecodeError, and nothing else, for any input that is not a readable image.
    """
    data = _read(source)
    name = _name(source)
    if data.startswith(_WSQ_SOI):
        image, file_ppi = _decode_wsq(data, name)
    else:
        image, file_ppi = _decode_with_pillow(data, name)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ImageDecodeError(f"{name} holds no 2-D image")
    if file_ppi is not None:
        return LoadedImage(image, file_ppi, "file")
    if ppi is not None:
        return LoadedImage(image, float(ppi), "given")
    return LoadedImage(image, DEFAULT_PPI, "default")


def _decode_wsq(data: bytes, name: str) -> tuple[np.ndarray, float | None]:
    try:
        width, height = read_wsq_size(data)
        _refuse_absurd_size(width, height, name)
        decoded = decode_wsq(data)
    except WsqDecodeError as exc:
        raise ImageDecodeError(f"cannot decode {name} as WSQ: {exc}") from None
    image = np.frombuffer(decoded.pixels, dtype=np.uint8).reshape(decoded.height,
                                                                  decoded.width)
    m = _WSQ_PPI.search(data[:4096])
    return image, _plausible_ppi(float(m.group(1)) if m else None)


def _decode_with_pillow(data: bytes, name: str) -> tuple[np.ndarray, float | None]:
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as im:
            # Image.open reads only the header: refuse a huge declared size before load().
            _refuse_absurd_size(*im.size, name)
            im.load()
            image = _to_gray_uint8(im)
            dpi = im.info.get("dpi")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"cannot decode {name}: not {_KNOWN} (or its header is "
                               "damaged); check the file, or export it again as PNG") from None
    except Image.DecompressionBombError:
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageDecodeError(_too_large(name, f"more than {bomb:.0f} Mpixel")) from None
    except _PILLOW_ERRORS as exc:
        raise ImageDecodeError(
            f"cannot decode {name}: the image data is damaged ({type(exc).__name__}: "
            f"{str(exc)[:200]}); export it again from the scanner software") from None
    try:
        value = float(dpi[0]) if dpi else None
    except (TypeError, ValueError, IndexError):
        value = None  # a resolution tag Pillow could not make sense of: as if absent
    return image, _plausible_ppi(value)


def _refuse_absurd_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageDecodeError(f"cannot decode {name}: it declares an empty {width} x "
                               f"{height} image; check the file, or export it again")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(_too_large(name, f"{width} x {height} pixels"))


def _too_large(name: str, size: str) -> str:
    return (f"cannot decode {name}: it declares an image of {size}; images over "
            f"{MAX_PIXELS / 1e6:.1f} Mpixel are refused (a fingerprint, even a 1000 ppi "
            "slap, is far smaller): check that this is the right file, or crop it to the "
            "fingers")


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


def _plausible_ppi(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    # PNG stores pixels per metre, so 1000 ppi reads back as 999.998.
    value = round(value, 1)
    if value in _PLACEHOLDER_DPI:
        return None
    lo, hi = _PLAUSIBLE_PPI
    return value if lo <= value <= hi else None
