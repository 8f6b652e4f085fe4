"""An emulated GT-521F32 / GT-521F52 fingerprint module, byte for byte.

:class:`Gt521Emulator` is a pure state machine like the ZFM one: :meth:`feed` takes the
bytes a host wrote and returns the bytes the module answers, so the same object runs in
unit tests, behind a pty or behind ``socket://`` (:mod:`gateway.emulators.serial_transports`).
It serves real fingerprint images in order (rescaled from the source resolution, then
cropped or padded to the 202 x 258 sensor), follows ChangeBaudrate (the pty transport then
only understands a host at the new rate) and injects the faults a street scanner shows:
bad checksum, stray bytes, a truncated image packet, silence, no finger, a failed capture
and the cable pulled mid-upload.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.devices.gt521_protocol import (
    BAUD_RATES,
    DEFAULT_BAUD,
    IMAGE_HEIGHT,
    IMAGE_PPI,
    IMAGE_WIDTH,
    RAW_IMAGE_HEIGHT,
    RAW_IMAGE_WIDTH,
    Command,
    ErrorCode,
    OpenInfo,
    PacketParser,
    Reply,
    encode_data,
    encode_packet,
    model_spec,
)
from gateway.emulators.zfm import fit_image, load_images
from gateway.extraction.decode import load_image

# Junk a glitching line produces, including a false response start code whose checksum
# cannot fit, so the host has to resynchronise rather than just skip to 0x55.
STRAY_BYTES = b"\x00\xff\x55\xaa\x01\x00\x13\x37\x00\x00\x30\x00\x00\x00\xf0"


class Fault(StrEnum):
    """Injectable faults; each queued fault fires once, at the first point it applies."""

    BAD_CHECKSUM = "bad-checksum"  # the next image data packet has a wrong checksum
    STRAY_BYTES = "stray-bytes"  # junk before the next response and before its data
    TRUNCATED = "truncated"  # bytes of the next image data packet are lost
    TIMEOUT = "timeout"  # the next command gets no answer at all
    NO_FINGER = "no-finger"  # the next `no_finger_polls` presence checks find no finger
    CAPTURE_FAILED = "capture-failed"  # the next CaptureFinger NACKs BAD_FINGER
    UNPLUG = "unplug"  # the link is cut half way through the next image upload


_UPLOAD_FAULTS = (Fault.BAD_CHECKSUM, Fault.TRUNCATED, Fault.UNPLUG)
# Bytes the TRUNCATED fault drops from the middle of the image packet.
TRUNCATED_BYTES = 700


class Gt521Emulator:
    """A GT-521F module as a byte-level state machine.

    ``images`` is a sequence of grey images or a folder of image files, served in order
    and cycled. ``source_ppi`` rescales them to the module's ~450 ppi. ``finger_after_polls``
    = N means each capture finds the finger after N "not pressed" answers (0: always
    there); :meth:`place_finger` / :meth:`lift_finger` switch to manual control.
    ``allow_baud_change=False`` makes ChangeBaudrate NACK, as on a module whose host
    bridge cannot follow. ``faults`` are queued as by :meth:`inject`.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | str | Path,
        *,
        model: str = "GT-521F52",
        baud: int = DEFAULT_BAUD,
        source_ppi: float | None = None,
        finger_after_polls: int = 0,
        no_finger_polls: int = 50,
        allow_baud_change: bool = True,
        faults: Iterable[Fault | str] = (),
        serial_number: bytes = bytes(range(0x10, 0x20)),
        firmware_version: int = 0x20150423,
    ) -> None:
        if baud not in BAUD_RATES:
            raise ValueError(f"baud must be one of {BAUD_RATES}")
        self.spec = model_spec(model)
        self._images: list[np.ndarray | Path] = (
            list(load_images(images)) if isinstance(images, str | Path) else list(images)
        )
        if not self._images:
            raise ValueError("the emulator needs at least one image")
        self._scale = 1.0 if source_ppi is None else IMAGE_PPI / source_ppi
        self.baud = baud
        self.allow_baud_change = allow_baud_change
        self.info = OpenInfo(firmware_version, 0x3FF0, serial_number)
        self.finger_after_polls = finger_after_polls
        self.no_finger_polls = no_finger_polls
        self.led_on = False
        self.opened = False
        self._manual_finger: bool | None = None
        self._polls = 0
        self._no_finger_left = 0
        self._image: bytes | None = None
        self._next_image = 0
        self._faults: list[Fault] = []
        self._parser = PacketParser(frozenset(int(c) for c in Command))
        self._lock = threading.Lock()
        self.unplug_requested = False
        self.images_served = 0
        self.commands: list[int] = []
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
                # A command with a bad checksum is skipped by the parser: the module
                # stays silent and the host times out, as the real one does.
                packet = self._parser.next_packet()
                if packet is None:
                    break
                self.commands.append(packet.code)
                if self._take(Fault.TIMEOUT):
                    continue
                out += self._command(packet.code, packet.parameter)
            return bytes(out)

    # -- commands -----------------------------------------------------------------------
    def _command(self, code: int, parameter: int) -> bytes:
        if code == Command.OPEN:
            self.opened = True
            reply = self._ack()
            return reply + (encode_data(self.info.to_bytes()) if parameter else b"")
        if code == Command.CLOSE:
            self.opened = False
            return self._ack()
        if code == Command.CHANGE_BAUDRATE:
            if not self.allow_baud_change or parameter not in BAUD_RATES:
                return self._nack(ErrorCode.INVALID_BAUDRATE)
            # The ACK leaves at the old rate; the transport paces by self.baud after
            # feed() returns, a simplification a pty or TCP link cannot show.
            reply = self._ack()
            self.baud = parameter
            return reply
        if code == Command.CMOS_LED:
            self.led_on = bool(parameter)
            return self._ack()
        if code == Command.USB_INTERNAL_CHECK:
            return self._ack()
        if code == Command.GET_ENROLL_COUNT:
            return self._ack(0)
        if code == Command.IS_PRESS_FINGER:
            return self._ack(0 if self._finger_seen() else ErrorCode.FINGER_IS_NOT_PRESSED)
        if code == Command.CAPTURE_FINGER:
            return self._capture()
        if code == Command.GET_IMAGE:
            return self._upload_image()
        if code == Command.GET_RAW_IMAGE:
            return self._upload_raw_image()
        return self._nack(ErrorCode.IS_NOT_SUPPORTED)

    def _finger_present(self) -> bool:
        if self._no_finger_left > 0:
            self._no_finger_left -= 1
            return False
        if self._manual_finger is not None:
            return self._manual_finger
        self._polls += 1
        return self._polls > self.finger_after_polls

    def _finger_seen(self) -> bool:
        if self._take(Fault.NO_FINGER):
            self._no_finger_left = self.no_finger_polls
        # The optical sensor sees nothing with its LED off.
        return self.led_on and self._finger_present()

    def _capture(self) -> bytes:
        if not self._finger_seen():
            return self._nack(ErrorCode.FINGER_IS_NOT_PRESSED)
        if self._take(Fault.CAPTURE_FAILED):
            return self._nack(ErrorCode.BAD_FINGER)
        source = self._images[self._next_image % len(self._images)]
        self._next_image += 1
        pixels = (load_image(source).image if isinstance(source, Path) else source)
        self._image = fit_image(pixels, IMAGE_WIDTH, IMAGE_HEIGHT, self._scale).tobytes()
        return self._ack()

    def _upload_image(self) -> bytes:
        if self._image is None:
            return self._nack(ErrorCode.INVALID_PARAM)
        stray = self._take(Fault.STRAY_BYTES)
        fault = next((f for f in self._faults if f in _UPLOAD_FAULTS), None)
        if fault is not None:
            self._faults.remove(fault)
        frame = bytearray(encode_data(self._image))
        middle = len(frame) // 2
        out = bytearray(self._ack(stray=stray))
        if stray:
            out += STRAY_BYTES[:3]
        if fault == Fault.UNPLUG:
            self.unplug_requested = True
            return bytes(out + frame[:middle])
        if fault == Fault.BAD_CHECKSUM:
            frame[-1] ^= 0x5A
        elif fault == Fault.TRUNCATED:
            del frame[middle:middle + TRUNCATED_BYTES]
        else:
            self.images_served += 1
            # The finger is lifted after a full upload; the next capture polls afresh.
            self._polls = 0
        return bytes(out + frame)

    def _upload_raw_image(self) -> bytes:
        if not self.led_on:
            return self._nack(ErrorCode.DEV_ERR)
        source = self._images[self._next_image % len(self._images)]
        pixels = (load_image(source).image if isinstance(source, Path) else source)
        preview = np.asarray(Image.fromarray(fit_image(pixels, IMAGE_WIDTH, IMAGE_HEIGHT))
                             .resize((RAW_IMAGE_WIDTH, RAW_IMAGE_HEIGHT)))
        return self._ack() + encode_data(preview.tobytes())

    # -- framing ------------------------------------------------------------------------
    def _ack(self, parameter: int = 0, *, stray: bool = False) -> bytes:
        prefix = STRAY_BYTES if stray or self._take(Fault.STRAY_BYTES) else b""
        return prefix + encode_packet(Reply.ACK, parameter)

    def _nack(self, error: int) -> bytes:
        prefix = STRAY_BYTES if self._take(Fault.STRAY_BYTES) else b""
        return prefix + encode_packet(Reply.NACK, error)

    def _take(self, fault: Fault) -> bool:
        if fault in self._faults:
            self._faults.remove(fault)
            return True
        return False
