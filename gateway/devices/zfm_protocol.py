"""The ZFM / R30x / R503 / AS608 serial protocol: frames, codes and model facts.

Shared by the driver (host side) and the emulator (module side), so both speak exactly
the same bytes. A frame is ``EF 01`` + address(4) + PID(1) + LEN(2) + payload + SUM(2),
big-endian, LEN = len(payload) + 2, SUM = low 16 bits of PID + LEN bytes + payload bytes
(reference: devices-and-formats.md section 1.3). :class:`FrameParser` reads frames from
an arbitrary byte stream by the LEN field, verifies the checksum and resynchronises on
``EF 01`` after stray bytes (modules emit a lone 0x55 after power-on or reset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

HEADER = b"\xef\x01"
DEFAULT_ADDRESS = 0xFFFFFFFF
# Header(2) + address(4) + PID(1) + LEN(2): enough to know how long the frame is.
PREFIX_LEN = 9
CHECKSUM_LEN = 2
# The largest payload any command or reply carries is a 256-byte data packet; a
# plausible LEN bounds how long a false header found in junk can stall the parser.
MAX_PAYLOAD = 256
PACKET_SIZES = (32, 64, 128, 256)
BAUD_STEP = 9600
MAX_BAUD_MULTIPLIER = 12


class Pid(IntEnum):
    """Packet identifier (byte 6 of a frame)."""

    COMMAND = 0x01
    DATA = 0x02
    ACK = 0x07
    END = 0x08


class Instruction(IntEnum):
    """Instruction codes: payload byte 0 of a command packet."""

    GEN_IMG = 0x01
    IMG_2_TZ = 0x02
    UP_IMAGE = 0x0A
    DOWN_IMAGE = 0x0B
    SET_SYS_PARA = 0x0E
    READ_SYS_PARA = 0x0F
    VFY_PWD = 0x13
    TEMPLATE_NUM = 0x1D
    GET_IMAGE_EX = 0x28
    CHECK_SENSOR = 0x36
    READ_PROD_INFO = 0x3C
    SOFT_RESET = 0x3D
    HANDSHAKE = 0x40
    GET_ECHO = 0x53


class SysParam(IntEnum):
    """Parameter numbers of SetSysPara (0x0E)."""

    BAUD = 4
    SECURITY = 5
    PACKET_SIZE = 6


class Confirmation(IntEnum):
    """Confirmation codes: payload byte 0 of an ack packet."""

    OK = 0x00
    RECEIVE_ERROR = 0x01
    NO_FINGER = 0x02
    CAPTURE_FAILED = 0x03
    TOO_MESSY = 0x06
    TOO_FEW_POINTS = 0x07
    NO_MATCH = 0x08
    NOT_FOUND = 0x09
    COMBINE_FAILED = 0x0A
    BAD_PAGE = 0x0B
    BAD_TEMPLATE = 0x0C
    UPLOAD_TEMPLATE_FAILED = 0x0D
    CANNOT_RECEIVE = 0x0E
    UPLOAD_IMAGE_FAILED = 0x0F
    DELETE_FAILED = 0x10
    CLEAR_FAILED = 0x11
    WRONG_PASSWORD = 0x13
    NO_VALID_IMAGE = 0x15
    FLASH_ERROR = 0x18
    UNDEFINED_ERROR = 0x19
    BAD_REGISTER = 0x1A
    WRONG_ADDRESS = 0x20
    PASSWORD_REQUIRED = 0x21
    ECHO_OK = 0x55


# What the module means (for logs) and what the officer should do (for the screen).
_CONFIRMATION_TEXT: dict[int, tuple[str, str]] = {
    0x00: ("OK", "OK"),
    0x01: ("error receiving packet",
           "The scanner did not understand the request: try the scan again"),
    0x02: ("no finger on sensor",
           "No finger detected: place the finger flat on the sensor and try again"),
    0x03: ("failed to capture image",
           "The scan did not work: lift the finger, wipe the sensor and place the "
           "finger again"),
    0x06: ("image too messy",
           "The print is smudged: wipe the finger and the sensor and scan again"),
    0x07: ("too few feature points",
           "Too little of the finger was on the sensor: press the finger flat and "
           "centred and scan again"),
    0x0E: ("module cannot receive following data packets",
           "The scanner is busy: wait a moment and try the scan again"),
    0x0F: ("error uploading image",
           "The scanner could not send the image: try the scan again"),
    0x13: ("wrong password",
           "The scanner is locked with a different password: check the gateway's "
           "scanner settings"),
    0x15: ("no valid image in buffer",
           "The scanner lost the image: place the finger again and scan again"),
    0x18: ("flash write error",
           "The scanner reports an internal memory fault: use another scanner"),
    0x19: ("undefined error",
           "The scanner reported an unknown fault: try the scan again"),
    0x1A: ("invalid register number",
           "The scanner refused a setting: check the gateway's scanner settings"),
    0x20: ("address code wrong",
           "The scanner has a different address: check the gateway's scanner settings"),
    0x21: ("password must be verified",
           "The scanner needs its password first: check the gateway's scanner settings"),
}


def confirmation_text(code: int) -> str:
    """The module's meaning of a confirmation code, for logs."""
    known = _CONFIRMATION_TEXT.get(code)
    return known[0] if known else f"confirmation code 0x{code:02X}"


