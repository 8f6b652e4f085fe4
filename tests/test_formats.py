"""Tests of the ISO 19794-2:2005 and ANSI 378-2004 template codecs (matcher/formats.py)."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.formats import (
    ANSI_ANGLE_UNITS,
    INK_CBEFF_OWNER,
    ISO_ANGLE_UNITS,
    decode_ansi,
    decode_iso,
    decode_template,
    decode_templates,
    detect_format,
    encode_ansi,
    encode_iso,
    iso_round_trip,
    iso_round_trips,
)
from matcher.template import Finger, MinutiaKind, Template, TemplateError, make_template

DATA_DIR = Path(
    os.environ.get("INK_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
ISO_FILES = sorted((DATA_DIR / "fvc2002-iso").glob("DB*_B/*.iso"))

# The worked example of devices-and-formats.md section 4.1, byte for byte.
WORKED_EXAMPLE = bytes.fromhex(
    "464D5200 20323000 0000002A 0000 0100 0120 00C5 00C5 01 00"
    "02 00 00 02"
    "4064 0078 40 3C"
    "801E 00C8 C0 50"
    "0000".replace(" ", "")
)


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular distance in radians."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.abs((d + math.pi) % (2 * math.pi) - math.pi)


def random_template(rng: np.random.Generator, n: int, **kw) -> Template:
    width, height = kw.pop("width", 388), kw.pop("height", 374)
    return make_template(
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        rng.uniform(0, 2 * math.pi, n),
        rng.integers(0, 3, n),
        rng.integers(0, 101, n),
        width=width,
        height=height,
        **kw,
    )


def assert_same_record(a: Template, b: Template, angle_tol: float) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert np.all(angle_error(a.angle, b.angle) <= angle_tol + 1e-5)
    np.testing.assert_array_equal(a.kind, b.kind)
    np.testing.assert_array_equal(a.quality, b.quality)
    assert (a.width, a.height, a.ppi, a.finger) == (b.width, b.height, b.ppi, b.finger)
    assert (a.impression, a.image_quality) == (b.impression, b.image_quality)


def with_header_field(record: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    return record[:offset] + struct.pack(fmt, value) + record[offset + size :]


# ---------------------------------------------------------------- worked example


def test_worked_example_decodes_to_the_stated_values():
    t = decode_template(WORKED_EXAMPLE)
    assert detect_format(WORKED_EXAMPLE) == "iso"
    assert (t.width, t.height, t.ppi, t.finger, t.impression) == (256, 288, 500.0, 2, 0)
    assert t.finger is Finger.RIGHT_INDEX and t.image_quality == 0
    assert t.x.tolist() == [100, 30] and t.y.tolist() == [120, 200]
    assert np.allclose(np.degrees(t.angle), [90, 270])
    assert t.kind.tolist() == [MinutiaKind.ENDING, MinutiaKind.BIFURCATION]
    assert t.quality.tolist() == [60, 80]
    assert t.metadata["format"] == "iso" and t.metadata["ppi_assumed"] is False


def test_worked_example_re_encodes_byte_identical():
    assert encode_iso(decode_template(WORKED_EXAMPLE)) == WORKED_EXAMPLE


def test_encoded_angle_is_counter_clockwise_in_256_steps():
    t = make_template([10], [10], [math.pi / 2 + 0.004], width=20, height=20)
    assert encode_iso(t)[24 + 4 + 4] == 64  # 90 degrees
    assert encode_ansi(t)[26 + 4 + 4] == 45  # 90 degrees in 2-degree units


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ppi", [250, 300, 333, 500, 508, 1000, 1200])
@pytest.mark.parametrize("codec", ["iso", "ansi"])
def test_round_trip_preserves_every_field(codec, ppi):
    encode, decode = (encode_iso, decode_iso) if codec == "iso" else (encode_ansi, decode_ansi)
    units = ISO_ANGLE_UNITS if codec == "iso" else ANSI_ANGLE_UNITS
    rng = np.random.default_rng(ppi)
    for n in (0, 1, 37, 255):
        t = random_template(rng, n, ppi=ppi, finger=7, impression=1, image_quality=83)
        record = encode(t)
        back = decode(record)
        assert detect_format(record) == codec
        assert_same_record(t, back, angle_tol=math.pi / units)  # half a unit: rounding
        assert encode(back) == record  # decoding loses nothing the encoder wrote


def test_ansi_header_carries_a_nonzero_cbeff_owner():
    record = encode_ansi(decode_template(WORKED_EXAMPLE))
    assert struct.unpack_from(">H", record, 10)[0] == INK_CBEFF_OWNER != 0
    assert decode_template(record).metadata["cbeff_owner"] == INK_CBEFF_OWNER


def test_encoder_rounds_and_clamps_coordinates_into_the_image():
    t = make_template([0.4, 99.7, 12.5], [199.9, 0.0, 7.49], [0, 0, 0], width=100, height=200)
    back = decode_iso(encode_iso(t))
    assert back.x.tolist() == [0, 99, 12] and back.y.tolist() == [199, 0, 7]


def test_ansi_long_length_form_decodes():
    short = encode_ansi(random_template(np.random.default_rng(1), 12))
    long_form = short[:8] + b"\x00\x00" + struct.pack(">I", len(short) + 4) + short[10:]
    assert detect_format(long_form) == "ansi"
    assert_same_record(decode_template(long_form), decode_template(short), 0.0)


@pytest.mark.parametrize("first", ["iso", "ansi"])
def test_ansi_iso_conversion_keeps_xy_and_angle_within_a_unit(first):
    t = random_template(np.random.default_rng(7), 60, finger=3)
    there, back = (encode_iso, encode_ansi) if first == "iso" else (encode_ansi, encode_iso)
    converted = decode_template(back(decode_template(there(t))))
    assert converted.metadata["format"] != first
    # each step rounds to half of its own unit
    assert_same_record(t, converted, angle_tol=math.pi / 256 + math.pi / 180)


# ---------------------------------------------------------------- views, resolution, ext data


def _view(finger: int, minutiae: list[tuple[int, int, int, int, int]], ext: bytes = b"") -> bytes:
    body = bytes([finger, 0, 50, len(minutiae)])
    for kind, x, y, angle, quality in minutiae:
        body += struct.pack(">HHBB", kind << 14 | x, y, angle, quality)
    return body + struct.pack(">H", len(ext)) + ext


def _iso(*views: bytes, width: int = 300, height: int = 400, pxcm: int = 197) -> bytes:
    body = b"".join(views)
    head = struct.pack(">4s4sIHHHHHBB", b"FMR\0", b" 20\0", 24 + len(body), 0, width, height,
                       pxcm, pxcm, len(views), 0)
    return head + body


def test_first_view_is_read_and_finger_selects_another():
    record = _iso(_view(2, [(1, 10, 20, 0, 0)]), _view(7, [(2, 30, 40, 64, 0), (1, 1, 1, 1, 1)]))
    assert decode_template(record).x.tolist() == [10]
    second = decode_template(record, finger=7)
    assert second.finger is Finger.LEFT_INDEX and second.x.tolist() == [30, 1]
    assert second.metadata["views"] == 2
    with pytest.raises(TemplateError, match="no view of finger 4"):
        decode_template(record, finger=4)


def test_finger_labels_an_unknown_finger_record():
    assert decode_template(WORKED_EXAMPLE.replace(b"\x02\x00\x00\x02", b"\x00\x00\x00\x02"),
                           finger=5).finger is Finger.RIGHT_LITTLE


def test_a_damaged_later_view_rejects_the_record():
    good = _iso(_view(2, [(1, 10, 20, 0, 0)]), _view(7, [(1, 30, 40, 64, 0)]))
    bad = good[:-6] + struct.pack(">H", 0xC000 | 40) + good[-4:]  # reserved y bits, view 2
    with pytest.raises(TemplateError, match=f"byte {len(good) - 6}"):
        decode_template(bad)


@pytest.mark.parametrize("area_len_includes_header", [True, False])
def test_extended_data_is_skipped_under_both_length_conventions(area_len_includes_header):
    data = b"\x01\x02\x03\x04\x05"
    area = struct.pack(">HH", 0x0100, len(data) + (4 if area_len_includes_header else 0)) + data
    record = _iso(_view(1, [(1, 10, 20, 3, 9)], ext=area), _view(2, [(2, 5, 6, 7, 8)]))
    assert decode_template(record).x.tolist() == [10]
    assert decode_template(record, finger=2).x.tolist() == [5]


@pytest.mark.parametrize(("pxcm", "ppi"), [(197, 500), (394, 1000), (118, 300), (200, 508)])
def test_resolution_in_px_per_cm_becomes_ppi(pxcm, ppi):
    t = decode_template(_iso(_view(0, [(1, 10, 20, 0, 0)]), pxcm=pxcm))
    assert t.ppi == ppi and t.metadata["ppi_assumed"] is False


def test_resolution_zero_assumes_500_ppi():
    t = decode_template(_iso(_view(0, [(1, 10, 20, 0, 0)]), pxcm=0))
    assert t.ppi == 500 and t.metadata["ppi_assumed"] is True


def test_minutia_on_the_far_edge_is_clamped_and_counted():
    t = decode_template(_iso(_view(0, [(1, 300, 400, 0, 0), (1, 301, 12, 0, 0)])))
    assert t.x.tolist() == [299, 299] and t.y.tolist() == [399, 12]
    assert t.metadata["edge_clamped"] == 3


# ---------------------------------------------------------------- malformed records


MALFORMED = {
    "wrong magic": (b"FMX\0" + WORKED_EXAMPLE[4:], "byte 0"),
    "wrong version": (WORKED_EXAMPLE[:4] + b"030\0" + WORKED_EXAMPLE[8:], "byte 4"),
    "too short": (WORKED_EXAMPLE[:11], "byte 0"),
    "length mismatch": (with_header_field(WORKED_EXAMPLE, 8, ">I", 43), "byte 8"),
    "trailing byte": (with_header_field(WORKED_EXAMPLE, 8, ">I", 43) + b"\0", "byte 42"),
    "zero width": (with_header_field(WORKED_EXAMPLE, 14, ">H", 0), "byte 14"),
    "absurd resolution": (with_header_field(
        with_header_field(WORKED_EXAMPLE, 18, ">H", 5000), 20, ">H", 5000), "byte 18"),
    "non-square pixels": (with_header_field(WORKED_EXAMPLE, 20, ">H", 196), "byte 18"),
    "no views": (with_header_field(WORKED_EXAMPLE, 22, ">B", 0), "byte 22"),
    "reserved byte": (with_header_field(WORKED_EXAMPLE, 23, ">B", 1), "byte 23"),
    "finger code 11": (with_header_field(WORKED_EXAMPLE, 24, ">B", 11), "byte 24"),
    "view quality 101": (with_header_field(WORKED_EXAMPLE, 26, ">B", 101), "byte 26"),
    "N past the end": (with_header_field(WORKED_EXAMPLE, 27, ">B", 3), "byte 28"),
    "minutia type 11": (with_header_field(WORKED_EXAMPLE, 34, ">H", 0xC000 | 30), "byte 34"),
    "x beyond width": (with_header_field(WORKED_EXAMPLE, 28, ">H", 0x4000 | 259), "byte 28"),
    "y beyond height": (with_header_field(WORKED_EXAMPLE, 36, ">H", 291), "byte 36"),
    "minutia quality 101": (with_header_field(WORKED_EXAMPLE, 39, ">B", 101), "byte 39"),
    "ext data past end": (with_header_field(WORKED_EXAMPLE, 40, ">H", 4), "byte 40"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_record_names_the_fault_and_its_offset(case):
    record, where = MALFORMED[case]
    with pytest.raises(TemplateError, match=where):
        decode_template(record)


def test_ansi_angle_above_179_is_rejected():
    record = encode_ansi(decode_template(WORKED_EXAMPLE))
    at = 26 + 4 + 4
    with pytest.raises(TemplateError, match=f"byte {at}"):
        decode_template(with_header_field(record, at, ">B", 180))


def test_explicit_decoders_refuse_the_other_format():
    with pytest.raises(TemplateError, match="length"):
        decode_ansi(WORKED_EXAMPLE)
    with pytest.raises(TemplateError, match="length"):
        decode_iso(encode_ansi(decode_template(WORKED_EXAMPLE)))


VALID_RECORDS = [WORKED_EXAMPLE, encode_ansi(decode_template(WORKED_EXAMPLE)),
                 encode_iso(random_template(np.random.default_rng(3), 40, finger=1)),
                 encode_ansi(random_template(np.random.default_rng(4), 40, finger=9))]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_raises_template_error(data: bytes) -> None:
    try:
        t = decode_template(data)
    except TemplateError:
        return
    assert isinstance(t, Template)


@FUZZ
@given(st.sampled_from([b"", b"FMR\0 20\0"]), st.binary(max_size=80))
def test_random_bytes_raise_only_template_error(prefix, tail):
    decodes_or_raises_template_error(prefix + tail)


@FUZZ
@given(st.sampled_from(VALID_RECORDS), st.data())
def test_truncations_raise_only_template_error(record, data):
    cut = data.draw(st.integers(0, len(record) - 1))
    with pytest.raises(TemplateError):
        decode_template(record[:cut])


@FUZZ
@given(st.sampled_from(VALID_RECORDS), st.data())
def test_single_byte_corruptions_raise_only_template_error(record, data):
    at = data.draw(st.integers(0, len(record) - 1))
    value = data.draw(st.integers(0, 255))
    decodes_or_raises_template_error(record[:at] + bytes([value]) + record[at + 1 :])


# ---------------------------------------------------------------- real templates


@pytest.mark.realdata
@pytest.mark.skipif(not ISO_FILES, reason=f"no ISO templates under {DATA_DIR}/fvc2002-iso")
def test_every_fvc2002_iso_template_decodes_and_re_encodes():
    assert len(ISO_FILES) == 320
    for path in ISO_FILES:
        record = path.read_bytes()
        t = decode_template(record)
        assert (t.width, t.height, t.ppi) == (300, 400, 500.0), path.name
        assert 10 <= len(t) <= 100 and t.metadata["edge_clamped"] == 0, path.name
        again = encode_iso(t)
        assert again == record, path.name  # SecuGen writes exactly what we write
        assert_same_record(decode_template(again), t, 0.0)
        assert_same_record(decode_template(encode_ansi(t)), t, math.pi / 180 + 1e-6)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 80),
    ppi=st.sampled_from([250.0, 333.0, 500.0, 508.0, 1000.0]),
    finger=st.integers(0, 10),
    edge=st.booleans(),
)
def test_iso_round_trip_equals_encoding_then_decoding(seed, n, ppi, finger, edge):
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(50, 800)), int(rng.integers(50, 800))
    x = rng.uniform(0, w, n)
    y = rng.uniform(0, h, n)
    if edge and n:  # on the far edges, where rounding would leave the image
        x[0] = np.nextafter(np.float32(w), np.float32(0))
        y[-1] = np.nextafter(np.float32(h), np.float32(0))
    t = make_template(x, y, rng.uniform(-10, 10, n), rng.integers(0, 3, n),
                      rng.integers(0, 101, n), width=w, height=h, ppi=ppi, finger=finger,
                      impression=int(rng.integers(0, 16)), image_quality=int(rng.integers(0, 101)))
    record, stored = iso_round_trip(t)
    in_batch_record, in_batch = iso_round_trips([t, t])[1]  # the batch form agrees
    assert in_batch_record == record and np.array_equal(in_batch.angle, stored.angle)
    assert record == encode_iso(t)
    decoded = decode_iso(record, finger=finger)
    for name in ("x", "y", "angle", "kind", "quality"):
        got, want = getattr(stored, name), getattr(decoded, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    for name in ("width", "height", "ppi", "finger", "impression", "image_quality", "metadata"):
        assert getattr(stored, name) == getattr(decoded, name), name


# ---------------------------------------------------------------- many records at once


def decoded_alike(a, b) -> bool:
    """Two results of decoding: the same Template in every field (array dtypes and
    metadata too), or TemplateErrors with the same message."""
    if isinstance(a, TemplateError) or isinstance(b, TemplateError):
        return type(a) is type(b) and str(a) == str(b)
    return all(
        getattr(a, f).dtype == getattr(b, f).dtype
        and np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("x", "y", "angle", "kind", "quality")
    ) and all(
        getattr(a, f) == getattr(b, f) and type(getattr(a, f)) is type(getattr(b, f))
        for f in ("width", "height", "ppi", "finger", "impression", "image_quality", "metadata")
    )


def decoded_one_by_one(record: bytes, finger: int | None):
    try:
        return decode_template(record, finger=finger)
    except TemplateError as exc:
        return exc


def _plain(seed: int, n: int = 30, **kw) -> bytes:
    return encode_iso(random_template(np.random.default_rng(seed), n, **kw))


# Records and the finger asked for: plain ISO records of every kind decoded in one batch,
# and everything decode_template treats specially, which goes its own way.
BATCH_CASES = [
    (_plain(1, finger=2), None), (_plain(2, finger=2), 2), (_plain(3, finger=0), 7),
    (_plain(4, finger=3), 5), (_plain(5, finger=0), 11), (_plain(6, finger=4), -1),
    (_plain(7, n=0), None), (_plain(8, n=255, width=2000, height=1500, ppi=1000), None),
    (_plain(9, ppi=300, impression=3, image_quality=77), None),
    (_plain(10, ppi=508), None), (_plain(11, finger=10), 10),
    (with_header_field(_plain(12), 12, ">H", 0x1234), None),  # capture equipment
    (_iso(_view(0, [(1, 10, 20, 0, 0)]), pxcm=0), None),
    (_iso(_view(0, [(1, 300, 400, 0, 0), (1, 301, 12, 0, 0)])), None),  # on the edge
    (_iso(_view(2, [(1, 10, 20, 0, 0)]), _view(7, [(2, 30, 40, 64, 0)])), 7),
    (_iso(_view(1, [(1, 10, 20, 3, 9)], ext=struct.pack(">HH", 0x0100, 5) + b"\1")), None),
    (encode_ansi(random_template(np.random.default_rng(13), 25, finger=6)), 6),
    *[(record, None) for record, _ in MALFORMED.values()],
    (b"", None), (b"FMR\0", None), (WORKED_EXAMPLE + b"\0", None),
]


def test_decode_templates_equals_decode_template_record_by_record():
    records = [r for r, _ in BATCH_CASES]
    fingers = [f for _, f in BATCH_CASES]
    batch = decode_templates(records, fingers)
    assert len(batch) == len(records)
    for (record, finger), got in zip(BATCH_CASES, batch, strict=True):
        assert decoded_alike(got, decoded_one_by_one(record, finger)), (record[:32], finger)
    assert sum(isinstance(t, Template) for t in batch) == 14  # the 14 valid cases
    assert decode_templates([]) == []


def test_plain_iso_records_are_decoded_together_not_one_by_one(monkeypatch):
    """The common case takes the batch path (so the comparisons above test it)."""
    from matcher import formats

    records = [_plain(s, finger=s % 11) for s in range(50)]
    expected = [decode_template(r) for r in records]

    def refuse(*args, **kw):
        raise AssertionError("decoded one by one")

    monkeypatch.setattr(formats, "decode_template", refuse)
    for got, want in zip(decode_templates(records), expected, strict=True):
        assert decoded_alike(got, want)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(VALID_RECORDS + [r for r, _ in BATCH_CASES[:12]]),
                          st.integers(0, 400), st.integers(0, 255), st.booleans(),
                          st.sampled_from([None, 0, 1, 2, 7, 11])),
                min_size=1, max_size=6))
def test_decode_templates_of_damaged_records_equals_decoding_each(cases):
    """Single-byte damage anywhere (header, view, minutiae, ext length) in batches where
    good records sit beside damaged ones, which would show a record read at another's
    offset."""
    records, fingers = [], []
    for record, at, value, damage, finger in cases:
        at %= len(record)
        records.append(record[:at] + bytes([value]) + record[at + 1:] if damage else record)
        fingers.append(finger)
    batch = decode_templates(records, fingers)
    for record, finger, got in zip(records, fingers, batch, strict=True):
        assert decoded_alike(got, decoded_one_by_one(record, finger))
