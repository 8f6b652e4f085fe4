"""Image decoding: formats, resolution from the file or the caller, clear errors."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import wsq  # noqa: F401  (registers WSQ with Pillow, to write the test files)
from PIL import Image

from gateway.extraction.decode import MAX_PIXELS, ImageDecodeError, load_image
from gateway.extraction.wsq_isolated import (
    WsqDecodeError,
    WsqDecoderProcess,
    WsqUnavailableError,
    read_wsq_size,
)


def _print_like(h: int = 120, w: int = 100) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (128 + 100 * np.sin((xx + 0.5 * yy) / 1.5)).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_lossless_formats_round_trip_exactly(fmt):
    arr = _print_like()
    loaded = load_image(_encode(arr, fmt))
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == arr.shape
    assert np.array_equal(loaded.image, arr)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_resolution_is_read_from_the_file(fmt):
    loaded = load_image(_encode(_print_like(), fmt, dpi=(1000, 1000)), ppi=500.0)
    assert loaded.ppi == pytest.approx(1000.0, abs=0.05)
    assert loaded.ppi_source == "file"


def test_given_resolution_when_the_file_has_none_or_a_placeholder():
    no_dpi = load_image(_encode(_print_like(), "PNG"), ppi=700.0)
    assert (no_dpi.ppi, no_dpi.ppi_source) == (700.0, "given")
    placeholder = load_image(_encode(_print_like(), "TIFF", dpi=(72, 72)), ppi=500.0)
    assert placeholder.ppi_source == "given"


def test_default_resolution_is_flagged():
    loaded = load_image(_encode(_print_like(), "PNG"))
    assert loaded.ppi == 500.0 and loaded.ppi_assumed


def test_unpacks_as_image_and_ppi(tmp_path: Path):
    path = tmp_path / "print.png"
    path.write_bytes(_encode(_print_like(), "PNG", dpi=(500, 500)))
    image, ppi = load_image(path)
    assert image.shape == (120, 100) and ppi == pytest.approx(500.0, abs=0.05)
    image2, _ = load_image(str(path))
    assert np.array_equal(image, image2)


def test_wsq_decodes_with_its_nistcom_resolution():
    arr = _print_like(200, 160)
    data = _encode(arr, "WSQ")
    loaded = load_image(data, ppi=1000.0)
    assert loaded.image.shape == arr.shape
    assert loaded.ppi == 500.0 and loaded.ppi_source == "file"  # the NISTCOM says PPI 500
    # Lossy, but close: WSQ at 0.75 bpp keeps ridges.
    assert np.mean(np.abs(loaded.image.astype(int) - arr)) < 12


def test_colour_and_16_bit_images_become_8_bit_gray():
    rgb = np.stack([_print_like()] * 3, axis=2)
    assert np.array_equal(load_image(_encode(rgb, "PNG")).image, _print_like())
    wide = _print_like().astype(np.uint16) * 257
    got = load_image(_encode(wide, "PNG")).image
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - _print_like()).max() <= 1


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", None],  # None: a truncated PNG, built below
)
def test_corrupt_input_raises_image_decode_error(data):
    if data is None:
        data = _encode(_print_like(), "PNG")[:60]
    with pytest.raises(ImageDecodeError):
        load_image(data)


def test_missing_file_raises_image_decode_error(tmp_path: Path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "absent.png")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds the first few pixels of it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(64))))


def test_a_huge_declared_size_is_refused_from_the_header():
    with pytest.raises(ImageDecodeError, match=r"5000 x 5000 pixels; images over 16.8 "
                                               r"Mpixel are refused"):
        load_image(_png_header(5000, 5000))
    # Below the cap the same header gets as far as decoding, and fails there.
    assert MAX_PIXELS > 3000 * 3000
    with pytest.raises(ImageDecodeError, match="damaged"):
        load_image(_png_header(3000, 3000))


def test_a_huge_declared_wsq_size_is_refused_before_the_decoder_sees_it():
    data = bytearray(_encode(_print_like(), "WSQ"))
    assert read_wsq_size(bytes(data)) == (100, 120)
    sof = data.index(b"\xff\xa2")
    data[sof + 6:sof + 10] = struct.pack(">HH", 5000, 6000)
    with pytest.raises(ImageDecodeError, match=r"6000 x 5000 pixels.*refused"):
        load_image(bytes(data))


# Stand-ins for the decoder child, for what the real one does too rarely to test: both
# say they are ready, read a request, then hang or answer a wrong-sized image.
_READY = ("import os, struct, sys, time\n"
          "os.write(1, struct.pack('>4sBIII', b'WSQr', 2, 0, 0, 0))\n"
          "sys.stdin.buffer.read(12)\n")
_HANGS = _READY + "time.sleep(600)\n"
_GARBAGE = _READY + ("os.write(1, struct.pack('>4sBIII', b'WSQr', 0, 7, 7, 49) + bytes(49))\n"
                     "time.sleep(600)\n")


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped
    return False


def test_a_hanging_decoder_is_killed_after_the_timeout():
    with WsqDecoderProcess([sys.executable, "-c", _HANGS]) as decoder:
        with pytest.raises(WsqDecodeError, match=r"did not finish within 0.3 s.*re-export"):
            decoder.decode(_encode(_print_like(), "WSQ"), timeout_s=0.3)
        assert decoder.pid is None
        # The next call starts a new child (which hangs again, being the stand-in).
        with pytest.raises(WsqDecodeError, match="did not finish"):
            decoder.decode(_encode(_print_like(), "WSQ"), timeout_s=0.3)


def test_a_decoder_answering_garbage_is_replaced():
    with WsqDecoderProcess([sys.executable, "-c", _GARBAGE]) as decoder:
        with pytest.raises(WsqDecodeError, match="crashed on this file .*answered garbage"):
            decoder.decode(_encode(_print_like(), "WSQ"))
        assert decoder.pid is None


def test_a_decoder_that_cannot_start_says_so():
    with WsqDecoderProcess([sys.executable, "-c", "raise SystemExit(3)"]) as decoder, \
            pytest.raises(WsqUnavailableError, match=r"did not start \(exit status 3\)"):
        decoder.decode(_encode(_print_like(), "WSQ"))


def test_wsq_decodes_from_several_threads_at_once():
    files = [_encode(_print_like(100 + 8 * i, 90), "WSQ") for i in range(4)]
    expected = [load_image(f).image for f in files]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: load_image(f).image, files * 3))
    for image, want in zip(got, expected * 3, strict=True):
        assert np.array_equal(image, want)


def test_the_decoder_child_ends_with_the_interpreter():
    code = ("import sys\n"
            "from gateway.extraction.decode import load_image\n"
            "from gateway.extraction.wsq_isolated import shared_decoder\n"
            "load_image(sys.stdin.buffer.read())\n"
            "print(shared_decoder().pid)\n")
    child = subprocess.run([sys.executable, "-c", code], input=_encode(_print_like(), "WSQ"),
                           capture_output=True, timeout=120, check=True)
    pid = int(child.stdout)
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc to look for the process")
    assert not Path(f"/proc/{pid}").exists(), "the WSQ decoder child outlived its parent"


def _data_dir() -> Path:
    env = os.environ.get("INK_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.realdata
def test_real_sensor_tiffs_decode():
    root = _data_dir()
    fvc = root / "fvc2000" / "DB1_B" / "101_1.tif"
    neuro = root / "neurotechnology" / "uareu"
    if not fvc.exists() or not neuro.exists():
        pytest.skip("real data folder absent")
    loaded = load_image(fvc, ppi=500.0)
    # FVC headers carry a meaningless resolution: the caller's value must win.
    assert loaded.image.shape == (300, 300) and loaded.ppi_source == "given"
    palette = load_image(sorted(neuro.glob("*.tif"))[0])
    assert palette.image.ndim == 2 and palette.ppi == 500.0
    assert 60 < float(palette.image.mean()) < 250  # a light background with dark ridges
