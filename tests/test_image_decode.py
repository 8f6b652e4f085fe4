"""Image decoding: formats, resolution from the file or the caller, clear errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gateway.extraction.decode import ImageDecodeError, load_image


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
