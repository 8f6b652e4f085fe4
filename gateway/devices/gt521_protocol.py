"""The GT-521F32 / GT-521F52 serial protocol: packets, codes and model facts.

Shared by the driver (host side) and the emulator (module side), so both speak exactly
the same bytes (reference: devices-and-formats.md section 2.1). Everything is
little-endian. A command or response is 12 bytes: ``55 AA`` + device id(2) + parameter(4)
+ command or response code(2) + checksum(2); a data packet is ``5A A5`` + device id(2) +
N data bytes + checksum(2), where N is not on the wire but implied by the command that
asked for it. The checksum is the low 16 bits of the sum of every byte before it.

:class:`PacketParser` reads both kinds from an arbitrary byte stream: the caller says
which kind (and, for data, how long) it expects next, junk before a start code is
dropped, and a response whose start code is found in junk but whose checksum or code
does not fit is skipped byte by byte, so the parser resynchronises on the real one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

COMMAND_START = b"\x55\xaa"
DATA_START = b"\x5a\xa5"
DEVICE_ID = 0x0001
PACKET_LEN = 12
DATA_OVERHEAD = 6  # start(2) + device id(2) + checksum(2)
DEFAULT_BAUD = 9600
FAST_BAUD = 115200
BAUD_RATES = (9600, 19200, 38400, 57600, 115200)

IMAGE_WIDTH = 202
IMAGE_HEIGHT = 258
IMAGE_BYTES = IMAGE_WIDTH * IMAGE_HEIGHT  # 52 116
RAW_IMAGE_WIDTH = 160
RAW_IMAGE_HEIGHT = 120
# Open(1) data: firmware version u32, ISO area max size u32, serial number 16 bytes.
OPEN_INFO_BYTES = 24
# The reference gives ~450 dpi for the GT-521F image, marked unverified.
IMAGE_PPI = 450.0


class Command(IntEnum):
    """Command codes (bytes 8-9 of a command packet)."""

    OPEN = 0x01
    CLOSE = 0x02
    USB_INTERNAL_CHECK = 0x03
    CHANGE_BAUDRATE = 0x04
    MODULE_INFO = 0x06
    CMOS_LED = 0x12
    GET_ENROLL_COUNT = 0x20
    IS_PRESS_FINGER = 0x26
    CAPTURE_FINGER = 0x60
    MAKE_TEMPLATE = 0x61
    GET_IMAGE = 0x62
    GET_RAW_IMAGE = 0x63


class Reply(IntEnum):
    """Response codes (bytes 8-9 of a response packet)."""

    ACK = 0x30
    NACK = 0x31


class ErrorCode(IntEnum):
    """The parameter of a NACK."""

    TIMEOUT = 0x1001
    INVALID_BAUDRATE = 0x1002
    INVALID_POS = 0x1003
    IS_NOT_USED = 0x1004
    IS_ALREADY_USED = 0x1005
    COMM_ERR = 0x1006
    VERIFY_FAILED = 0x1007
    IDENTIFY_FAILED = 0x1008
    DB_IS_FULL = 0x1009
    DB_IS_EMPTY = 0x100A
    TURN_ERR = 0x100B
    BAD_FINGER = 0x100C
    ENROLL_FAILED = 0x100D
    IS_NOT_SUPPORTED = 0x100E
    DEV_ERR = 0x100F
    CAPTURE_CANCELED = 0x1010
    INVALID_PARAM = 0x1011
    FINGER_IS_NOT_PRESSED = 0x1012


# What the module means (for logs) and what the officer should do (for the screen).
_ERROR_TEXT: dict[int, tuple[str, str]] = {
    ErrorCode.TIMEOUT: ("module timeout",
                        "The scanner gave up waiting: place the finger again and scan again"),
    ErrorCode.INVALID_BAUDRATE: ("invalid baud rate",
                                 "The scanner refused a link setting: check the gateway's "
                                 "scanner settings"),
    ErrorCode.COMM_ERR: ("communication error",
                         "The scanner did not understand the request: try the scan again"),
    ErrorCode.BAD_FINGER: ("bad finger image",
                           "The scan did not work: lift the finger, wipe the sensor and place "
                           "the finger flat again"),
    ErrorCode.IS_NOT_SUPPORTED: ("command not supported",
                                 "This scanner model cannot do that: use another scanner"),
    ErrorCode.DEV_ERR: ("device error",
                        "The scanner reports an internal fault: restart it or use another "
                        "scanner"),
    ErrorCode.CAPTURE_CANCELED: ("capture cancelled",
                                 "The scan was cancelled: place the finger again"),
    ErrorCode.INVALID_PARAM: ("invalid parameter",
                              "The scanner refused a setting: check the gateway's scanner "
                              "settings"),
    ErrorCode.FINGER_IS_NOT_PRESSED: ("finger is not pressed",
                                      "No finger detected: place the finger flat on the "
                                      "sensor and try again"),
}


def error_text(code: int) -> str:
    """The module's meaning of a NACK code, for logs."""
    known = _ERROR_TEXT.get(code)
    if known:
        return known[0]
    try:
        return ErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"error 0x{code:04X}"


def officer_message(code: int) -> str:
    """What to tell the person at the scanner when the module NACKs with ``code``."""
    known = _ERROR_TEXT.get(code)
    if known:
        return known[1]
    return f"The scanner reported error {code:#06x}: try the scan again"


@dataclass(frozen=True)
class ModelSpec:
    """One member of the family: same protocol and image, different database size."""

    name: str
    capacity: int


