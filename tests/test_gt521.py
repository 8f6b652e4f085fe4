"""The GT-521F protocol, and the driver against the emulator over a real pty and TCP.

The codec is checked against the byte sequences of the reference notes (section 2.1);
every injectable fault is shown to raise the right DeviceError subclass with its officer
message, and the next capture (same driver, or a reopened one after an unplug) to succeed.
"""

from __future__ import annotations

import os
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
)
from gateway.devices.gt521 import Gt521Device
from gateway.devices.gt521_protocol import (
    IMAGE_BYTES,
    Command,
    ErrorCode,
    FrameError,
    OpenInfo,
    Packet,
    PacketParser,
    Reply,
    encode_data,
    encode_packet,
    officer_message,
)
from gateway.devices.registry import open_device
from gateway.emulators.gt521 import STRAY_BYTES, Fault, Gt521Emulator
from gateway.emulators.serial_transports import EmulatorServer, serve_pty, serve_socket
from gateway.emulators.zfm import fit_image

DATA_DIR = Path(os.environ.get("INK_DATA_DIR")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")


# -- the codec against the reference bytes ---------------------------------------------
@pytest.mark.parametrize(
    ("code", "parameter", "wire"),
    [
        (Command.OPEN, 1, "55 AA 01 00 01 00 00 00 01 00 02 01"),
        (Command.CMOS_LED, 1, "55 AA 01 00 01 00 00 00 12 00 13 01"),
        (Command.IS_PRESS_FINGER, 0, "55 AA 01 00 00 00 00 00 26 00 26 01"),
        (Command.CAPTURE_FINGER, 0, "55 AA 01 00 00 00 00 00 60 00 60 01"),
        (Command.GET_IMAGE, 0, "55 AA 01 00 00 00 00 00 62 00 62 01"),
        (Command.CHANGE_BAUDRATE, 115200, "55 AA 01 00 00 C2 01 00 04 00 C7 01"),
        (Reply.NACK, ErrorCode.FINGER_IS_NOT_PRESSED, "55 AA 01 00 12 10 00 00 31 00 53 01"),
    ],
)
def test_packets_match_the_reference_bytes(code: int, parameter: int, wire: str) -> None:
    assert encode_packet(code, parameter) == bytes.fromhex(wire)
    parser = PacketParser()
    parser.feed(bytes.fromhex(wire))
    packet = parser.next_packet()
    assert packet is not None and (packet.code, packet.parameter) == (code, parameter)


def test_parser_resynchronises_on_stray_bytes_and_false_headers() -> None:
    parser = PacketParser(frozenset({Reply.ACK, Reply.NACK}))
    ack = encode_packet(Reply.ACK, 7)
    stream = STRAY_BYTES + ack
    for byte in stream:  # one byte at a time, as a slow UART delivers them
        parser.feed(bytes([byte]))
        packet = parser.next_packet()
        if packet is not None:
            break
    assert packet is not None and packet.is_ack and packet.parameter == 7
    assert parser.bad_frames >= 1 and parser.skipped_bytes >= len(STRAY_BYTES)


def test_data_packet_checksum_is_verified() -> None:
    parser = PacketParser()
    frame = bytearray(encode_data(b"\x01\x02\x03"))
    assert frame == bytes.fromhex("5A A5 01 00 01 02 03") + (0x5A + 0xA5 + 1 + 6).to_bytes(2,
                                                                                        "little")
    parser.feed(b"\x00\x55" + bytes(frame))
    assert parser.next_data(3) == b"\x01\x02\x03"
    frame[-2] ^= 1
    parser.feed(bytes(frame))
    with pytest.raises(FrameError):
        parser.next_data(3)


def test_open_info_round_trip_and_messages() -> None:
    info = OpenInfo(0x01020304, 0x3FF0, bytes(range(16)))
    assert OpenInfo.from_bytes(info.to_bytes()) == info
    assert info.serial_text == bytes(range(16)).hex().upper()
    assert officer_message(ErrorCode.FINGER_IS_NOT_PRESSED).startswith("No finger detected")
    assert "0x1234" in officer_message(0x1234)


def test_emulator_answers_golden_frames_directly(images) -> None:
    emulator = Gt521Emulator(images)
    open_reply = emulator.feed(bytes.fromhex("55 AA 01 00 01 00 00 00 01 00 02 01"))
    assert open_reply[:12] == encode_packet(Reply.ACK, 0)
    assert open_reply[12:] == encode_data(emulator.info.to_bytes())
    # A command with a broken checksum gets no answer, as on the module.
    assert emulator.feed(bytes.fromhex("55 AA 01 00 01 00 00 00 12 00 13 02")) == b""
    # GetRawImage needs the LED; then it sends the 160 x 120 preview in one data packet.
    nack = emulator.feed(encode_packet(Command.GET_RAW_IMAGE))
    assert nack == encode_packet(Reply.NACK, ErrorCode.DEV_ERR)
    emulator.feed(encode_packet(Command.CMOS_LED, 1))
    raw = emulator.feed(encode_packet(Command.GET_RAW_IMAGE))
    parser = PacketParser()
    parser.feed(raw)
    assert parser.next_packet() == Packet(Reply.ACK, 0)
    preview = parser.next_data(160 * 120)
    assert preview is not None and len(preview) == 160 * 120


# -- the driver over real links ----------------------------------------------------------
@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(21)
    return [rng.integers(0, 256, (300, 300), dtype=np.uint8) for _ in range(3)]


def expected(image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return fit_image(image, 202, 258, scale)


@pytest.fixture(params=["pty", "socket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def served(images, transport) -> Iterator[tuple[Gt521Emulator, EmulatorServer]]:
    emulator = Gt521Emulator(images)
    server = serve_pty(emulator) if transport == "pty" else serve_socket(emulator)
    with server:
        yield emulator, server


def open_driver(server: EmulatorServer, **options: object) -> Gt521Device:
    settings: dict[str, object] = {"packet_timeout": 0.5, "poll_interval": 0.01}
    settings.update(options)
    return Gt521Device(server.url, **settings)  # type: ignore[arg-type]


def test_capture_over_a_real_link(served, images) -> None:
    emulator, server = served
    progress: list[tuple[int, int]] = []
    with open_device("gt521:" + server.url + "?model=GT-521F52") as device:
        assert isinstance(device, Device)
        first = device.capture(progress=lambda done, total: progress.append((done, total)))
        second = device.capture()
    assert first.image.dtype == np.uint8 and first.image.shape == (258, 202)
    assert np.array_equal(first.image, expected(images[0]))
    assert np.array_equal(second.image, expected(images[1]))
    assert first.ppi == 450.0 and first.upload_seconds > 0
    assert progress[-1] == (IMAGE_BYTES, IMAGE_BYTES) and len(progress) > 2
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    # Open(1) was answered, the link moved to 115200 and the LED went off after use.
    assert emulator.baud == 115200 and first.device.details["baud"] == 115200
    assert first.device.model == "GT-521F52" and first.device.kind == "gt521"
    assert first.device.serial_number == bytes(range(0x10, 0x20)).hex().upper()
    assert not emulator.led_on
    capture = [Command.CMOS_LED, Command.IS_PRESS_FINGER, Command.CAPTURE_FINGER,
               Command.GET_IMAGE, Command.CMOS_LED]
    assert emulator.commands == [Command.OPEN, Command.CHANGE_BAUDRATE, Command.OPEN,
                                 *capture, *capture]


def test_fast_baud_can_be_turned_off_or_refused(images) -> None:
    emulator = Gt521Emulator(images)
    with serve_pty(emulator) as server, open_device(f"gt521:{server.url}?fast=0") as device:
        assert device.info.details["baud"] == 9600
    assert emulator.baud == 9600
    stubborn = Gt521Emulator(images, allow_baud_change=False)
    with serve_pty(stubborn) as server, open_driver(server) as device:
        assert device.info.details["baud"] == 9600
        assert np.array_equal(device.capture().image, expected(images[0]))


def test_finds_a_module_left_at_115200_baud(images) -> None:
    # The pty emulator ignores a host at the wrong rate, as a real UART reads only
    # framing errors: 9600 gets silence, the fallback list then finds 115200.
    emulator = Gt521Emulator(images, baud=115200)
    with serve_pty(emulator) as server, open_driver(server, timeout=3.0) as device:
        assert device.info.details["baud"] == 115200
        assert device.capture().image.shape == (258, 202)


def test_bad_url_options_are_clear_errors() -> None:
    with pytest.raises(DeviceError, match="unknown option"):
        open_device("gt521:/dev/ttyUSB0?speed=fast")
    with pytest.raises(DeviceError, match="baud must be"):
        open_device("gt521:/dev/ttyUSB0?baud=1234")
    with pytest.raises(DeviceError, match="unknown GT-521F model"):
        open_device("gt521:/dev/ttyUSB0?model=R307")


# -- faults: the error, the officer message, and recovery ------------------------------
def test_no_finger(served, images) -> None:
    emulator, server = served
    with open_driver(server) as device:
        emulator.lift_finger()
        with pytest.raises(NoFinger) as failure:
            device.capture(timeout=0.2)
        assert failure.value.officer_message.startswith("No finger detected")
        assert failure.value.retryable and not emulator.led_on
        emulator.place_finger()
        assert np.array_equal(device.capture().image, expected(images[0]))


def test_no_finger_fault_is_outwaited_by_polling(images) -> None:
    emulator = Gt521Emulator(images, no_finger_polls=5, faults=[Fault.NO_FINGER])
    with serve_socket(emulator) as server, open_driver(server) as device:
        assert np.array_equal(device.capture(timeout=10).image, expected(images[0]))
    assert emulator.commands.count(Command.IS_PRESS_FINGER) == 6


@pytest.mark.parametrize(
    ("fault", "error_type", "message_start", "next_image"),
    [
        # next_image: a failed upload used up the image the module had captured.
        (Fault.BAD_CHECKSUM, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TRUNCATED, ProtocolError, "The scanner sent garbled data", 1),
        (Fault.TIMEOUT, DeviceTimeout, "The scanner did not answer in time", 0),
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
        emulator.inject(Fault.STRAY_BYTES, Fault.STRAY_BYTES, Fault.STRAY_BYTES)
        scan = device.capture()
        assert emulator.pending_faults == []
        assert device._parser.skipped_bytes > 0 and device._parser.bad_frames > 0
    assert np.array_equal(scan.image, expected(images[0]))


def test_unplug_mid_upload_then_reopen(images, transport) -> None:
    emulator = Gt521Emulator(images)
    server = serve_pty(emulator) if transport == "pty" else serve_socket(emulator)
    with server:
        device = open_driver(server)
        old_url = server.url
        emulator.inject(Fault.UNPLUG)
        with pytest.raises(DeviceDisconnected) as failure:
            device.capture()
        assert failure.value.officer_message.startswith("The scanner was disconnected")
        if transport == "socket":
            scan = device.capture()  # same URL: the same driver reconnects by itself
        else:
            assert server.url != old_url  # a replugged adapter may get a new name
            device.close()
            device = open_driver(server)
            scan = device.capture()
        device.close()
    assert np.array_equal(scan.image, expected(images[1]))


def test_silent_module_times_out_on_open(images) -> None:
    emulator = Gt521Emulator(images, faults=[Fault.TIMEOUT] * 3)
    with serve_socket(emulator) as server, pytest.raises(DeviceTimeout) as failure:
        open_device(f"gt521:{server.url}", timeout=1.0)
    assert "did not answer" in failure.value.officer_message


# -- fidelity: a real print survives the trip --------------------------------------------
@pytest.mark.realdata
def test_serves_real_prints_from_a_folder() -> None:
    folder = DATA_DIR / "fvc2000" / "DB1_B"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    from PIL import Image

    first = sorted(folder.glob("*.tif"))[0]
    emulator = Gt521Emulator(folder, source_ppi=500.0)
    with serve_pty(emulator) as server, open_driver(server) as device:
        scan = device.capture()
    reference = np.asarray(Image.open(first).convert("L"))
    # 8 bits on the wire: the pixels arrive exactly as the module scaled them.
    assert np.array_equal(scan.image, expected(reference, 450.0 / 500.0))
    assert (scan.image[80:180, 50:150] < 128).mean() > 0.2


# -- discovery: the handshake names the sensor behind a USB-UART bridge ------------------
def test_discovery_confirms_a_gt521_behind_a_bridge(images) -> None:
    from types import SimpleNamespace

    from gateway.devices.discovery import list_devices, probe_gt521, probe_serial_sensor

    emulator = Gt521Emulator(images)
    with serve_pty(emulator) as server:
        port = SimpleNamespace(device=server.url, vid=0x1A86, pid=0x7523,
                               description="USB Serial", serial_number=None)
        [found] = list_devices(ports=[port], usb_devices=[],
                               prober=lambda p: probe_serial_sensor(p, timeout=0.3))
        assert (found.bridge, found.sensor) == ("WCH CH340", "GT-521F")
        assert found.url == f"gt521:{server.url}"
        with open_device(found.url) as device:
            assert device.capture().image.shape == (258, 202)
    assert emulator.commands[0] == Command.OPEN
    assert probe_gt521("/dev/nonexistent-port", timeout=0.2) is None