def officer_message(code: int) -> str:
    """What to tell the person at the scanner when the module answers ``code``."""
    known = _CONFIRMATION_TEXT.get(code)
    if known:
        return known[1]
    return f"The scanner reported error {code:#04x}: try the scan again"


@dataclass(frozen=True)
class ModelSpec:
    """Image geometry and capacity of one module family."""

    name: str
    width: int
    height: int
    ppi: float
    capacity: int


# Geometry by model (reference section 1.8); the driver falls back to these when the
# module cannot report its own (everything but R503's ReadProdInfo).
MODELS: dict[str, ModelSpec] = {
    "R307": ModelSpec("R307", 256, 288, 500.0, 1000),
    "R305": ModelSpec("R305", 256, 288, 500.0, 1000),
    "ZFM-20": ModelSpec("ZFM-20", 256, 288, 500.0, 162),
    "AS608": ModelSpec("AS608", 256, 288, 500.0, 300),
    "R503": ModelSpec("R503", 192, 192, 508.0, 200),
    # A module that does not say which it is: the common 256 x 288 optical family.
    "R30x": ModelSpec("R30x", 256, 288, 500.0, 1000),
}
DEFAULT_MODEL = "R30x"


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a model name, case-insensitive; ValueError if unknown."""
    for key, spec in MODELS.items():
        if key.lower() == name.lower():
            return spec
    raise ValueError(f"unknown ZFM model {name!r}; known: {', '.join(MODELS)}")


def checksum(pid: int, payload: bytes) -> int:
    """Low 16 bits of PID + both LEN bytes + every payload byte."""
    length = len(payload) + CHECKSUM_LEN
    return (pid + (length >> 8) + (length & 0xFF) + sum(payload)) & 0xFFFF


@dataclass(frozen=True)
class Packet:
    """One decoded frame."""

    pid: int
    payload: bytes
    address: int = DEFAULT_ADDRESS

    def to_bytes(self) -> bytes:
        """The frame on the wire."""
        return encode_packet(self.pid, self.payload, self.address)

    @property
    def code(self) -> int:
        """Confirmation code of an ack (payload byte 0)."""
        return self.payload[0] if self.payload else -1


def encode_packet(pid: int, payload: bytes, address: int = DEFAULT_ADDRESS) -> bytes:
    """Encode one frame; ``payload`` excludes the checksum."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    length = len(payload) + CHECKSUM_LEN
    return (
        HEADER
        + struct.pack(">IBH", address, pid, length)
        + payload
        + struct.pack(">H", checksum(pid, payload))
    )


def encode_command(
    instruction: int, params: bytes = b"", address: int = DEFAULT_ADDRESS
) -> bytes:
    """A command frame: instruction code followed by its parameters."""
    return encode_packet(Pid.COMMAND, bytes([instruction]) + params, address)


def encode_ack(code: int, params: bytes = b"", address: int = DEFAULT_ADDRESS) -> bytes:
    """An ack frame: confirmation code followed by its return parameters."""
    return encode_packet(Pid.ACK, bytes([code]) + params, address)


class FrameError(Exception):
    """A frame was read in full but is invalid (bad checksum); it has been dropped."""


