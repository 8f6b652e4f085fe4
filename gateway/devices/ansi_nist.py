"""Fingerprint images in ANSI/NIST-ITL files: Type-4 and Type-14 records, read and written.

Handheld and booking devices hand over EBTS/ANSI-NIST transactions (``.an2``, ``.eft``,
``.nist``); this module gets each fingerprint image out of one, with its resolution and
finger position (reference: devices-and-formats.md section 4.3), through the ``nistitl``
package. Type-4 is the fixed binary record (18-byte header: LEN, IDC, IMP, FGP x 6, ISR,
HLL, VLL, GCA; its resolution comes from Type-1 NSR or NTR); Type-14 is tagged ASCII with
the image in 14.999. Raw 8-bit, WSQ and PNG/JPEG payloads are decoded; the writer exists
so tests and tools can build transactions (raw or WSQ).
"""

from __future__ import annotations

import datetime
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import nistitl
import numpy as np
from PIL import Image

from gateway.extraction.decode import ImageDecodeError, load_image

MM_PER_INCH = 25.4
TYPE4_HEADER = "!B6sBHHB"  # IMP, FGP x 6, ISR, HLL, VLL, GCA (after LEN and IDC)
# Type-4 GCA codes (the 2011 code table extends the FBI's 0 = none, 1 = WSQ).
_TYPE4_COMPRESSION = {0: "NONE", 1: "WSQ20", 2: "JPEGB", 3: "JPEGL", 4: "JP2", 5: "JP2L",
                      6: "PNG"}
_PLAUSIBLE_PPI = (100.0, 4000.0)
# A minimum-resolution Type-4 image is sampled at 19.69 px/mm.
_MINIMUM_PPI = 500.0


class AnsiNistError(ValueError):
    """The bytes are not a readable ANSI/NIST transaction, or a record is inconsistent."""


@dataclass(frozen=True, eq=False)
class FingerImage:
    """One fingerprint image from a Type-4 or Type-14 record.

    ``finger_position`` is the ANSI/NIST FGP code (0 unknown, 1..10 fingers, 11..14
    plain thumbs and four-finger slaps); ``impression`` the IMP code (0 live-scan plain).
    """

    image: np.ndarray
    ppi: float
    finger_position: int = 0
    impression: int = 0
    record_type: int = 14
    compression: str = "NONE"
    idc: int = 0


def is_ansi_nist(data: bytes) -> bool:
    """True when ``data`` starts like an ANSI/NIST transaction (a Type-1 LEN field)."""
    return data[:6] == b"1.001:"


def read_fingerprints(data: bytes) -> list[FingerImage]:
    """Every Type-4 and Type-14 fingerprint image of a transaction, in record order."""
    message = nistitl.Message()
    try:
        message.parse(bytes(data))
    except (nistitl.NistException, ValueError, IndexError, KeyError, struct.error) as error:
        raise AnsiNistError(f"not a readable ANSI/NIST transaction: {error}") from error
    type1 = message[0]
    images = []
    for record in message:
        if record.type == 4:
            images.append(_read_type4(record, type1))
        elif record.type == 14:
            images.append(_read_type14(record))
    return images


def _field(record: nistitl.AsciiRecord, tag: int) -> str:
    """A field's value as text; the first item or subfield when it has several."""
    field = record[tag]
    value = field.value if field is not None else ""
    while isinstance(value, list | tuple):
        value = value[0] if value else ""
    return str(value).strip()


def _number(record: nistitl.AsciiRecord, tag: int, default: float | None = None) -> float:
    text = _field(record, tag)
    try:
        return float(text)
    except ValueError:
        if default is not None:
            return default
        raise AnsiNistError(f"field {record.type}.{tag:03d} is {text!r}, not a number") from None


def _resolution_ppi(type1: nistitl.AsciiRecord, tag: int) -> float | None:
    """A Type-1 resolution field (px/mm) as ppi, None when absent or 00.00."""
    # px/mm has two decimals (19.69 for 500 ppi): whole ppi is all the precision there is.
    ppi = float(round(_number(type1, tag, 0.0) * MM_PER_INCH))
    return ppi if _PLAUSIBLE_PPI[0] <= ppi <= _PLAUSIBLE_PPI[1] else None


def _read_type4(record: nistitl.BinaryRecord, type1: nistitl.AsciiRecord) -> FingerImage:
    try:
        impression, fgp, isr, width, height, gca, payload = record.unpack(TYPE4_HEADER)
    except struct.error as error:
        raise AnsiNistError(f"Type-4 record is too short: {error}") from error
    compression = _TYPE4_COMPRESSION.get(gca)
    if compression is None:
        raise AnsiNistError(f"Type-4 record has unknown compression code {gca}")
    # ISR 1: the native scanning resolution of 1.011; 0: the minimum (1.012 NTR, 500).
    ppi = _resolution_ppi(type1, 11 if isr else 12) or _MINIMUM_PPI
    image = _decode(payload, compression, width, height, 4)
    return FingerImage(image, ppi, fgp[0], impression, 4, compression, int(record.IDC))


