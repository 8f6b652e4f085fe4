"""The ZFM driver against the emulator over a real pty and a real TCP socket.

Every injectable fault is shown to raise the right DeviceError subclass with its officer
message, and the next capture (on the same driver, or a reopened one after an unplug)
to succeed. An independent client (pyfingerprint, test-only, optional) downloads an image
from the emulator to check the emulator's fidelity.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.devices.base import (
    Device,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    NoFinger,
    ProtocolError,
    Scan,
)
from gateway.devices.registry import open_device, schemes, split_device_url
from gateway.devices.zfm import ZfmDevice
from gateway.emulators.serial_transports import (
    EmulatorServer,
    run_emulator,
    serve_pty,
    serve_socket,
)
from gateway.emulators.zfm import Fault, ZfmEmulator, fit_image

DATA_DIR = Path(os.environ.get("INK_DATA_DIR")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")
R307_BYTES = 256 * 288 // 2


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (300, 300), dtype=np.uint8) for _ in range(3)]


def expected(image: np.ndarray, model: str = "R307") -> np.ndarray:
    width, height = (192, 192) if model == "R503" else (256, 288)
    return (fit_image(image, width, height) >> 4) * 17


@pytest.fixture(params=["pty", "socket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def served(images: list[np.ndarray], transport: str
           ) -> Iterator[tuple[ZfmEmulator, EmulatorServer]]:
    emulator = ZfmEmulator(images)
    server = serve_pty(emulator) if transport == "pty" else serve_socket(emulator)
    with server:
        yield emulator, server


def open_driver(server: EmulatorServer, **options: object) -> ZfmDevice:
    settings: dict[str, object] = {"packet_timeout": 1.0, "poll_interval": 0.01}
    settings.update(options)
    return ZfmDevice(server.url, **settings)  # type: ignore[arg-type]


def test_capture_over_a_real_link(served, images) -> None:
    emulator, server = served
    progress: list[tuple[int, int]] = []
    with open_device("zfm:" + server.url) as device:
        assert isinstance(device, Device)
        first = device.capture(progress=lambda done, total: progress.append((done, total)))
        second = device.capture()
    assert isinstance(first, Scan)
    assert first.image.dtype == np.uint8 and first.image.shape == (288, 256)
    assert np.array_equal(first.image, expected(images[0]))
    assert np.array_equal(second.image, expected(images[1]))
    assert first.ppi == 500.0 and first.upload_seconds > 0
    assert progress[-1] == (R307_BYTES, R307_BYTES) and len(progress) == R307_BYTES // 128
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    # The handshake moved the link to 115200 baud and reopened the port.
    assert emulator.baud == 115200
    assert first.device.details["baud"] == 115200
    assert first.device.details["packet_size"] == 128
    assert first.device.kind == "zfm" and first.device.model == "R30x"


def test_fast_baud_can_be_turned_off(served) -> None:
    emulator, server = served
    with open_device(f"zfm:{server.url}?fast=0") as device:
        assert device.info.details["baud"] == 57600
    assert emulator.baud == 57600


def test_finds_a_module_left_at_115200_baud(images) -> None:
    # SetSysPara persists in the module: the next session opens at 57600 and gets
    # silence (the pty emulator ignores a host at the wrong rate), then tries 115200.
    emulator = ZfmEmulator(images, baud=115200)
    with serve_pty(emulator) as server, open_driver(server, baud=57600) as device:
        assert device.info.details["baud"] == 115200
        assert device.capture().image.shape == (288, 256)


def test_pty_module_ignores_a_host_at_the_wrong_baud(images) -> None:
    emulator = ZfmEmulator(images, baud=115200)
    with serve_pty(emulator) as server, pytest.raises(DeviceTimeout):
        open_device(f"zfm:{server.url}?baud=57600", timeout=0.5)
    assert emulator.commands == 0


def test_r503_reports_its_geometry_and_serial(images) -> None:
    emulator = ZfmEmulator(images, model="R503", serial_number="SN000042")
    with serve_socket(emulator) as server, open_driver(server) as device:
        scan = device.capture()
    assert scan.image.shape == (192, 192) and scan.ppi == 508.0
    assert np.array_equal(scan.image, expected(images[0], "R503"))
    assert (scan.device.model, scan.device.serial_number) == ("R503", "SN000042")


def test_model_hint_sets_geometry_without_prodinfo(images) -> None:
    emulator = ZfmEmulator(images, model="AS608")
    with serve_socket(emulator) as server, open_device(f"{server.url}?model=AS608") as device:
        assert device.info.model == "AS608"
        assert device.capture().image.shape == (288, 256)


@pytest.mark.parametrize("packet_size", [32, 64, 256])
def test_every_packet_size(images, packet_size: int) -> None:
    emulator = ZfmEmulator(images, packet_size=packet_size)
    with serve_socket(emulator) as server, open_driver(server) as device:
        assert device.info.details["packet_size"] == packet_size
        assert np.array_equal(device.capture().image, expected(images[0]))


def test_address_and_password_from_the_url(images) -> None:
    emulator = ZfmEmulator(images, address=0xC0FFEE01, password=0x1234)
    with serve_socket(emulator) as server:
        url = f"zfm:{server.url}?address=C0FFEE01&password=0x1234"
        with open_device(url) as device:
            assert device.capture().image.shape == (288, 256)
            assert "C0FFEE01" in device.info.url and "password" not in device.info.url
        with pytest.raises(DeviceError) as failure:
            open_device(f"zfm:{server.url}?address=C0FFEE01&password=1")
    assert not failure.value.retryable
    assert "password" in failure.value.officer_message


# -- faults: the error, the officer message, and recovery ------------------------------
def test_no_finger(served, images) -> None:
    emulator, server = served
    with open_driver(server) as device:
        emulator.lift_finger()
        with pytest.raises(NoFinger) as failure:
            device.capture(timeout=0.2)
        assert failure.value.officer_message.startswith("No finger detected")
        assert failure.value.retryable
        emulator.place_finger()
        assert np.array_equal(device.capture().image, expected(images[0]))


def test_no_finger_fault_is_outwaited_by_polling(images) -> None:
    emulator = ZfmEmulator(images, no_finger_polls=5, faults=[Fault.NO_FINGER])
    with serve_socket(emulator) as server, open_driver(server) as device:
        assert np.array_equal(device.capture(timeout=10).image, expected(images[0]))
    assert emulator.commands >= 5 + 2


@pytest.mark.parametrize(
    ("fault", "error_type", "message_start", "next_image"),
    [
        # next_image: the failed attempt used up image 0 when the module took the print.
        (Fault.BAD_CHECKSUM, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TRUNCATED, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.WRONG_ADDRESS, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TIMEOUT, DeviceTimeout, "The scanner did not answer in time", 0),
        (Fault.STALL, DeviceTimeout, "The scanner stopped sending the image", 1),
        (Fault.CAPTURE_FAILED, DeviceError, "The scan did not work", 0),
    ],
)
def test_fault_then_recovery(served, images, fault, error_type, message_start,
                             next_image) -> None:
    emulator, server = served
    with open_driver(server) as device:
        emulator.inject(fault)
        with pytest.raises(error_type) as failure:
            device.capture()
        assert failure.value.officer_message.startswith(message_start)
        assert failure.value.retryable
        assert emulator.pending_faults == []
        scan = device.capture()
    assert np.array_equal(scan.image, expected(images[next_image]))


def test_stray_bytes_are_skipped(served, images) -> None:
    emulator, server = served
    with open_driver(server) as device:
        emulator.inject(Fault.STRAY_BYTES, Fault.STRAY_BYTES)
        scan = device.capture()
        assert emulator.pending_faults == []
        assert device._parser.skipped_bytes > 0
    assert np.array_equal(scan.image, expected(images[0]))


def test_unplug_mid_upload_then_reopen(images, transport) -> None:
    emulator = ZfmEmulator(images)
    server = serve_pty(emulator) if transport == "pty" else serve_socket(emulator)
    with server:
        device = open_driver(server)
        old_url = server.url
        emulator.inject(Fault.UNPLUG)
        with pytest.raises(DeviceDisconnected) as failure:
            device.capture()
        assert failure.value.officer_message.startswith("The scanner was disconnected")
        if transport == "socket":
            # Same URL after the replug: the same driver reconnects by itself.
            scan = device.capture()
        else:
            # A replugged USB adapter may come back under a new name.
            assert server.url != old_url
            device.close()
            device = open_driver(server)
            scan = device.capture()
        device.close()
    assert np.array_equal(scan.image, expected(images[1]))


def test_silent_module_times_out_on_open(images) -> None:
    emulator = ZfmEmulator(images, faults=[Fault.TIMEOUT] * 3)
    with serve_socket(emulator) as server, pytest.raises(DeviceTimeout) as failure:
        open_device(f"zfm:{server.url}", timeout=1.0)
    assert "did not answer" in failure.value.officer_message


def test_nothing_listening_is_a_clear_disconnect() -> None:
    with serve_socket(ZfmEmulator([np.zeros((288, 256), np.uint8)])) as server:
        url = server.url
    with pytest.raises(DeviceDisconnected) as failure:
        open_device(url)
    assert "not connected" in failure.value.officer_message


# -- the device URL ------------------------------------------------------------------------
def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(DeviceError) as failure:
        open_device("bluetooth:AA:BB")
    assert "zfm:" in str(failure.value) and not failure.value.retryable
    assert "zfm" in schemes()


def test_bare_paths_and_serial_urls_mean_zfm() -> None:
    assert split_device_url("/dev/ttyUSB0") == ("zfm", "/dev/ttyUSB0")
    assert split_device_url("socket://10.0.0.2:7000") == ("zfm", "socket://10.0.0.2:7000")
    assert split_device_url("COM3") == ("zfm", "COM3")
    assert split_device_url("zfm:socket://h:1?baud=9600") == ("zfm", "socket://h:1?baud=9600")


def test_bad_option_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="unknown option"):
        open_device("zfm:/dev/ttyUSB0?speed=fast")
    with pytest.raises(DeviceError, match="unknown ZFM model"):
        open_device("zfm:/dev/ttyUSB0?model=XYZ")


# -- the emulator CLI entry point ----------------------------------------------------------
def test_run_emulator_prints_a_url_that_works(images) -> None:
    lines: list[str] = []
    stop = threading.Event()
    ready = threading.Event()

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("Device URL"):
            ready.set()

    thread = threading.Thread(target=run_emulator, args=(images,),
                              kwargs={"socket_address": "127.0.0.1:0", "realtime": False,
                                      "finger_after_polls": 1, "out": out, "stop": stop})
    thread.start()
    try:
        assert ready.wait(5)
        url = next(line for line in lines if line.startswith("Device URL")).split(": ", 1)[1]
        with open_device(url) as device:
            assert device.capture().image.shape == (288, 256)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


# -- fidelity: an independent client, and real prints --------------------------------------
def test_pyfingerprint_downloads_our_image(images, tmp_path: Path) -> None:
    pyfingerprint = pytest.importorskip("pyfingerprint.pyfingerprint")
    from PIL import Image

    emulator = ZfmEmulator(images)
    with serve_pty(emulator) as server:
        client = pyfingerprint.PyFingerprint(server.url, 57600, 0xFFFFFFFF, 0x00000000)
        assert client.verifyPassword()
        assert client.getSystemParameters()[5:] == (2, 6)
        assert client.readImage()
        target = tmp_path / "download.bmp"
        client.downloadImage(str(target))
        del client
    assert np.array_equal(np.asarray(Image.open(target)), expected(images[0]))


@pytest.mark.realdata
def test_serves_real_prints_from_a_folder() -> None:
    folder = DATA_DIR / "fvc2000" / "DB1_B"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    from PIL import Image

    first = sorted(folder.glob("*.tif"))[0]
    emulator = ZfmEmulator(folder, source_ppi=500.0)
    with serve_socket(emulator) as server, open_driver(server) as device:
        scan = device.capture()
    reference = np.asarray(Image.open(first).convert("L"))
    assert np.array_equal(scan.image, expected(reference))
    # A real print, not padding: plenty of dark ridge pixels in the centre.
    assert (scan.image[100:200, 80:180] < 128).mean() > 0.2
