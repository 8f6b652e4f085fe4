"""Fuzzing image decoding (hypothesis): garbled PNG/TIFF/BMP/WSQ bytes and random bytes.

``load_image`` documents one error for unreadable input, ImageDecodeError. Fuzzing found
three ways out of it, in gateway/extraction/decode.py and the ``wsq`` plugin under it,
and a corrupt WSQ file that makes the ``wsq`` C decoder free memory twice, killing the
process (reported to their owners). The regression tests below pin them and are strict
xfails, so they turn red (XPASS) the day the fix lands -- then delete KNOWN_ESCAPES and
the xfail marks. Until then the fuzz test fails on any *other* escape. The long run
(native crashes need ``--isolate``) is
``python -m benchmarks.fuzz --target image --examples 100000 --isolate``.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zlib

import numpy as np
import pytest
import wsq  # noqa: F401  (registers WSQ with Pillow)
from PIL import Image

from benchmarks import fuzz
from gateway.extraction.decode import ImageDecodeError, load_image

# Exception types that escape load_image today (see the regression tests).
KNOWN_ESCAPES = {"UnboundLocalError", "Exception", "DecompressionBombError"}
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
    escapes = {c.signature.split(" at ")[0] for c in result.crashes.values()}
    assert escapes <= KNOWN_ESCAPES, result.as_dict()["crash_details"]


@pytest.mark.xfail(strict=True, raises=UnboundLocalError,
                   reason="wsq plugin: UnboundLocalError on a truncated WSQ file escapes "
                          "load_image (reported)")
def test_a_truncated_wsq_header_is_a_decode_error() -> None:
    with pytest.raises(ImageDecodeError):
        load_image(b"\xff\xa0\xff")


@pytest.mark.xfail(strict=True, raises=Exception,
                   reason="wsq plugin raises a bare Exception('WSQ Error: -39') that "
                          "escapes load_image (reported)")
def test_truncated_wsq_data_is_a_decode_error() -> None:
    data = _wsq()
    with pytest.raises(ImageDecodeError):
        load_image(data[: len(data) - 100])


@pytest.mark.xfail(strict=True, raises=Image.DecompressionBombError,
                   reason="Pillow's DecompressionBombError escapes load_image; a header "
                          "declaring a huge image should be refused before decoding "
                          "(reported)")
def test_an_absurd_declared_size_is_a_decode_error() -> None:
    with pytest.raises(ImageDecodeError):
        load_image(BMP_BOMB)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the wsq C decoder frees memory twice on a corrupt file and the "
                          "process aborts; decode WSQ in a child process or fix the decoder "
                          "(reported)")
def test_a_corrupt_wsq_file_does_not_kill_the_process(tmp_path) -> None:
    path = tmp_path / "corrupt.wsq"
    path.write_bytes(WSQ_DOUBLE_FREE)
    # In a child process: the bug aborts whatever process decodes the file.
    code = ("import sys\nfrom gateway.extraction.decode import ImageDecodeError, load_image\n"
            f"try:\n    load_image({str(path)!r})\nexcept ImageDecodeError:\n"
            "    print('refused')\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0 and "refused" in child.stdout, child.stderr[-300:]
