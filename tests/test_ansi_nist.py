"""ANSI/NIST-ITL Type-4 and Type-14 fingerprint records: reading, writing, and bad input.

The Type-4 header is also built by hand from the reference layout (not by our writer), so
the reader is checked against the standard rather than against itself.
"""

from __future__ import annotations

import struct

import nistitl
import numpy as np
import pytest

from gateway.devices.ansi_nist import (
    AnsiNistError,
    FingerImage,
    is_ansi_nist,
    read_fingerprints,
    write_fingerprints,
)


def ridges(height: int = 300, width: int = 260, period: float = 9.0) -> np.ndarray:
    """A smooth ridge pattern (WSQ needs something image-like, not noise)."""
    y, x = np.mgrid[0:height, 0:width]
    angle = 0.4 + x / width
    wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    return (127.5 + 100 * wave).astype(np.uint8)


@pytest.mark.parametrize("record_type", [4, 14])
def test_raw_images_round_trip_exactly(record_type: int) -> None:
    first, second = ridges(), ridges(200, 180, 11.0)
    data = write_fingerprints([FingerImage(first, 500.0, 2, 0), FingerImage(second, 500.0, 7, 1)],
                              record_type=record_type)
    assert is_ansi_nist(data)
    read = read_fingerprints(data)
    assert [(f.record_type, f.finger_position, f.impression, f.idc, f.ppi) for f in read] == [
        (record_type, 2, 0, 1, 500.0), (record_type, 7, 1, 2, 500.0)]
    assert np.array_equal(read[0].image, first) and np.array_equal(read[1].image, second)


@pytest.mark.parametrize("record_type", [4, 14])
def test_wsq_images_round_trip_closely(record_type: int) -> None:
    image = ridges()
    data = write_fingerprints([FingerImage(image, 500.0, 3, compression="WSQ20")],
                              record_type=record_type)
    [read] = read_fingerprints(data)
    assert read.compression == "WSQ20" and read.image.shape == image.shape
    assert len(data) < image.size / 3  # it really was compressed
    # WSQ is lossy (0.75 bit/pixel): the same picture, not the same bytes.
    assert np.corrcoef(read.image.ravel(), image.ravel())[0, 1] > 0.95


def test_type14_resolution_in_pixels_per_cm_and_other_ppi() -> None:
    data = write_fingerprints([FingerImage(ridges(), 1000.0, 6)])
    [read] = read_fingerprints(data)
    assert read.ppi == 1000.0 and read.finger_position == 6
    message = nistitl.Message()
    message.parse(data)
    record = message[1]
    record.SLC = "2"
    record.THPS = "393.70"  # px/cm for 1000 ppi
    [read] = read_fingerprints(message.NIST)
    assert read.ppi == 1000.0


def test_hand_built_type4_record_follows_the_reference_layout() -> None:
    image = ridges(40, 30)
    header = struct.pack("!BB6sBHHB", 7, 1, bytes([4]) + b"\xff" * 5, 1, 30, 40, 0)
    body = header + image.tobytes()
    record = struct.pack("!L", 4 + len(body)) + body  # LEN counts itself
    message = nistitl.Message()
    message.TOT = "CAR"
    message[0].NSR = "39.37"  # native 1000 ppi, used because ISR = 1
    message[0].NTR = "19.69"
    type4 = nistitl.BinaryRecord(4)
    type4.IDC = 7
    type4.value = body[1:]
    message += type4
    data = message.NIST
    assert data.endswith(record)  # nistitl wrote exactly the hand-made bytes
    [read] = read_fingerprints(data)
    assert (read.idc, read.impression, read.finger_position, read.ppi) == (7, 1, 4, 1000.0)
    assert np.array_equal(read.image, image)
    # ISR = 0: the minimum scanning resolution, NTR.
    type4.value = body[1:8] + b"\x00" + body[9:]
    assert read_fingerprints(message.NIST)[0].ppi == 500.0


def test_transactions_without_images_and_bad_bytes() -> None:
    message = nistitl.Message()
    message.TOT = "TPIS"
    assert read_fingerprints(message.NIST) == []
    with pytest.raises(AnsiNistError):
        read_fingerprints(b"1.001:99\x1d1.002:0400\x1cgarbage")
    data = bytearray(write_fingerprints([FingerImage(ridges(40, 30), 500.0, 2)],
                                        record_type=4))
    with pytest.raises(AnsiNistError):
        read_fingerprints(bytes(data[:-10]))  # truncated image data
    assert not is_ansi_nist(b"\x89PNG\r\n")


def test_writer_rejects_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="share one resolution"):
        write_fingerprints([FingerImage(ridges(), 500.0), FingerImage(ridges(), 1000.0)],
                           record_type=4)
    with pytest.raises(ValueError, match="record_type"):
        write_fingerprints([], record_type=9)
