"""Template codecs: ISO/IEC 19794-2:2005 and ANSI INCITS 378-2004 finger minutiae records.

Byte layouts follow shared/reference/devices-and-formats.md sections 4.1 and 4.2; every
integer is big-endian. Both formats share the record shape::

    header   "FMR\\0" " 20\\0" length  [ANSI: CBEFF owner, type]  capture equipment
             width height x-res y-res (pixels per cm)  #views  reserved(0)
    view     finger position | view number<<4 + impression | finger quality | N
    minutia  type<<14 + x (14 bits) | reserved<<14 + y (14 bits) | angle | quality   (x N)
    ext      u16 block length, then the block (skipped)

ISO: length u32, header 24 bytes, angle unit 360/256 degrees. ANSI: length u16, or
``00 00`` then u32 when it does not fit (header 26 or 30 bytes), angle unit 2 degrees.
The two are told apart by the length heuristic of FingerprintIO (:func:`detect_format`).

Decoding choices, so that callers know what they get:

- Only the FIRST finger view becomes the Template (or, with ``finger=``, the first view of
  that finger); every view is still walked, so a record damaged anywhere is rejected.
- Resolution: ppi = px/cm * 2.54, taken as the multiple of 10 ppi that encodes to that
  px/cm when there is one (197 -> 500, 394 -> 1000, 118 -> 300), otherwise rounded to the
  nearest integer. A resolution of 0 means "not reported": 500 ppi is assumed and
  ``metadata["ppi_assumed"]`` is True.
- Extended data is skipped by its block length without reading the areas inside, so the
  two conventions for an area's length (with or without its 4-byte header) both decode.
- Coordinates at or just past the far image edge (x in [width, width + EDGE_SLACK_PX],
  likewise y) are clamped to the last pixel row/column and counted in
  ``metadata["edge_clamped"]``: some extractors round a sub-pixel position at the border
  up to ``width``. Further out is an error. (All 320 FVC2002 SecuGen templates in
  shared/data lie strictly inside their declared 300x400 image.)
- Anything malformed raises :class:`~matcher.template.TemplateError` naming the field and
  its byte offset; no other exception escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from matcher.template import (
    MAX_IMAGE_SIDE,
    MAX_PPI,
    MIN_PPI,
    TWO_PI,
    Finger,
    Template,
    TemplateError,
    make_template,
)

Format = Literal["iso", "ansi"]

MAGIC = b"FMR\x00"
VERSION = b" 20\x00"
ASSUMED_PPI = 500
EDGE_SLACK_PX = 2
CM_PER_INCH = 2.54

# ANSI 378 requires a non-zero CBEFF product owner outside MINEX. This is a private,
# unregistered value ("IN"/"K" + codec version 1), chosen to be recognisable in a hex
# dump; replace it with an IBIA-assigned owner id if the project ever registers one.
INK_CBEFF_OWNER = 0x494E
INK_CBEFF_TYPE = 0x4B01

ISO_ANGLE_UNITS = 256  # 1.40625 degree steps
ANSI_ANGLE_UNITS = 180  # 2 degree steps

_ISO_HEAD = struct.Struct(">4s4sIHHHHHBB")  # magic version len equip W H xres yres views rsv
_ANSI_TAIL = struct.Struct(">HHHHHHHBB")  # after the length: owner type equip W H xr yr v rsv
_U16 = struct.Struct(">H")
_NO_EXTENDED_DATA = _U16.pack(0)  # the extended data block's length
_U32 = struct.Struct(">I")
_VIEW = struct.Struct(">BBBB")  # finger, view<<4|impression, quality, N
_MINUTIA = np.dtype([("tx", ">u2"), ("ry", ">u2"), ("angle", "u1"), ("quality", "u1")])
_COORD_MASK = 0x3FFF


class _Header(NamedTuple):
    """The record header fields the finger views and the Template need."""

    fmt: Format
    width: int
    height: int
    ppi: int
    ppi_assumed: bool
    n_views: int
    body: int  # offset of the first finger view
    extra: dict


class _View(NamedTuple):
    finger: int
    impression: int
    quality: int
    minutiae: np.ndarray  # _MINUTIA records


def _fail(fmt: str, offset: int, what: str) -> TemplateError:
    return TemplateError(f"{fmt.upper()} minutiae record, byte {offset}: {what}")


def _unpack(st: struct.Struct, data: bytes, offset: int, fmt: str, what: str) -> tuple:
    if offset + st.size > len(data):
        raise _fail(
            fmt, offset, f"truncated: {what} needs {st.size} bytes but the record ends at "
            f"byte {len(data)}"
        )
    return st.unpack_from(data, offset)


# ---------------------------------------------------------------- resolution


def _pxcm_from_ppi(ppi: float) -> int:
    return round(ppi / CM_PER_INCH)


def _ppi_from_pxcm(pxcm: int) -> int:
    """The ppi a px/cm value stands for, preferring the round figure scanners quote."""
    tens = round(pxcm * CM_PER_INCH / 10) * 10
    return tens if _pxcm_from_ppi(tens) == pxcm else round(pxcm * CM_PER_INCH)


# ---------------------------------------------------------------- detection and header


def _check_identity(data: bytes) -> None:
    if len(data) < 12:
        raise _fail("fmr", 0, f"record is {len(data)} bytes, too short for a record header")
    if data[:4] != MAGIC:
        raise _fail("fmr", 0, f"format identifier {data[:4]!r} is not b'FMR\\x00'")
    if data[4:8] != VERSION:
        raise _fail(
            "fmr", 4, f"version {data[4:8]!r} is not b' 20\\x00' (only ISO 19794-2:2005 "
            "and ANSI 378-2004 are supported)"
        )


def detect_format(data: bytes) -> Format:
    """'iso' or 'ansi' for a record starting ``FMR\\0 20\\0``, by its length field.

    Heuristic (FingerprintIO): u16 at byte 8 >= 26 is an ANSI 2-byte length; another
    non-zero u16 there is the high half of an ISO u32; when it is zero, u16 at byte 10
    >= 24 is the low half of an ISO u32, anything else an ANSI ``00 00`` + u32 length.
    """
    data = bytes(data)
    _check_identity(data)
    (hi,) = _U16.unpack_from(data, 8)
    if hi >= 26:
        return "ansi"
    if hi > 0:
        return "iso"
    (lo,) = _U16.unpack_from(data, 10)
    return "iso" if lo >= 24 else "ansi"


def _read_header(data: bytes, fmt: Format) -> _Header:
    if fmt == "iso":
        _, _, length, equip, w, h, xres, yres, views, rsv = _unpack(
            _ISO_HEAD, data, 0, fmt, "the 24-byte header"
        )
        length_at, equip_at, extra = 8, 12, {"capture_equipment": equip}
    else:
        (length,) = _unpack(_U16, data, 8, fmt, "the record length")
        length_at, owner_at = 8, 10
        if length == 0:
            (length,) = _unpack(_U32, data, 10, fmt, "the 4-byte record length")
            length_at, owner_at = 10, 14
        owner, ptype, equip, w, h, xres, yres, views, rsv = _unpack(
            _ANSI_TAIL, data, owner_at, fmt, "the header"
        )
        equip_at = owner_at + 4
        extra = {"capture_equipment": equip, "cbeff_owner": owner, "cbeff_type": ptype}
    if length != len(data):
        raise _fail(fmt, length_at, f"record length field says {length} bytes, got {len(data)}")
    # From the capture equipment field on, both formats lay out the same fields.
    base = equip_at
    if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise _fail(fmt, base + 2, f"image size {w}x{h} is outside 1..{MAX_IMAGE_SIDE} pixels")
    if xres != yres:
        raise _fail(
            fmt, base + 6, f"x resolution {xres} px/cm differs from y resolution {yres} px/cm "
            "(non-square pixels are not supported)"
        )
    ppi, assumed = (ASSUMED_PPI, True) if xres == 0 else (_ppi_from_pxcm(xres), False)
    if not MIN_PPI <= ppi <= MAX_PPI:
        raise _fail(
            fmt, base + 6, f"resolution {xres} px/cm ({ppi} ppi) is outside "
            f"{MIN_PPI:.0f}..{MAX_PPI:.0f} ppi"
        )
    if views == 0:
        raise _fail(fmt, base + 10, "the record holds no finger view")
    if rsv != 0:
        raise _fail(fmt, base + 11, f"reserved byte is {rsv}, must be 0")
    return _Header(fmt, w, h, ppi, assumed, views, base + 12, extra)


# ---------------------------------------------------------------- views and minutiae


def _read_minutiae(data: bytes, offset: int, n: int, head: _Header, units: int) -> np.ndarray:
    fmt = head.fmt
    end = offset + n * _MINUTIA.itemsize
    if end > len(data):
        raise _fail(
            fmt, offset, f"truncated: {n} minutiae need bytes {offset}..{end - 1} but the "
            f"record ends at byte {len(data)}"
        )
    rec = np.frombuffer(data, _MINUTIA, count=n, offset=offset).copy()
    if n and _plausible(rec, head, units):
        return rec
    kind = rec["tx"] >> 14
    x = (rec["tx"] & _COORD_MASK).astype(np.int64)
    y = (rec["ry"] & _COORD_MASK).astype(np.int64)
    checks = (
        (kind == 3, 0, "minutia type bits are 11 (reserved)"),
        (rec["ry"] >> 14 != 0, 2, "reserved bits above y are not 0"),
        (x > head.width + EDGE_SLACK_PX, 0, f"x lies outside the image width {head.width}"),
        (y > head.height + EDGE_SLACK_PX, 2, f"y lies outside the image height {head.height}"),
        (rec["angle"] >= units, 4, f"angle is not within 0..{units - 1}"),
        (rec["quality"] > 100, 5, "minutia quality is above 100"),
    )
    for bad, field_at, what in checks:
        if bad.any():
            hits = np.flatnonzero(bad)
            i = int(hits[0])
            at = offset + i * _MINUTIA.itemsize + field_at
            raise _fail(
                fmt, at, f"minutia {i} ({int(x[i])}, {int(y[i])}): {what} "
                f"({hits.size} such minutiae)"
            )
    return rec


def _plausible(rec: np.ndarray, head: _Header, units: int) -> bool:
    """Every minutia passes the checks of :func:`_read_minutiae` (a few reductions, where
    naming the first bad minutia takes a pass per check: that is done only on failure).
    Type bits 11 are the only ones above 0xBFFF; y's reserved bits the only ones above
    0x3FFF."""
    tx, ry = rec["tx"], rec["ry"]
    return bool(
        tx.max() <= 0xBFFF and ry.max() <= _COORD_MASK
        and (tx & _COORD_MASK).max() <= head.width + EDGE_SLACK_PX
        and ry.max() <= head.height + EDGE_SLACK_PX
        and rec["angle"].max() < units and rec["quality"].max() <= 100
    )


def _read_view(data: bytes, offset: int, head: _Header, units: int) -> tuple[_View, int]:
    """One finger view starting at ``offset``, and the offset just after it."""
    fmt = head.fmt
    finger, imp, quality, n = _unpack(_VIEW, data, offset, fmt, "a finger view header")
    if finger > Finger.LEFT_LITTLE:
        raise _fail(fmt, offset, f"finger position {finger} is not an FGP code 0..10")
    if quality > 100:
        raise _fail(fmt, offset + 2, f"finger quality {quality} is above 100")
    minutiae = _read_minutiae(data, offset + _VIEW.size, n, head, units)
    ext_at = offset + _VIEW.size + n * _MINUTIA.itemsize
    (ext_len,) = _unpack(_U16, data, ext_at, fmt, "the extended data length")
    end = ext_at + _U16.size + ext_len
    if end > len(data):
        raise _fail(
            fmt, ext_at, f"extended data of {ext_len} bytes runs past the record end at "
            f"byte {len(data)}"
        )
    return _View(finger, imp & 0x0F, quality, minutiae), end


def _decode(data: bytes, fmt: Format, finger: int | None) -> Template:
    data = bytes(data)
    _check_identity(data)
    head = _read_header(data, fmt)
    units = ISO_ANGLE_UNITS if fmt == "iso" else ANSI_ANGLE_UNITS
    views, at = [], head.body
    for _ in range(head.n_views):
        view, at = _read_view(data, at, head, units)
        views.append(view)
    if at != len(data):
        raise _fail(fmt, at, f"{len(data) - at} bytes follow the last finger view")

    view, claimed = views[0], views[0].finger
    if finger is not None:
        wanted = [v for v in views if v.finger == finger]
        if wanted:
            view, claimed = wanted[0], finger
        elif view.finger == Finger.UNKNOWN:
            claimed = finger  # the caller knows which finger an unlabelled record holds
        else:
            held = sorted({v.finger for v in views})
            raise TemplateError(f"{fmt.upper()} record holds no view of finger {finger} "
                                f"(it holds {held})")

    rec = view.minutiae
    x = np.minimum(rec["tx"] & _COORD_MASK, head.width - 1)
    y = np.minimum(rec["ry"] & _COORD_MASK, head.height - 1)
    clamped = int(np.count_nonzero((rec["tx"] & _COORD_MASK) >= head.width)
                  + np.count_nonzero((rec["ry"] & _COORD_MASK) >= head.height))
    meta = {"format": fmt, "views": head.n_views, "ppi_assumed": head.ppi_assumed,
            "edge_clamped": clamped, **head.extra}
    return make_template(
        x, y, rec["angle"].astype(np.float64) * (TWO_PI / units), rec["tx"] >> 14,
        rec["quality"], width=head.width, height=head.height, ppi=head.ppi, finger=claimed,
        impression=view.impression, image_quality=view.quality, metadata=meta,
    )


def decode_iso(data: bytes, *, finger: int | None = None) -> Template:
    """The first finger view (or first view of ``finger``) of an ISO 19794-2:2005 record."""
    return _decode(data, "iso", finger)


def decode_ansi(data: bytes, *, finger: int | None = None) -> Template:
    """The first finger view (or first view of ``finger``) of an ANSI 378-2004 record."""
    return _decode(data, "ansi", finger)


def decode_template(data: bytes, *, finger: int | None = None) -> Template:
    """Decode an ISO or ANSI record, whichever :func:`detect_format` says it is.

    Returns the FIRST finger view. With ``finger``, returns the first view of that finger;
    a record whose first view says "unknown finger" is then labelled ``finger``.
    """
    return _decode(data, detect_format(data), finger)


# ---------------------------------------------------------------- many records at once

_PLAIN_ISO_HEAD = MAGIC + VERSION
_FINGERS = tuple(Finger)  # by code
_PLAIN_ISO_FIXED = _ISO_HEAD.size + _VIEW.size + _U16.size  # bytes besides the minutiae


def decode_templates(
    records: Sequence[bytes], fingers: Sequence[int | None] | None = None
) -> list[Template | TemplateError]:
    """:func:`decode_template` of each record (with its entry of ``fingers``), many at once.

    Per record, the Template that ``decode_template(record, finger=finger)`` returns, equal
    in every field, or the TemplateError it raises (returned, not raised: one bad record
    fails alone). The common case, a single-view ISO record without extended data, is
    decoded for all records together by array operations over their concatenated bytes
    (bulk enrolment decodes every subject it receives); any other record (ANSI, several
    views, extended data, an unreported resolution, a minutia :func:`decode_template`
    clamps or refuses, a finger the record does not hold) goes through
    :func:`decode_template` itself, so its result and its error message are the same.
    The arrays of the batch's Templates are views of arrays they share.
    """
    n = len(records)
    wanted = [None] * n if fingers is None else list(fingers)
    if len(wanted) != n:
        raise ValueError(f"{n} records but {len(wanted)} finger positions")
    out: list[Template | TemplateError | None] = [None] * n
    if n:
        for i, template in _decode_plain_iso(records, wanted):
            out[i] = template
    for i, done in enumerate(out):
        if done is None:
            try:
                out[i] = decode_template(records[i], finger=wanted[i])
            except TemplateError as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


def _decode_plain_iso(
    records: Sequence[bytes], wanted: list[int | None]
) -> list[tuple[int, Template]]:
    """The records of :func:`decode_templates` it can decode as one batch: single-view ISO
    records that decode without any special case, as ``(position, Template)``."""
    lengths = np.fromiter(map(len, records), np.int64, len(records))
    # padded so that every fixed header field can be read, even of a short record
    buf = np.frombuffer(b"".join(records) + bytes(_PLAIN_ISO_FIXED), np.uint8)
    starts = np.zeros(len(records), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])

    def u8(at: int) -> np.ndarray:
        return buf[starts + at].astype(np.int64)

    def u16(at: int) -> np.ndarray:
        return (u8(at) << 8) | u8(at + 1)

    head = buf[starts[:, None] + np.arange(len(_PLAIN_ISO_HEAD))]
    n_min = u8(27)
    width, height, pxcm = u16(14), u16(16), u16(18)
    finger = u8(24)
    given = np.array([f is not None for f in wanted], bool)
    # a finger that is no FGP code is left to decode_template, for its message
    want = np.array([f if f is not None and 0 <= f <= Finger.LEFT_LITTLE else -1
                     for f in wanted], np.int64)
    ok = (
        (lengths >= _PLAIN_ISO_FIXED) & (lengths <= 0xFFFF)
        & (head == np.frombuffer(_PLAIN_ISO_HEAD, np.uint8)).all(axis=1)
        & (((u16(8) << 16) | u16(10)) == lengths)
        & (width > 0) & (width <= MAX_IMAGE_SIDE) & (height > 0) & (height <= MAX_IMAGE_SIDE)
        & (pxcm > 0) & (pxcm == u16(20))
        & (u8(22) == 1) & (u8(23) == 0)  # one view; reserved byte
        & (finger <= Finger.LEFT_LITTLE) & (u8(26) <= 100)
        & (lengths == _PLAIN_ISO_FIXED + _MINUTIA.itemsize * n_min)
        # a finger asked for: one the record's view holds or may be labelled with
        & (~given | ((want >= 0) & (want <= Finger.LEFT_LITTLE)
                     & ((want == finger) | (finger == Finger.UNKNOWN))))
    )
    ends = starts + lengths  # the extended data length, the last two bytes, must be 0
    ok &= (buf[ends - 2] == 0) & (buf[ends - 1] == 0)
    ppi_of = {int(p): _ppi_from_pxcm(int(p)) for p in np.unique(pxcm[ok])}
    ppi = np.array([ppi_of.get(int(p), 0) for p in pxcm], np.int64)
    ok &= (ppi >= MIN_PPI) & (ppi <= MAX_PPI)
    chosen = np.flatnonzero(ok)
    if chosen.size == 0:
        return []

    # every chosen record's minutiae, gathered into one array of _MINUTIA records
    counts = n_min[chosen]
    first = np.zeros(chosen.size, np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    total = int(counts.sum())
    owner = np.repeat(np.arange(chosen.size), counts)
    byte_at = (np.repeat(starts[chosen] + _ISO_HEAD.size + _VIEW.size, counts)
               + _MINUTIA.itemsize * (np.arange(total) - first[owner]))
    rec = buf[byte_at[:, None] + np.arange(_MINUTIA.itemsize)].reshape(-1).view(_MINUTIA)
    w, h = width[chosen][owner], height[chosen][owner]
    x = (rec["tx"] & _COORD_MASK).astype(np.int64)
    y = rec["ry"].astype(np.int64)
    # The same checks as _read_minutiae, but also no clamping: a record with a minutia on
    # or past the far edge is left to decode_template (rare, and it counts them).
    bad = ((rec["tx"] > 0xBFFF) | (x >= w) | (y >= h) | (rec["quality"] > 100)).astype(
        np.int64)
    clean = np.bincount(owner, weights=bad, minlength=chosen.size) == 0
    angle = np.mod(rec["angle"].astype(np.float64) * (TWO_PI / ISO_ANGLE_UNITS),
                   TWO_PI).astype(np.float32)
    xs, ys = x.astype(np.float32), y.astype(np.float32)
    kind = (rec["tx"] >> 14).astype(np.uint8)
    quality = rec["quality"].astype(np.uint8)
    keep = np.flatnonzero(clean)
    rows = chosen[keep]
    claimed = np.where(given, want, finger)[rows]
    # Python ints, once: indexing numpy arrays per record would cost more than the rest
    columns = zip(rows.tolist(), first[keep].tolist(), (first + counts)[keep].tolist(),
                  width[rows].tolist(), height[rows].tolist(), ppi[rows].tolist(),
                  claimed.tolist(), (u8(25) & 0x0F)[rows].tolist(), u8(26)[rows].tolist(),
                  u16(12)[rows].tolist(), strict=True)
    out = []
    for i, a, b, w_i, h_i, ppi_i, finger_i, impression_i, quality_i, equipment_i in columns:
        out.append((i, Template(
            x=xs[a:b], y=ys[a:b], angle=angle[a:b], kind=kind[a:b], quality=quality[a:b],
            width=w_i, height=h_i, ppi=float(ppi_i), finger=_FINGERS[finger_i],
            impression=impression_i, image_quality=quality_i,
            metadata={"format": "iso", "views": 1, "ppi_assumed": False, "edge_clamped": 0,
                      "capture_equipment": equipment_i},
        )))
    return out


# ---------------------------------------------------------------- encoding


def _encode_view(t: Template, units: int) -> bytes:
    if not 0 <= t.impression <= 15:
        raise TemplateError(f"impression type {t.impression} does not fit the 4-bit field")
    rec = np.empty(len(t), _MINUTIA)
    x = np.clip(np.rint(t.x), 0, t.width - 1).astype(np.uint16)
    y = np.clip(np.rint(t.y), 0, t.height - 1).astype(np.uint16)
    rec["tx"] = (t.kind.astype(np.uint16) << 14) | x
    rec["ry"] = y
    rec["angle"] = np.rint(t.angle.astype(np.float64) * (units / TWO_PI)).astype(np.int64) % units
    rec["quality"] = t.quality
    view = _VIEW.pack(int(t.finger), t.impression, t.image_quality, len(t))
    return view + rec.tobytes() + _U16.pack(0)  # no extended data (section 4.1 interop trap)


def encode_iso(template: Template) -> bytes:
    """An ISO 19794-2:2005 record holding ``template`` as its one finger view."""
    view = _encode_view(template, ISO_ANGLE_UNITS)
    pxcm = _pxcm_from_ppi(template.ppi)
    return _ISO_HEAD.pack(
        MAGIC, VERSION, _ISO_HEAD.size + len(view), 0, template.width, template.height,
        pxcm, pxcm, 1, 0,
    ) + view


def iso_round_trip(template: Template) -> tuple[bytes, Template]:
    """The ISO record of ``template`` and the template that record decodes to.

    Equal to ``(r, decode_iso(r, finger=template.finger))`` with ``r = encode_iso(template)``
    (a test holds them together), without parsing the bytes back: enrolment stores the
    record and searches exactly what a restart will read from it.
    """
    return iso_round_trips([template])[0]


def iso_round_trips(templates: Sequence[Template]) -> list[tuple[bytes, Template]]:
    """:func:`iso_round_trip` of many templates, quantised in one pass over all minutiae."""
    if not templates:
        return []
    for t in templates:
        if not 0 <= t.impression <= 15:
            raise TemplateError(f"impression type {t.impression} does not fit the 4-bit field")
    units = ISO_ANGLE_UNITS
    counts = np.array([len(t) for t in templates], np.int64)
    ends = np.cumsum(counts)
    width = np.repeat(np.array([t.width for t in templates], np.int64), counts)
    height = np.repeat(np.array([t.height for t in templates], np.int64), counts)
    x = np.clip(np.rint(np.concatenate([t.x for t in templates])), 0, width - 1)
    y = np.clip(np.rint(np.concatenate([t.y for t in templates])), 0, height - 1)
    steps = np.rint(
        np.concatenate([t.angle for t in templates]).astype(np.float64) * (units / TWO_PI)
    ).astype(np.int64) % units
    kind = np.concatenate([t.kind for t in templates]).astype(np.uint8)
    quality = np.concatenate([t.quality for t in templates]).astype(np.uint8)
    rec = np.empty(x.shape[0], _MINUTIA)
    rec["tx"] = (kind.astype(np.uint16) << 14) | x.astype(np.uint16)
    rec["ry"] = y.astype(np.uint16)
    rec["angle"] = steps
    rec["quality"] = quality
    x32 = x.astype(np.float32)
    y32 = y.astype(np.float32)
    angle32 = np.mod(steps.astype(np.float64) * (TWO_PI / units), TWO_PI).astype(np.float32)
    minutiae = rec.tobytes()
    step = _MINUTIA.itemsize
    resolution: dict[float, tuple[int, float]] = {}  # ppi -> (px/cm, ppi read back)
    out = []
    for t, end, n in zip(templates, ends.tolist(), counts.tolist(), strict=True):
        a = end - n
        if t.ppi not in resolution:
            pxcm = _pxcm_from_ppi(t.ppi)
            resolution[t.ppi] = (pxcm, float(_ppi_from_pxcm(pxcm)))
        pxcm, ppi = resolution[t.ppi]
        length = _ISO_HEAD.size + _VIEW.size + n * step + _U16.size
        record = b"".join((
            _ISO_HEAD.pack(MAGIC, VERSION, length, 0, t.width, t.height, pxcm, pxcm, 1, 0),
            _VIEW.pack(int(t.finger), t.impression, t.image_quality, n),
            minutiae[a * step:end * step], _NO_EXTENDED_DATA,
        ))
        stored = Template(
            x=x32[a:end], y=y32[a:end], angle=angle32[a:end], kind=kind[a:end],
            quality=quality[a:end], width=t.width, height=t.height,
            ppi=ppi, finger=t.finger, impression=t.impression,
            image_quality=t.image_quality,
            metadata={"format": "iso", "views": 1, "ppi_assumed": False, "edge_clamped": 0,
                      "capture_equipment": 0},
        )
        out.append((record, stored))
    return out


def encode_ansi(template: Template) -> bytes:
    """An ANSI 378-2004 record holding ``template`` as its one finger view."""
    view = _encode_view(template, ANSI_ANGLE_UNITS)
    pxcm = _pxcm_from_ppi(template.ppi)
    tail = _ANSI_TAIL.pack(
        INK_CBEFF_OWNER, INK_CBEFF_TYPE, 0, template.width, template.height, pxcm, pxcm, 1, 0
    )
    # One view of <= 255 minutiae always fits the 2-byte form; the 00 00 + u32 form is
    # written only for the format's sake.
    short = 8 + _U16.size + len(tail) + len(view)
    length = _U16.pack(short) if short <= 0xFFFF else _U16.pack(0) + _U32.pack(short + 4)
    return MAGIC + VERSION + length + tail + view
