"""Fuzzing image decoding (hypothesis): garbled PNG/TIFF/BMP/JPEG/JPEG 2000/PGM/WSQ bytes.

``load_image`` documents one error for unreadable input, ImageDecodeError. Fuzzing found
three ways out of it (an UnboundLocalError and a bare Exception from the ``wsq`` plugin,
Pillow's DecompressionBombError), and a corrupt WSQ file that makes the ``wsq`` C decoder
free memory twice, which aborts whatever process decodes it. The regression tests below
pin the fixes: each now gives an ImageDecodeError that says what to do, and the corrupt
file kills only the WSQ decoder's child process (gateway/extraction/wsq_isolated.py).
The fuzz test accepts no escape at all. The long run is
``python -m benchmarks.fuzz --target image --examples 100000 --isolate``.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import wsq  # noqa: F401  (registers WSQ with Pillow, to write the test files)
from PIL import Image

from benchmarks import fuzz
from gateway.extraction.decode import ImageDecodeError, load_image
from gateway.extraction.wsq_isolated import WsqDecodeError, WsqDecoderProcess

# A BMP header that declares a 1.7e18-pixel image in 62 bytes.
BMP_BOMB = bytes.fromhex(
    "424d52000000000000003e00000028000000" "9c4b335362c3174a" "0100010000000000"
    "14000000e54c0000e54c0000020000000200000000000000ffffff0006ad0000")


# A 783-byte WSQ file found by fuzzing: the wsq decoder aborts ("double free detected").
WSQ_DOUBLE_FREE = zlib.decompress(base64.b64decode(
    "eNr7v+D/CoYKP8/gkHhnf18FS64Az4j4cE+XEA8FYyMwx8PV090jRMHEAMxzcQ0ASllwBQR4KpgaGHD5+AcHRyoY"
    "cjn7+/gHBQc4OrsquAc5RgL5vgFBrsHBnv5+CuHBgVxAHO/kGRLkGOKqYKBnDtRqYPB/CYNVxLwWTqPLqmcZuB58"
    "lpzFyOX4/uMsRu4+9ZSzDNwPKxcbM3Dq/Q9jYOT6aXzZmJH7U7viLAYutfJbxv+XMrYyMegwjAISAZPLE6ag1Uzm"
    "KUxOFUyOaUx+1UwGDUxWxkz2jEzes5nMpzE5bWHS38Fk6cxkv53Jp4zJuZcpkB+Xaf8XMQgy/GfQYFBgMpjLot7J"
    "BBRaxiCMqW4xAzNIRpWRgYmRBQhZYTKbtzIyMbOwsrFzcHJx8/DyCWwCqWX88pjj8JJ2mVpFl5LN/GCRrdf6zt2u"
    "0SjdoPzx+KK5OYf9bE3+FLz4ZWDqE87y/cfbze15cvz5PD7KMon9HDccDi4yifTv+mdxSMx+TaKrSNCXo8rZjdwx"
    "sRmtKx0yD/ZuKfwSIxG9cuFy+c1RFlUXb7poPvywSPz/QgAv6Y+f"))


def _wsq() -> bytes:
    buf = io.BytesIO()
    image = np.random.default_rng(3).integers(0, 255, (40, 32)).astype(np.uint8)
    Image.fromarray(image).save(buf, format="WSQ")
    return buf.getvalue()


def test_image_decoding_survives_garbled_input() -> None:
    result = fuzz.run("image", 400, derandomize=True)
    assert result.examples == 400
    assert not result.crashes, result.as_dict()["crash_details"]


def test_a_truncated_wsq_header_is_a_decode_error() -> None:
    # It used to raise UnboundLocalError in the plugin; the header is now read here first.
    with pytest.raises(ImageDecodeError, match="no frame header.*re-export"):
        load_image(b"\xff\xa0\xff")


def test_truncated_wsq_data_is_a_decode_error() -> None:
    # The plugin raises a bare Exception('WSQ Error: -39') for this (in the child).
    data = _wsq()
    with pytest.raises(ImageDecodeError, match="WSQ data is corrupt.*re-export"):
        load_image(data[: len(data) - 100])


def test_an_absurd_declared_size_is_a_decode_error() -> None:
    # Pillow refuses this with DecompressionBombError before the size is seen.
    with pytest.raises(ImageDecodeError, match="Mpixel are refused"):
        load_image(BMP_BOMB)


def test_a_corrupt_wsq_file_does_not_kill_the_process() -> None:
    # In a child interpreter, so that a regression fails this test instead of aborting
    # the whole test run. The bytes go in on stdin.
    code = (
        "import sys\n"
        "from gateway.extraction.decode import ImageDecodeError, load_image\n"
        "corrupt, valid = sys.stdin.buffer.read().split(b'--next--')\n"
        "try:\n"
        "    load_image(corrupt)\n"
        "except ImageDecodeError as error:\n"
        "    print('refused:', error)\n"
        "print('then decoded', load_image(valid).image.shape)\n")
    child = subprocess.run([sys.executable, "-c", code], input=WSQ_DOUBLE_FREE + b"--next--"
                           + _wsq(), capture_output=True, timeout=120)
    out = child.stdout.decode()
    assert child.returncode == 0, child.stderr.decode()[-300:]
    assert "refused:" in out and "crashed on this file" in out and "re-export" in out, out
    assert "then decoded (40, 32)" in out, out


def test_after_a_decoder_crash_the_next_wsq_decodes_in_a_fresh_child() -> None:
    valid = _wsq()
    with WsqDecoderProcess() as decoder:
        before = decoder.decode(valid)
        crashed_pid = decoder.pid
        with pytest.raises(WsqDecodeError, match=r"crashed on this file \(killed by SIG"):
            decoder.decode(WSQ_DOUBLE_FREE)
        assert decoder.pid is None
        # Reaped, not a zombie: waitpid on a zombie would succeed instead.
        with pytest.raises(ChildProcessError):
            os.waitpid(crashed_pid, os.WNOHANG)
        after = decoder.decode(valid)
        assert decoder.pid not in (None, crashed_pid)
    assert (after.width, after.height) == (32, 40) and after == before