class FrameParser:
    """Incremental frame reader: feed bytes, take packets.

    Junk before a header is dropped (and counted in ``skipped_bytes``); a header whose
    PID or LEN is implausible is treated as junk, so the parser resynchronises on the
    next ``EF 01``. A frame with a bad checksum is dropped and reported by
    :meth:`next_packet` raising :class:`FrameError`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def clear(self) -> None:
        """Forget everything buffered (after the link was drained or reopened)."""
        self.skipped_bytes += len(self._buffer)
        self._buffer.clear()

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a frame."""
        return len(self._buffer)

    def wanted(self) -> int:
        """How many more bytes the frame in progress needs at least (>= 1)."""
        buffer = self._buffer
        if len(buffer) >= PREFIX_LEN and buffer[:2] == HEADER:
            length = (buffer[7] << 8) | buffer[8]
            return max(1, PREFIX_LEN + length - len(buffer))
        return max(1, PREFIX_LEN - len(buffer))

    def next_packet(self) -> Packet | None:
        """The next complete frame, or None until more bytes arrive."""
        buffer = self._buffer
        while True:
            start = buffer.find(HEADER)
            if start < 0:
                # Keep a trailing 0xEF: it may be the first half of a header.
                keep = 1 if buffer.endswith(HEADER[:1]) else 0
                self._skip(len(buffer) - keep)
                return None
            self._skip(start)
            if len(buffer) < PREFIX_LEN:
                return None
            address, pid, length = struct.unpack_from(">IBH", buffer, 2)
            if pid not in _PIDS or not CHECKSUM_LEN < length <= MAX_PAYLOAD + CHECKSUM_LEN:
                self._skip(1)
                continue
            end = PREFIX_LEN + length
            if len(buffer) < end:
                return None
            payload = bytes(buffer[PREFIX_LEN:end - CHECKSUM_LEN])
            received = (buffer[end - 2] << 8) | buffer[end - 1]
            del buffer[:end]
            expected = checksum(pid, payload)
            if received != expected:
                raise FrameError(
                    f"bad checksum in PID 0x{pid:02X} frame of {length} bytes: "
                    f"got 0x{received:04X}, expected 0x{expected:04X}"
                )
            return Packet(pid, payload, address)

    def _skip(self, count: int) -> None:
        if count > 0:
            del self._buffer[:count]
            self.skipped_bytes += count


_PIDS = frozenset(int(p) for p in Pid)


@dataclass(frozen=True)
class SystemParameters:
    """The 16 data bytes of a ReadSysPara reply (reference section 1.6)."""

    status: int
    system_id: int
    capacity: int
    security_level: int
    address: int
    packet_size: int
    baud: int

    @classmethod
    def from_payload(cls, data: bytes) -> SystemParameters:
        """Decode the bytes after the confirmation code."""
        if len(data) < 16:
            raise ValueError(f"ReadSysPara reply has {len(data)} data bytes, expected 16")
        status, system_id, capacity, security, address, size_code, n = struct.unpack(
            ">HHHHIHH", data[:16]
        )
        if size_code >= len(PACKET_SIZES):
            raise ValueError(f"ReadSysPara packet size code {size_code} is not 0..3")
        return cls(status, system_id, capacity, security, address,
                   PACKET_SIZES[size_code], n * BAUD_STEP)

    def to_payload(self) -> bytes:
        """Encode as the module sends it."""
        return struct.pack(
            ">HHHHIHH", self.status, self.system_id, self.capacity, self.security_level,
            self.address, PACKET_SIZES.index(self.packet_size), self.baud // BAUD_STEP,
        )


@dataclass(frozen=True)
class ProductInfo:
    """The 46 data bytes of an R503 ReadProdInfo reply."""

    model: str
    batch: str
    serial_number: str
    hardware_version: int
    sensor: str
    width: int
    height: int
    template_size: int
    database_size: int

    _FORMAT = ">16s4s8sH8sHHHH"

    @classmethod
    def from_payload(cls, data: bytes) -> ProductInfo:
        """Decode the bytes after the confirmation code."""
        size = struct.calcsize(cls._FORMAT)
        if len(data) < size:
            raise ValueError(f"ReadProdInfo reply has {len(data)} data bytes, expected {size}")
        model, batch, serial, hw, sensor, width, height, tsize, dbsize = struct.unpack(
            cls._FORMAT, data[:size]
        )
        return cls(_ascii(model), _ascii(batch), _ascii(serial), hw, _ascii(sensor),
                   width, height, tsize, dbsize)

    def to_payload(self) -> bytes:
        """Encode as the module sends it."""
        return struct.pack(
            self._FORMAT, self.model.encode(), self.batch.encode(),
            self.serial_number.encode(), self.hardware_version, self.sensor.encode(),
            self.width, self.height, self.template_size, self.database_size,
        )


def _ascii(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


def pack_image(image: np.ndarray) -> bytes:
    """8-bit H x W image -> the 4-bit wire form: two pixels a byte, high nibble left."""
    if image.ndim != 2 or image.shape[1] % 2:
        raise ValueError(f"need a 2-D image of even width, got shape {image.shape}")
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    packed = (pixels[:, 0::2] & 0xF0) | (pixels[:, 1::2] >> 4)
    return packed.tobytes()


def unpack_image(data: bytes, width: int, height: int) -> np.ndarray:
    """The 4-bit wire form -> 8-bit H x W image, each nibble v expanded to v * 17."""
    expected = width * height // 2
    if len(data) != expected:
        raise ValueError(f"image data has {len(data)} bytes, {width}x{height} needs {expected}")
    packed = np.frombuffer(data, dtype=np.uint8).reshape(height, width // 2)
    image = np.empty((height, width), dtype=np.uint8)
    image[:, 0::2] = (packed >> 4) * 17
    image[:, 1::2] = (packed & 0x0F) * 17
    return image
