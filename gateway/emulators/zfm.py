"""An emulated ZFM / R30x / R503 / AS608 fingerprint module, byte for byte.

:class:`ZfmEmulator` is a pure state machine: :meth:`ZfmEmulator.feed` takes the bytes a
host wrote and returns the bytes the module would answer, so the same object can be
driven directly in unit tests, over a pty or over TCP
(:mod:`gateway.emulators.serial_transports`). It serves real fingerprint images in
order (cropped or padded to the model's sensor, optionally rescaled from the source
resolution), lets a test place or lift the finger, and injects the faults a street
scanner shows: bad checksums, stray bytes, lost bytes, silence, no finger, a failed
capture, a reply from a wrong address, a stalled upload, and the cable pulled mid-upload.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.devices.zfm_protocol import (
    BAUD_STEP,
    DEFAULT_ADDRESS,
    MAX_BAUD_MULTIPLIER,
    PACKET_SIZES,
    Confirmation,
    FrameError,
    FrameParser,
    Instruction,
    Pid,
    ProductInfo,
    SysParam,
    SystemParameters,
    encode_ack,
    encode_packet,
    model_spec,
    pack_image,
)
from gateway.extraction.decode import load_image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".pgm", ".jpg", ".jpeg")
# What a module emits after power-on or reset, plus junk that contains a false header
# (EF 01 followed by an impossible PID) to exercise resynchronisation.
STRAY_BYTES = b"\x55\x00\xef\x01\xff\xff\xff\xff\x42\x13\xef"


class Fault(StrEnum):
    """Injectable faults; each queued fault fires once, at the first point it applies."""

    BAD_CHECKSUM = "bad-checksum"  # one data packet of the next upload is corrupted
    STRAY_BYTES = "stray-bytes"  # 0x55 and junk before the next reply and mid-upload
    TRUNCATED = "truncated"  # bytes of one data packet of the next upload are lost
    TIMEOUT = "timeout"  # the next command gets no answer at all
    STALL = "stall"  # the next upload stops half way (between packets), then silence
    NO_FINGER = "no-finger"  # the next `no_finger_polls` polls find no finger
    CAPTURE_FAILED = "capture-failed"  # the next finger capture answers 0x03
    WRONG_ADDRESS = "wrong-address"  # the next reply comes from another address
    UNPLUG = "unplug"  # the link is cut half way through the next upload


_UPLOAD_FAULTS = (Fault.BAD_CHECKSUM, Fault.TRUNCATED, Fault.STALL, Fault.UNPLUG)


def load_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in name order (read lazily, at capture time)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def fit_image(image: np.ndarray, width: int, height: int, scale: float = 1.0) -> np.ndarray:
    """Rescale by ``scale``, then centre-crop or pad with white to ``width`` x ``height``.

    Cropping (not squeezing) keeps the ridge spacing, as a smaller sensor would.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise ValueError(f"need a grey H x W image, got shape {pixels.shape}")
    pixels = pixels.astype(np.uint8, copy=False)
    if abs(scale - 1.0) > 0.01:
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    out = np.full((height, width), 255, dtype=np.uint8)
    src_h, src_w = pixels.shape
    crop_y, crop_x = max(0, (src_h - height) // 2), max(0, (src_w - width) // 2)
    pad_y, pad_x = max(0, (height - src_h) // 2), max(0, (width - src_w) // 2)
    rows, cols = min(height, src_h), min(width, src_w)
    out[pad_y:pad_y + rows, pad_x:pad_x + cols] = pixels[crop_y:crop_y + rows,
                                                         crop_x:crop_x + cols]
    return out


class ZfmEmulator:
    """A ZFM-family module as a byte-level state machine.

    ``images`` is a sequence of grey images or a folder of image files, served in order
    and cycled. ``finger_after_polls`` = N means each capture finds the finger after N
    "no finger" polls (0: always present); :meth:`place_finger` / :meth:`lift_finger`
    switch to manual control. ``source_ppi`` rescales the images to the module's
    resolution. ``faults`` are queued as by :meth:`inject`.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | str | Path,
        *,
        model: str = "R307",
        packet_size: int = 128,
        address: int = DEFAULT_ADDRESS,
        password: int = 0,
        baud: int = 57600,
        source_ppi: float | None = None,
        finger_after_polls: int = 0,
        no_finger_polls: int = 50,
        faults: Iterable[Fault | str] = (),
        serial_number: str = "EMU00001",
    ) -> None:
        if packet_size not in PACKET_SIZES:
            raise ValueError(f"packet_size must be one of {PACKET_SIZES}")
        if baud % BAUD_STEP or not 1 <= baud // BAUD_STEP <= MAX_BAUD_MULTIPLIER:
            raise ValueError("baud must be N x 9600 with N = 1..12")
        self.spec = model_spec(model)
        self._images: list[np.ndarray | Path] = (
            list(load_images(images)) if isinstance(images, str | Path) else list(images)
        )
        if not self._images:
            raise ValueError("the emulator needs at least one image")
        self._scale = 1.0 if source_ppi is None else self.spec.ppi / source_ppi
        self.packet_size = packet_size
        self.address = address
        self.password = password
        self.baud = baud
        self.security_level = 3
        self.serial_number = serial_number
        self.finger_after_polls = finger_after_polls
        self.no_finger_polls = no_finger_polls
        self._manual_finger: bool | None = None
        self._polls = 0
        self._no_finger_left = 0
        self._password_ok = password == 0
        self._image_buffer: bytes | None = None
        self._next_image = 0
        self._faults: list[Fault] = []
        self._parser = FrameParser()
        self._lock = threading.Lock()
        self.unplug_requested = False
        self.images_served = 0
        self.commands = 0
        self.inject(*faults)

    # -- control, for tests and the demo --------------------------------------------
    def place_finger(self) -> None:
        """A finger is on the sensor until :meth:`lift_finger` (manual control)."""
        with self._lock:
            self._manual_finger = True

    def lift_finger(self) -> None:
        """No finger on the sensor until :meth:`place_finger` (manual control)."""
        with self._lock:
            self._manual_finger = False

    def inject(self, *faults: Fault | str) -> None:
        """Queue faults; each fires once, at the next point where it applies."""
        with self._lock:
            self._faults.extend(Fault(f) for f in faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """Faults queued and not yet fired."""
        with self._lock:
            return list(self._faults)

    def reset_link(self) -> None:
        """A new connection (or a replugged cable): forget partial input."""
        with self._lock:
            self._parser.clear()
            self.unplug_requested = False

    # -- the byte interface -----------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Consume bytes from the host; return the module's answer (maybe empty)."""
        with self._lock:
            self._parser.feed(data)
            out = bytearray()
            while not self.unplug_requested:
                try:
                    packet = self._parser.next_packet()
                except FrameError:
                    out += self._reply(Confirmation.RECEIVE_ERROR)
                    continue
                if packet is None:
                    break
                # A module on a shared bus stays silent for frames not addressed to it.
                if packet.pid != Pid.COMMAND or packet.address != self.address:
                    continue
                self.commands += 1
                if self._take(Fault.TIMEOUT):
                    continue
                out += self._command(packet.payload)
            return bytes(out)

    # -- commands -----------------------------------------------------------------------
    def _command(self, payload: bytes) -> bytes:
        instruction, params = payload[0], payload[1:]
        if instruction == Instruction.VFY_PWD:
            if len(params) != 4:
                return self._reply(Confirmation.RECEIVE_ERROR)
            self._password_ok = struct.unpack(">I", params)[0] == self.password
            return self._reply(Confirmation.OK if self._password_ok
                               else Confirmation.WRONG_PASSWORD)
        if instruction in (Instruction.GET_ECHO, Instruction.HANDSHAKE):
            code = Confirmation.ECHO_OK if instruction == Instruction.GET_ECHO else 0
            return self._reply(code)
        if not self._password_ok:
            return self._reply(Confirmation.PASSWORD_REQUIRED)
        if instruction == Instruction.READ_SYS_PARA:
            return self._reply(Confirmation.OK, self._system_parameters().to_payload())
        if instruction == Instruction.SET_SYS_PARA:
            return self._set_parameter(params)
        if instruction == Instruction.GEN_IMG or (
            instruction == Instruction.GET_IMAGE_EX and self.spec.name == "R503"
        ):
            return self._reply(self._generate_image())
        if instruction == Instruction.UP_IMAGE:
            return self._upload_image()
        if instruction == Instruction.READ_PROD_INFO and self.spec.name == "R503":
            return self._reply(Confirmation.OK, self._product_info().to_payload())
        if instruction == Instruction.CHECK_SENSOR:
            return self._reply(Confirmation.OK)
        if instruction == Instruction.TEMPLATE_NUM:
            return self._reply(Confirmation.OK, b"\x00\x00")
        if instruction == Instruction.SOFT_RESET:
            return self._reply(Confirmation.OK) + b"\x55"
        return self._reply(Confirmation.RECEIVE_ERROR)

    def _system_parameters(self) -> SystemParameters:
        status = 0b0100 if self._password_ok else 0
        if self._image_buffer is not None:
            status |= 0b1000
        return SystemParameters(status, 0x0009, self.spec.capacity, self.security_level,
                                self.address, self.packet_size, self.baud)

    def _product_info(self) -> ProductInfo:
        return ProductInfo(self.spec.name, "2024", self.serial_number, 0x0100, "CAP192",
                           self.spec.width, self.spec.height, 1536, self.spec.capacity)

    def _set_parameter(self, params: bytes) -> bytes:
        if len(params) != 2:
            return self._reply(Confirmation.RECEIVE_ERROR)
        number, value = params
        if number == SysParam.BAUD and 1 <= value <= MAX_BAUD_MULTIPLIER:
            # The ack still goes out at the old rate; the transport paces by self.baud
            # after feed() returns, a simplification a pty or TCP link cannot show.
            reply = self._reply(Confirmation.OK)
            self.baud = value * BAUD_STEP
            return reply
        if number == SysParam.SECURITY and 1 <= value <= 5:
            self.security_level = value
            return self._reply(Confirmation.OK)
        if number == SysParam.PACKET_SIZE and value < len(PACKET_SIZES):
            self.packet_size = PACKET_SIZES[value]
            return self._reply(Confirmation.OK)
        return self._reply(Confirmation.BAD_REGISTER)

    def _finger_present(self) -> bool:
        if self._no_finger_left > 0:
            self._no_finger_left -= 1
            return False
        if self._manual_finger is not None:
            return self._manual_finger
        self._polls += 1
        return self._polls > self.finger_after_polls

    def _generate_image(self) -> int:
        if self._take(Fault.NO_FINGER):
            self._no_finger_left = self.no_finger_polls
        if not self._finger_present():
            return Confirmation.NO_FINGER
        if self._take(Fault.CAPTURE_FAILED):
            return Confirmation.CAPTURE_FAILED
        source = self._images[self._next_image % len(self._images)]
        self._next_image += 1
        pixels = (load_image(source).image if isinstance(source, Path) else source)
        image = fit_image(pixels, self.spec.width, self.spec.height, self._scale)
        self._image_buffer = pack_image(image)
        return Confirmation.OK

    def _upload_image(self) -> bytes:
        if self._image_buffer is None:
            return self._reply(Confirmation.NO_VALID_IMAGE)
        stray = self._take(Fault.STRAY_BYTES)
        fault = next((f for f in self._faults if f in _UPLOAD_FAULTS), None)
        if fault is not None:
            self._faults.remove(fault)
        data = self._image_buffer
        size = self.packet_size
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        middle = len(chunks) // 2
        out = bytearray(self._reply(Confirmation.OK, stray=stray))
        for index, chunk in enumerate(chunks):
            pid = Pid.END if index == len(chunks) - 1 else Pid.DATA
            frame = bytearray(encode_packet(pid, chunk, self.address))
            if index == middle:
                if stray:
                    out += STRAY_BYTES
                if fault == Fault.STALL:
                    break
                if fault == Fault.UNPLUG:
                    self.unplug_requested = True
                    out += frame[:len(frame) // 2]
                    break
                if fault == Fault.BAD_CHECKSUM:
                    frame[-1] ^= 0x5A
                elif fault == Fault.TRUNCATED:
                    del frame[len(frame) // 3:len(frame) // 3 + 7]
            out += frame
        else:
            self.images_served += 1
            # The finger is lifted after a full upload; the next capture polls afresh.
            self._polls = 0
        return bytes(out)

    # -- framing ------------------------------------------------------------------------
    def _reply(self, code: int, params: bytes = b"", *, stray: bool = False) -> bytes:
        address = self.address
        if self._take(Fault.WRONG_ADDRESS):
            address = (self.address + 1) & 0xFFFFFFFF
        prefix = STRAY_BYTES if stray or self._take(Fault.STRAY_BYTES) else b""
        return prefix + encode_ack(code, params, address)

    def _take(self, fault: Fault) -> bool:
        if fault in self._faults:
            self._faults.remove(fault)
            return True
        return False