MODELS: dict[str, ModelSpec] = {
    "GT-521F32": ModelSpec("GT-521F32", 200),
    "GT-521F52": ModelSpec("GT-521F52", 3000),
    # The module cannot name itself over UART: without a hint, the family name.
    "GT-521F": ModelSpec("GT-521F", 200),
}
DEFAULT_MODEL = "GT-521F"


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a model name, case-insensitive; ValueError if unknown."""
    for key, spec in MODELS.items():
        if key.lower() == name.lower():
            return spec
    raise ValueError(f"unknown GT-521F model {name!r}; known: {', '.join(MODELS)}")


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Low 16 bits of the sum of ``data``."""
    return sum(data) & 0xFFFF


def encode_packet(code: int, parameter: int = 0, device_id: int = DEVICE_ID) -> bytes:
    """A 12-byte command or response packet."""
    body = COMMAND_START + struct.pack("<HIH", device_id, parameter & 0xFFFFFFFF, code)
    return body + struct.pack("<H", checksum(body))


def encode_data(data: bytes, device_id: int = DEVICE_ID) -> bytes:
    """A data packet carrying ``data``."""
    body = DATA_START + struct.pack("<H", device_id) + data
    return body + struct.pack("<H", checksum(body))


@dataclass(frozen=True)
class Packet:
    """A decoded command or response packet."""

    code: int
    parameter: int
    device_id: int = DEVICE_ID

    @property
    def is_ack(self) -> bool:
        """True for an ACK response."""
        return self.code == Reply.ACK


class FrameError(Exception):
    """A packet was read in full but its checksum is wrong; it has been dropped."""


class PacketParser:
    """Incremental reader: feed bytes, take the packet kind the caller expects.

    Junk before a start code is dropped and counted in ``skipped_bytes``. A command or
    response with a wrong checksum or an implausible code is counted in ``bad_frames``
    and skipped one byte at a time (its start code may have been junk); a data packet
    with a wrong checksum raises :class:`FrameError` (it is too long to rescan).
    ``codes`` limits which packet codes are plausible (responses only, on the host).
    """

    def __init__(self, codes: frozenset[int] | None = None) -> None:
        self._buffer = bytearray()
        self._codes = codes
        self.skipped_bytes = 0
        self.bad_frames = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def clear(self) -> None:
        """Forget everything buffered (after the link was drained or reopened)."""
        self.skipped_bytes += len(self._buffer)
        self._buffer.clear()

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a packet."""
        return len(self._buffer)

    def next_packet(self) -> Packet | None:
        """The next valid command or response packet, or None until more bytes arrive."""
        buffer = self._buffer
        while True:
            if not self._align(COMMAND_START):
                return None
            if len(buffer) < PACKET_LEN:
                return None
            device_id, parameter, code, received = struct.unpack_from("<HIHH", buffer, 2)
            plausible = self._codes is None or code in self._codes
            if not plausible or received != checksum(buffer[:PACKET_LEN - 2]):
                self.bad_frames += 1
                self._skip(1)
                continue
            del buffer[:PACKET_LEN]
            return Packet(code, parameter, device_id)

    def data_progress(self) -> int:
        """Bytes of the expected data packet received so far (0 before its start code)."""
        if not self._align(DATA_START):
            return 0
        return max(0, len(self._buffer) - 4)

    def next_data(self, length: int) -> bytes | None:
        """The payload of the next data packet of ``length`` bytes, or None until complete."""
        if not self._align(DATA_START):
            return None
        total = length + DATA_OVERHEAD
        buffer = self._buffer
        if len(buffer) < total:
            return None
        frame = bytes(buffer[:total])
        del buffer[:total]
        received = frame[-2] | (frame[-1] << 8)
        expected = checksum(frame[:-2])
        if received != expected:
            raise FrameError(f"bad checksum in a {length}-byte data packet: got 0x{received:04X},"
                             f" expected 0x{expected:04X}")
        return frame[4:-2]

    def wanted(self, data_length: int | None = None) -> int:
        """At least how many more bytes the packet in progress needs (>= 1)."""
        need = PACKET_LEN if data_length is None else data_length + DATA_OVERHEAD
        return max(1, need - len(self._buffer))

    def _align(self, start: bytes) -> bool:
        """Drop bytes before ``start``; False when no start code is buffered yet."""
        buffer = self._buffer
        index = buffer.find(start)
        if index < 0:
            # Keep a trailing first half of the start code: the rest may be on its way.
            keep = 1 if buffer.endswith(start[:1]) else 0
            self._skip(len(buffer) - keep)
            return False
        self._skip(index)
        return True

    def _skip(self, count: int) -> None:
        if count > 0:
            del self._buffer[:count]
            self.skipped_bytes += count


@dataclass(frozen=True)
class OpenInfo:
    """The data packet that follows Open(1)."""

    firmware_version: int
    iso_area_max_size: int
    serial_number: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenInfo:
        """Decode the data packet payload."""
        if len(data) != OPEN_INFO_BYTES:
            raise ValueError(f"Open data has {len(data)} bytes, expected {OPEN_INFO_BYTES}")
        firmware, area = struct.unpack_from("<II", data)
        return cls(firmware, area, bytes(data[8:24]))

    def to_bytes(self) -> bytes:
        """Encode as the module sends it."""
        return struct.pack("<II16s", self.firmware_version, self.iso_area_max_size,
                           self.serial_number)

    @property
    def serial_text(self) -> str:
        """The 16-byte serial number as hex, the way vendor tools print it."""
        return self.serial_number.hex().upper()