def _read_type14(record: nistitl.AsciiRecord) -> FingerImage:
    width, height = int(_number(record, 6)), int(_number(record, 7))
    scale = int(_number(record, 8, 0))
    horizontal = _number(record, 9, 0.0)
    # SLC 1: pixels per inch, 2: pixels per cm, 0: only the aspect ratio is known.
    ppi = {1: horizontal, 2: float(round(horizontal * 2.54))}.get(scale, 0.0)
    if not _PLAUSIBLE_PPI[0] <= ppi <= _PLAUSIBLE_PPI[1]:
        ppi = _MINIMUM_PPI
    compression = (_field(record, 11) or "NONE").upper()
    bits = int(_number(record, 12, 8))
    if bits != 8:
        raise AnsiNistError(f"Type-14 record has {bits} bits per pixel; only 8 is supported")
    data = record[999]
    if data is None:
        raise AnsiNistError("Type-14 record has no image (field 14.999)")
    image = _decode(bytes(data.value), compression, width, height, 14)
    return FingerImage(image, ppi, int(_number(record, 13, 0)), int(_number(record, 3, 0)),
                       14, compression, int(record.IDC))


def _decode(payload: bytes, compression: str, width: int, height: int,
            record_type: int) -> np.ndarray:
    if compression == "NONE":
        if len(payload) != width * height:
            raise AnsiNistError(f"Type-{record_type} raw image has {len(payload)} bytes, "
                                f"{width}x{height} needs {width * height}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width).copy()
    try:
        image = load_image(payload).image
    except ImageDecodeError as error:
        raise AnsiNistError(f"Type-{record_type} {compression} image: {error}") from error
    if image.shape != (height, width):
        raise AnsiNistError(f"Type-{record_type} image is {image.shape[1]}x{image.shape[0]}, "
                            f"the record says {width}x{height}")
    return image


# -- writing ---------------------------------------------------------------------------------
def _encode(image: np.ndarray, compression: str) -> bytes:
    if compression == "NONE":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    if compression in ("WSQ", "WSQ20"):
        # Imported here, not at module level: the plugin registers the WSQ encoder with
        # Pillow, and only writing needs it (reading decodes WSQ in a child process).
        import wsq  # noqa: F401
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, "WSQ")
        return buffer.getvalue()
    raise ValueError(f"cannot write compression {compression!r}; use NONE or WSQ20")


def write_fingerprints(
    images: Sequence[FingerImage],
    *,
    record_type: int = 14,
    transaction_type: str = "TPIS",
    agency: str = "INKGW0000",
    date: datetime.date | None = None,
) -> bytes:
    """A transaction of Type-1 plus one Type-4 or Type-14 record per image.

    Type-4 images must share one resolution (it lives in Type-1 NSR); compression is
    taken from each image's ``compression`` ("NONE" or "WSQ20").
    """
    if record_type not in (4, 14):
        raise ValueError("record_type must be 4 or 14")
    message = nistitl.Message()
    type1 = message[0]
    type1.TOT = transaction_type
    type1.DAT = (date or datetime.date.today()).strftime("%Y%m%d")
    type1.ORI = agency
    type1.DAI = agency
    if record_type == 4:
        rates = {round(i.ppi, 2) for i in images}
        if len(rates) > 1:
            raise ValueError(f"Type-4 images must share one resolution, got {sorted(rates)}")
        native = f"{rates.pop() / MM_PER_INCH:05.2f}" if rates else "19.69"
        type1.NSR = native
        type1.NTR = native
    else:
        type1.NSR = "00.00"
        type1.NTR = "00.00"
    for idc, finger in enumerate(images, start=1):
        compression = "WSQ20" if finger.compression.upper().startswith("WSQ") else "NONE"
        payload = _encode(finger.image, compression)
        height, width = finger.image.shape
        if record_type == 4:
            record = nistitl.BinaryRecord(4)
            record.IDC = idc
            gca = 1 if compression == "WSQ20" else 0
            fgp = bytes([finger.finger_position]) + b"\xff" * 5
            record.pack(TYPE4_HEADER, finger.impression, fgp, 1, width, height, gca, payload)
        else:
            record = nistitl.AsciiRecord(14)
            record.IDC = idc
            record.IMP = str(finger.impression)
            record.SRC = agency
            record.FCD = type1.DAT
            record.HLL = str(width)
            record.VLL = str(height)
            record.SLC = "1"
            record.THPS = str(round(finger.ppi))
            record.TVPS = str(round(finger.ppi))
            record.CGA = compression
            record.BPX = "8"
            record.FGP = str(finger.finger_position)
            record.DATA = payload
        message += record
    return message.NIST
