"""File import as a device: a folder inbox or a list of PNG/TIFF/BMP/WSQ/ANSI-NIST files.

Files are written to a temporary folder (never to the repository), served one per capture
in name order, with resolution and finger position carried through; exhaustion, a bad
file and a missing path give clear errors after which the next capture still works.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import wsq  # noqa: F401  (registers the WSQ encoder with Pillow, for d.wsq below)
from PIL import Image

from gateway.devices.ansi_nist import FingerImage, write_fingerprints
from gateway.devices.base import Device, DeviceError, NoFinger
from gateway.devices.files import FileDevice, NoMoreImages, UnreadableFile
from gateway.devices.registry import open_device

DATA_DIR = Path(os.environ.get("INK_DATA_DIR")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def ridges(height: int = 300, width: int = 260, period: float = 9.0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    wave = np.sin(2 * np.pi * (x * 0.8 + y * 0.6) / period)
    return (127.5 + 100 * wave).astype(np.uint8)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_folder_serves_every_format_in_name_order(inbox: Path) -> None:
    images = [ridges(period=p) for p in (8.0, 9.0, 10.0, 11.0)]
    Image.fromarray(images[0]).save(inbox / "a.png", dpi=(1000, 1000))
    Image.fromarray(images[1]).save(inbox / "b.tif")
    Image.fromarray(images[2]).save(inbox / "c.bmp")
    Image.fromarray(images[3]).save(inbox / "d.wsq")
    (inbox / "e.an2").write_bytes(write_fingerprints(
        [FingerImage(images[0], 500.0, 2), FingerImage(images[1], 500.0, 7)]))
    (inbox / "notes.txt").write_text("not a print")
    progress: list[tuple[int, int]] = []
    with open_device(f"file:{inbox}") as device:
        assert isinstance(device, Device)
        scans = [device.capture(timeout=0, progress=lambda d, t: progress.append((d, t)))
                 for _ in range(6)]
        with pytest.raises(NoMoreImages) as failure:
            device.capture(timeout=0)
    assert isinstance(failure.value, NoFinger) and failure.value.retryable
    assert "No new fingerprint image" in failure.value.officer_message
    names = [s.device.details["file"] for s in scans]
    assert names == ["a.png", "b.tif", "c.bmp", "d.wsq", "e.an2", "e.an2"]
    assert np.array_equal(scans[0].image, images[0]) and scans[0].ppi == 1000.0
    assert np.array_equal(scans[1].image, images[1]) and scans[1].ppi == 500.0
    assert scans[1].device.details["ppi_source"] == "default"
    assert np.array_equal(scans[2].image, images[2])
    assert np.corrcoef(scans[3].image.ravel(), images[3].ravel())[0, 1] > 0.95  # lossy WSQ
    assert [s.device.details["finger_position"] for s in scans[4:]] == [2, 7]
    assert np.array_equal(scans[5].image, images[1])
    assert all(s.device.kind == "file" for s in scans) and len(progress) == 5


def test_a_file_arriving_while_waiting_is_served(inbox: Path) -> None:
    device = FileDevice(inbox, poll_interval=0.01)
    with pytest.raises(NoMoreImages):
        device.capture(timeout=0.05)
    Image.fromarray(ridges()).save(inbox / "late.png")
    assert device.capture(timeout=1).device.details["file"] == "late.png"


def test_bad_file_is_reported_then_skipped(inbox: Path) -> None:
    (inbox / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    (inbox / "2.an2").write_bytes(b"1.001:99\x1dgarbage")
    Image.fromarray(ridges()).save(inbox / "3.png")
    device = FileDevice(inbox)
    for _ in range(2):
        with pytest.raises(UnreadableFile) as failure:
            device.capture(timeout=0)
        assert failure.value.retryable
        assert "not a readable fingerprint image" in failure.value.officer_message
    assert device.capture(timeout=0).device.details["file"] == "3.png"


def test_file_list_and_single_file(tmp_path: Path) -> None:
    first, second = tmp_path / "x.png", tmp_path / "y.png"
    Image.fromarray(ridges(period=8.0)).save(first)
    Image.fromarray(ridges(period=12.0)).save(second)
    device = FileDevice([second, first])
    assert [device.capture().device.details["file"] for _ in range(2)] == ["y.png", "x.png"]
    with pytest.raises(NoMoreImages) as failure:
        device.capture()
    assert not failure.value.retryable and "All imported" in failure.value.officer_message
    with open_device(f"file:{first}") as single:
        assert np.array_equal(single.capture().image, ridges(period=8.0))


def test_delete_removes_each_file_once_read(inbox: Path) -> None:
    Image.fromarray(ridges()).save(inbox / "probe.png")
    with open_device(f"file:{inbox}?delete=1") as device:
        assert device.capture(timeout=0).image.shape == (300, 260)
    assert list(inbox.iterdir()) == []


def test_bad_paths_and_options(tmp_path: Path) -> None:
    with pytest.raises(DeviceError) as failure:
        open_device(f"file:{tmp_path / 'missing'}")
    assert "does not exist" in failure.value.officer_message and not failure.value.retryable
    with pytest.raises(DeviceError, match="delete"):
        open_device(f"file:{tmp_path}?remove=1")


@pytest.mark.realdata
def test_real_print_through_tiff_and_ansi_nist(tmp_path: Path) -> None:
    folder = DATA_DIR / "neurotechnology" / "crossmatch"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    source = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".tif")[0]
    reference = np.asarray(Image.open(source).convert("L"))
    # Written to pytest's temporary folder only, never into the repository.
    (tmp_path / "1.eft").write_bytes(write_fingerprints(
        [FingerImage(reference, 500.0, 2, compression="WSQ20")], record_type=4))
    device = FileDevice([source, tmp_path / "1.eft"])
    direct, wrapped = device.capture(), device.capture()
    assert np.array_equal(direct.image, reference) and direct.ppi == 500.0
    assert wrapped.device.details["finger_position"] == 2 and wrapped.ppi == 500.0
    assert np.corrcoef(wrapped.image.ravel(), reference.ravel())[0, 1] > 0.97
