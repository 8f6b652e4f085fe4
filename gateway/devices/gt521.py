"""Driver for GT-521F32 / GT-521F52 fingerprint modules on a serial link.

Opens the port with ``serial.serial_for_url`` (a device path, a pty, ``socket://`` ...),
sends Open(1) to learn the firmware and serial number, optionally moves the link from the
module's 9600 baud to 115200 (ChangeBaudrate, then reopen), and captures with CmosLed on,
IsPressFinger polling, CaptureFinger and GetImage: one 52 116-byte data packet that is
read with a per-chunk inactivity deadline and an overall one sized to the baud rate, with
progress reported as it arrives. Every failure becomes a
:class:`~gateway.devices.base.DeviceError` with a message for the officer, and the link
is cleaned up so that the next capture can succeed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

import numpy as np
import serial

from gateway.devices.base import (
    Device,
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    NoFinger,
    ProtocolError,
    Scan,
)
from gateway.devices.gt521_protocol import (
    BAUD_RATES,
    DATA_OVERHEAD,
    DEFAULT_BAUD,
    DEFAULT_MODEL,
    FAST_BAUD,
    IMAGE_BYTES,
    IMAGE_HEIGHT,
    IMAGE_PPI,
    IMAGE_WIDTH,
    OPEN_INFO_BYTES,
    Command,
    ErrorCode,
    FrameError,
    OpenInfo,
    Packet,
    PacketParser,
    Reply,
    encode_packet,
    error_text,
    model_spec,
    officer_message,
)
from gateway.devices.serial_port import handshake_at_some_baud, open_serial

# Rates tried, in order, when the module does not answer at the one asked for: a host
# that died after ChangeBaudrate leaves the module at 115200 until its power is cycled.
_FALLBACK_BAUDS = (9600, 115200, 57600, 38400, 19200)
# Reads block at most this long, so deadlines are checked often.
_READ_SLICE = 0.05
# Data packets are read in chunks this large, so progress moves as bytes arrive.
_DATA_CHUNK = 1024
# Codes after which the same request cannot succeed until a person changes something.
_CONFIGURATION_CODES = frozenset({
    ErrorCode.INVALID_BAUDRATE, ErrorCode.IS_NOT_SUPPORTED, ErrorCode.INVALID_PARAM,
    ErrorCode.DEV_ERR,
})
_RESPONSE_CODES = frozenset({Reply.ACK, Reply.NACK})

SerialFactory = Callable[..., serial.SerialBase]


def _refusal(code: int, command: str) -> DeviceError:
    """The DeviceError for a module that NACKed ``command`` with ``code``."""
    detail = f"{command}: module answered NACK 0x{code:04X} ({error_text(code)})"
    message = officer_message(code)
    if code == ErrorCode.FINGER_IS_NOT_PRESSED:
        return NoFinger(detail, officer_message=message)
    if code == ErrorCode.COMM_ERR:
        return ProtocolError(detail, officer_message=message)
    if code == ErrorCode.TIMEOUT:
        return DeviceTimeout(detail, officer_message=message)
    return DeviceError(detail, officer_message=message,
                       retryable=code not in _CONFIGURATION_CODES)


def _command_name(code: int) -> str:
    try:
        return Command(code).name
    except ValueError:
        return f"command 0x{code:02X}"


class Gt521Device(Device):
    """One GT-521F module behind a serial URL.

    ``port_url`` is anything ``serial.serial_for_url`` opens. ``model`` is a hint (the
    module cannot name itself); ``fast_baud`` moves the link to 115200 baud. ``timeout``
    bounds opening; ``packet_timeout`` each response and each silence inside a data
    packet; ``upload_timeout`` the image transfer (grown to twice the wire time at slow
    rates). ``poll_interval`` paces IsPressFinger while waiting for a finger.
    """

    kind = "gt521"

    def __init__(
        self,
        port_url: str,
        *,
        baud: int = DEFAULT_BAUD,
        model: str | None = None,
        fast_baud: bool = True,
        timeout: float = 5.0,
        packet_timeout: float = 1.0,
        upload_timeout: float = 15.0,
        poll_interval: float = 0.1,
        serial_factory: SerialFactory = serial.serial_for_url,
    ) -> None:
        self.port_url = port_url
        self.fast_baud = fast_baud
        self.open_timeout = timeout
        self.packet_timeout = packet_timeout
        self.upload_timeout = upload_timeout
        self.poll_interval = poll_interval
        self.spec = model_spec(model or DEFAULT_MODEL)
        self._serial_factory = serial_factory
        self._parser = PacketParser(_RESPONSE_CODES)
        self._port: serial.SerialBase | None = None
        self.baud = baud
        self.module_info: OpenInfo | None = None
        self.info = DeviceInfo(self.kind, self.spec.name, self._url())
        self._connect()

    # -- public ---------------------------------------------------------------------------
    def capture(
        self,
        *,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scan:
        """Wait up to ``timeout`` s for a finger (IsPressFinger), then upload its image."""
        if self._port is None:
            # The link dropped on an earlier capture: a replugged cable reappears at
            # the same path, so try once to reconnect rather than fail for ever.
            self._connect()
        self._expect_ack(Command.CMOS_LED, 1)
        try:
            self._wait_for_finger(timeout)
            self._expect_ack(Command.CAPTURE_FINGER, 1)
            started = time.monotonic()
            data = self._download(Command.GET_IMAGE, IMAGE_BYTES, progress)
            upload_seconds = time.monotonic() - started
        finally:
            self._led_off()
        image = np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH).copy()
        return Scan(image, IMAGE_PPI, self.info, upload_seconds)

    def close(self) -> None:
        """Close the serial port; safe to call more than once."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def command(self, code: int, parameter: int = 0) -> Packet:
        """Send one command and return the module's response (for tools and diagnostics)."""
        return self._command(code, parameter)

    # -- connection ---------------------------------------------------------------------
    def _url(self) -> str:
        options: dict[str, str] = {}
        if self.baud != DEFAULT_BAUD:
            options["baud"] = str(self.baud)
        if self.spec.name != DEFAULT_MODEL:
            options["model"] = self.spec.name
        suffix = ("&" if "?" in self.port_url else "?") + urlencode(options) if options else ""
        return f"gt521:{self.port_url}{suffix}"

    def _open_port(self, baud: int) -> None:
        self.close()
        self._port = open_serial(self._serial_factory, self.port_url, baud,
                                 read_timeout=_READ_SLICE, write_timeout=self.packet_timeout)
        self.baud = baud
        self._parser.clear()

    def _connect(self) -> None:
        try:
            handshake_at_some_baud(self.port_url, self.baud, _FALLBACK_BAUDS,
                                   self.open_timeout, self._open_port, self._open_module)
            if self.fast_baud and self.baud < FAST_BAUD:
                self._switch_to_fast_baud()
        except DeviceError:
            self.close()
            raise
        details: dict[str, object] = {"baud": self.baud, "width": IMAGE_WIDTH,
                                      "height": IMAGE_HEIGHT, "capacity": self.spec.capacity}
        serial_number = None
        if self.module_info is not None:
            details["firmware_version"] = f"{self.module_info.firmware_version:08X}"
            serial_number = self.module_info.serial_text
        self.info = DeviceInfo(self.kind, self.spec.name, self._url(), serial_number, details)

    def _open_module(self) -> None:
        self._expect_ack(Command.OPEN, 1)
        data = self._read_data(OPEN_INFO_BYTES, "OPEN", None)
        self.module_info = OpenInfo.from_bytes(data)

    def _switch_to_fast_baud(self) -> None:
        old_baud = self.baud
        reply = self._command(Command.CHANGE_BAUDRATE, FAST_BAUD)
        if not reply.is_ack:
            return  # the module keeps its rate; slower but working
        self._open_port(FAST_BAUD)
        try:
            self._open_module()
        except (DeviceTimeout, ProtocolError):
            # The module (or the USB-UART bridge) did not follow: go back.
            self._open_port(old_baud)
            self._open_module()

    # -- capture steps ----------------------------------------------------------------
    def _wait_for_finger(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._expect_ack(Command.IS_PRESS_FINGER).parameter == 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoFinger(f"no finger within {timeout:.1f} s")
            # Pacing only: correctness never depends on this wait.
            time.sleep(min(self.poll_interval, remaining))

    def _led_off(self) -> None:
        # Best effort: the LED only matters for power and for the person's eyes.
        if self._port is not None:
            with contextlib.suppress(DeviceError):
                self._command(Command.CMOS_LED, 0)

    def _download(self, code: int, length: int,
                  progress: Callable[[int, int], None] | None) -> bytes:
        self._expect_ack(code)
        return self._read_data(length, _command_name(code), progress)

    # -- framing over the port ----------------------------------------------------------
    def _link_lost(self, error: Exception) -> DeviceDisconnected:
        self.close()
        return DeviceDisconnected(f"serial link to {self.port_url} lost: {error}")

    def _require_port(self) -> serial.SerialBase:
        if self._port is None:
            raise DeviceDisconnected(f"{self.port_url} is closed")
        return self._port

    def _read_more(self, count: int) -> None:
        port = self._require_port()
        try:
            self._parser.feed(port.read(count))
        except (serial.SerialException, OSError) as error:
            raise self._link_lost(error) from error

    def _expect_ack(self, code: int, parameter: int = 0) -> Packet:
        reply = self._command(code, parameter)
        if not reply.is_ack:
            raise _refusal(reply.parameter, _command_name(code))
        return reply

    def _command(self, code: int, parameter: int = 0) -> Packet:
        """Send a command; return its ACK or NACK."""
        port = self._require_port()
        try:
            # Half duplex: anything waiting now is left over from an aborted exchange.
            port.reset_input_buffer()
            self._parser.clear()
            port.write(encode_packet(code, parameter))
        except (serial.SerialException, OSError) as error:
            raise self._link_lost(error) from error
        name = _command_name(code)
        bad_before = self._parser.bad_frames
        deadline = time.monotonic() + self.packet_timeout
        while True:
            packet = self._parser.next_packet()
            if packet is not None:
                return packet
            if time.monotonic() >= deadline:
                if self._parser.bad_frames > bad_before:
                    raise ProtocolError(f"{name}: only corrupt responses "
                                        f"({self._parser.bad_frames - bad_before})")
                if self._parser.buffered:
                    raise ProtocolError(f"{name}: truncated response, {self._parser.buffered}"
                                        " bytes then silence")
                raise DeviceTimeout(f"{name}: no answer within {self.packet_timeout:.1f} s")
            self._read_more(self._parser.wanted())

    def _read_data(self, length: int, what: str,
                   progress: Callable[[int, int], None] | None) -> bytes:
        """The payload of a data packet of ``length`` bytes, with per-chunk deadlines."""
        parser = self._parser
        wire_seconds = (length + DATA_OVERHEAD) * 10 / self.baud
        overall = time.monotonic() + max(self.upload_timeout, 2.0 * wire_seconds)
        last_seen = parser.data_progress()
        quiet_until = time.monotonic() + self.packet_timeout
        try:
            while True:
                data = parser.next_data(length)
                if data is not None:
                    if progress is not None:
                        progress(length, length)
                    return data
                done = parser.data_progress()
                now = time.monotonic()
                if done != last_seen:
                    last_seen, quiet_until = done, now + self.packet_timeout
                    if progress is not None:
                        progress(min(done, length), length)
                if now >= min(quiet_until, overall):
                    if done:
                        raise ProtocolError(
                            f"{what}: data packet truncated, {done} of {length} bytes then "
                            "silence")
                    raise DeviceTimeout(
                        f"{what}: no data within {self.packet_timeout:.1f} s",
                        officer_message="The scanner stopped sending the image: "
                                        "try the scan again")
                self._read_more(min(_DATA_CHUNK, parser.wanted(length)))
        except FrameError as error:
            raise ProtocolError(f"{what}: {error}") from error


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def open_gt521(target: str, *, timeout: float = 5.0) -> Gt521Device:
    """Open ``target`` = ``<pyserial url or path>[?baud=9600&model=GT-521F52&fast=1]``.

    ``baud`` is the rate the module is at now (9600 after power-on); ``fast=0`` keeps it.
    Other query keys stay on the URL for pyserial.
    """
    base, _, query = target.partition("?")
    options: dict[str, object] = {"timeout": timeout}
    passthrough: list[tuple[str, str]] = []
    try:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "baud":
                options["baud"] = int(value)
                if options["baud"] not in BAUD_RATES:
                    raise ValueError(f"baud must be one of {BAUD_RATES}")
            elif key == "model":
                model_spec(value)
                options["model"] = value
            elif key == "fast":
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(f"fast must be 0 or 1, not {value!r}")
                options["fast_baud"] = value.lower() in _TRUE
            else:
                passthrough.append((key, value))
        if passthrough and "://" not in base:
            raise ValueError(f"unknown option(s) {', '.join(k for k, _ in passthrough)}")
    except ValueError as error:
        raise DeviceError(
            f"bad GT-521F device URL {target!r}: {error}",
            officer_message="The scanner setting is wrong: check the device URL",
            retryable=False,
        ) from error
    port_url = base + ("?" + urlencode(passthrough) if passthrough else "")
    return Gt521Device(port_url, **options)  # type: ignore[arg-type]
