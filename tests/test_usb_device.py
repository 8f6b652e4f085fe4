"""The U.are.U 4000B pyusb driver against the emulated device behind an injected IBackend.

pyusb itself (descriptor parsing, interface claiming, endpoint dispatch) runs for real;
only libusb is replaced. The exact transfer sequence is asserted; every fault is shown to
raise the right DeviceError subclass with its officer message, and the next capture to
succeed (same driver, which finds the replugged scanner again).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import usb.core

from gateway.devices.base import (
    Device,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    NoFinger,
    ProtocolError,
)
from gateway.devices.usb_uru4000 import FRAME_BYTES, Uru4000Device, open_usb
from gateway.emulators.usb_uru4000 import (
    EmulatedUsbBackend,
    Fault,
    Transfer,
    Uru4000Emulator,
)
from gateway.emulators.zfm import fit_image

DATA_DIR = Path(os.environ.get("INK_DATA_DIR")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(40)
    return [rng.integers(0, 256, (300, 400), dtype=np.uint8) for _ in range(3)]


def expected(image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return fit_image(image, 384, 289, scale)


def open_emulated(emulator: Uru4000Emulator, target: str = "uru4000b") -> Uru4000Device:
    device = open_usb(target, backend=EmulatedUsbBackend(emulator))
    device.poll_slice = 0.05
    return device


def summary(log: list[Transfer]) -> list[tuple[str, int, int, int]]:
    return [(t.kind, t.endpoint, t.value, t.length) for t in log]


def test_pyusb_finds_the_emulated_device_by_vid_pid(images) -> None:
    backend = EmulatedUsbBackend(Uru4000Emulator(images))
    found = usb.core.find(idVendor=0x05BA, idProduct=0x000A, backend=backend)
    assert found is not None and (found.bus, found.address) == (1, 5)
    assert [ep.bEndpointAddress for ep in found[0][(0, 0)]] == [
        0x81, 0x82]
    assert usb.core.find(idVendor=0x05BA, idProduct=0x0007, backend=backend) is None


def test_exact_transfer_sequence(images) -> None:
    emulator = Uru4000Emulator(images)
    progress: list[tuple[int, int]] = []
    with open_emulated(emulator, "uru4000b?bus=1&address=5") as device:
        assert isinstance(device, Device)
        scan = device.capture(progress=lambda done, total: progress.append((done, total)))
    assert np.array_equal(scan.image, expected(images[0]))
    assert scan.image.shape == (289, 384) and scan.ppi == 512.0
    assert scan.device.kind == "usb" and scan.device.details["vid_pid"] == "05ba:000a"
    assert scan.device.url == "usb:uru4000b?bus=1&address=5"
    chunks = [16384] * 6 + [0x1B340 - 6 * 16384]  # asks for up to 0x1B340 in all
    assert summary(emulator.log) == [
        ("set_configuration", 0, 1, 0),
        ("claim_interface", 0, 0, 0),
        ("ctrl_in", 0x04, 0xF0, 16),  # device info
        ("ctrl_in", 0x04, 0x07, 1),  # HWSTAT: bit 7 set, the sensor is powered down
        ("ctrl_out", 0x04, 0x07, 1),  # clear bit 7: power up
        ("intr_in", 0x81, 0, 64),  # 0x56AA scan power on
        ("ctrl_out", 0x04, 0x4E, 1),  # MODE await finger on
        ("intr_in", 0x81, 0, 64),  # 0x0101 finger on
        ("ctrl_out", 0x04, 0x4E, 1),  # MODE capture
        *[("bulk_in", 0x82, 0, n) for n in chunks],  # the 7th read ends short
        ("ctrl_out", 0x04, 0x4E, 1),  # MODE await finger off
        ("ctrl_out", 0x04, 0x4E, 1),  # close: MODE init
        ("ctrl_out", 0x04, 0x07, 1),  # close: power down
        ("release_interface", 0, 0, 0),
    ]
    writes = [t.data for t in emulator.log if t.kind == "ctrl_out"]
    assert writes == [b"\x04", b"\x10", b"\x20", b"\x12", b"\x00", b"\x80"]
    events = [t.data for t in emulator.log if t.kind == "intr_in"]
    assert events == [b"\x56\xaa", b"\x01\x01"]
    assert progress[-1] == (FRAME_BYTES, FRAME_BYTES) and len(progress) == 7


def test_consecutive_captures_skip_the_finger_off_event(images) -> None:
    emulator = Uru4000Emulator(images)
    with open_emulated(emulator) as device:
        scans = [device.capture() for _ in range(3)]
        assert device.stray_events == 2  # the finger-off events between the captures
    for scan, image in zip(scans, images, strict=True):
        assert np.array_equal(scan.image, expected(image))


def test_missing_scanner_and_bad_urls(images) -> None:
    emulator = Uru4000Emulator(images)
    with pytest.raises(DeviceDisconnected) as failure:
        open_usb("uru4000b?address=9", backend=EmulatedUsbBackend(emulator))
    assert "not connected" in failure.value.officer_message
    with pytest.raises(DeviceError, match="unknown USB scanner model") as failure:
        open_usb("vcom5s", backend=EmulatedUsbBackend(emulator))
    assert not failure.value.retryable
    with pytest.raises(DeviceError, match="unknown option"):
        open_usb("uru4000b?speed=2", backend=EmulatedUsbBackend(emulator))


# -- faults: the error, the officer message, and recovery ------------------------------
def test_no_finger_then_a_finger_placed_while_waiting(images) -> None:
    emulator = Uru4000Emulator(images)
    with open_emulated(emulator) as device:
        emulator.lift_finger()
        with pytest.raises(NoFinger) as failure:
            device.capture(timeout=0.2)
        assert failure.value.officer_message.startswith("No finger detected")
        # The driver is blocked in an interrupt read when the finger arrives.
        timer = threading.Timer(0.1, emulator.place_finger)
        timer.start()
        scan = device.capture(timeout=5)
        timer.join()
    assert np.array_equal(scan.image, expected(images[0]))


@pytest.mark.parametrize(
    ("fault", "error_type", "message_start", "next_image"),
    [
        (Fault.NO_FINGER, NoFinger, "No finger detected", 0),
        (Fault.BAD_CHECKSUM, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TRUNCATED, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TIMEOUT, DeviceTimeout, "The scanner did not answer in time", 1),
    ],
)
def test_fault_then_recovery(images, fault, error_type, message_start, next_image) -> None:
    emulator = Uru4000Emulator(images)
    with open_emulated(emulator) as device:
        emulator.inject(fault)
        with pytest.raises(error_type) as failure:
            device.capture(timeout=0.3)
        assert failure.value.officer_message.startswith(message_start)
        assert failure.value.retryable
        assert emulator.pending_faults == []
        scan = device.capture()
    assert np.array_equal(scan.image, expected(images[next_image]))


def test_stray_interrupts_are_skipped(images) -> None:
    emulator = Uru4000Emulator(images, faults=[Fault.STRAY_BYTES])
    with open_emulated(emulator) as device:
        scan = device.capture()
        assert device.stray_events == 2
    assert np.array_equal(scan.image, expected(images[0]))


def test_unplug_mid_frame_then_replug(images) -> None:
    emulator = Uru4000Emulator(images)
    device = open_emulated(emulator)
    emulator.inject(Fault.UNPLUG)
    with pytest.raises(DeviceDisconnected) as failure:
        device.capture()
    assert failure.value.officer_message.startswith("The scanner was disconnected")
    with pytest.raises(DeviceDisconnected):
        device.capture()  # still unplugged: a clear error, not a hang
    emulator.replug()
    scan = device.capture()  # same driver: it finds the scanner at its new address
    assert device.info.url == "usb:uru4000b?bus=1&address=6"
    device.close()
    assert np.array_equal(scan.image, expected(images[1]))


def test_no_libusb_is_a_clear_error(monkeypatch) -> None:
    def no_backend(**_: object) -> None:
        raise usb.core.NoBackendError("No backend available")

    monkeypatch.setattr(usb.core, "find", no_backend)
    with pytest.raises(DeviceError) as failure:
        open_usb("uru4000b")
    assert "libusb" in failure.value.officer_message and not failure.value.retryable


# -- fidelity: a real print survives the trip --------------------------------------------
@pytest.mark.realdata
def test_serves_real_uareu_prints() -> None:
    folder = DATA_DIR / "neurotechnology" / "uareu"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    from PIL import Image

    first = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".tif")[0]
    emulator = Uru4000Emulator(folder, source_ppi=500.0)
    with open_emulated(emulator) as device:
        scan = device.capture()
    reference = np.asarray(Image.open(first).convert("L"))
    assert np.array_equal(scan.image, expected(reference, 512.0 / 500.0))
    assert (scan.image[100:200, 140:240] < 128).mean() > 0.2
