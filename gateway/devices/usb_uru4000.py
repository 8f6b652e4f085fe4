"""Driver for the DigitalPersona U.are.U 4000B USB scanner over pyusb.

The reference USB driver (protocol facts: devices-and-formats.md section 2.3, after the
libusb ``dpfp.c`` example; no code copied). Registers are read and written with vendor
control transfers (request 0x04, wValue = register); finger events arrive as 64-byte
packets on interrupt endpoint 0x81; the image comes on bulk endpoint 0x82 as a 64-byte
header and 384 x 289 8-bit pixels. Opening: find by VID:PID (and optionally bus and
address), configure, claim interface 0, read the device-info register, power the sensor
up and wait for its "scan power on" event. Capturing: MODE = await finger, wait for the
finger-on event, MODE = capture, read the frame in chunks (progress as they arrive),
MODE = await finger off.

The pyusb backend is injectable (``backend=``), so the emulator in
:mod:`gateway.emulators.usb_uru4000` runs this exact code without hardware. Firmware
that scrambles ("encrypts") the image, which some 4000B units have, is not handled.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import usb.core
import usb.util

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

VENDOR_ID = 0x05BA
PRODUCT_ID = 0x000A
INTERFACE = 0
CTRL_IN = 0xC0  # device to host, vendor, device recipient
CTRL_OUT = 0x40
REGISTER_REQUEST = 0x04
IRQ_ENDPOINT = 0x81
IMAGE_ENDPOINT = 0x82
IRQ_LENGTH = 64
IMAGE_WIDTH = 384
IMAGE_HEIGHT = 289
IMAGE_HEADER = 64
FRAME_BYTES = IMAGE_HEADER + IMAGE_WIDTH * IMAGE_HEIGHT  # 0x1B1C0, what the device sends
FRAME_REQUEST = 0x1B340  # what dpfp.c asks for; the device ends early with a short packet
DEVICE_INFO_LENGTH = 16
# Bulk reads in chunks (a multiple of the 512-byte high-speed packet), so progress moves.
CHUNK = 16 * 1024
# DigitalPersona states 512 dpi for the 4000B; marked unverified in the reference.
IMAGE_PPI = 512.0


class Register(IntEnum):
    """Registers reached by vendor control request 0x04."""

    HWSTAT = 0x07  # bit 7 set = sensor powered down
    MODE = 0x4E
    DEVICE_INFO = 0xF0


class Mode(IntEnum):
    """Values of the MODE register."""

    INIT = 0x00
    AWAIT_FINGER_ON = 0x10
    AWAIT_FINGER_OFF = 0x12
    CAPTURE = 0x20


class Event(IntEnum):
    """Big-endian type in the first two bytes of an interrupt packet."""

    FINGER_ON = 0x0101
    FINGER_OFF = 0x0200
    SCAN_POWER_ON = 0x56AA


HWSTAT_POWER_DOWN = 0x80


@dataclass(frozen=True)
class UsbModel:
    """A supported USB scanner."""

    name: str
    vendor_id: int
    product_id: int


MODELS: dict[str, UsbModel] = {
    "uru4000b": UsbModel("U.are.U 4000B", VENDOR_ID, PRODUCT_ID),
}


def _usb_failure(error: usb.core.USBError, what: str) -> DeviceError:
    """The DeviceError for a pyusb failure during ``what``."""
    detail = f"{what}: {error}"
    if isinstance(error, usb.core.USBTimeoutError) or error.errno == errno.ETIMEDOUT:
        return DeviceTimeout(detail)
    if error.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
        return DeviceDisconnected(detail)
    if error.errno in (errno.EACCES, errno.EPERM):
        return DeviceError(detail, retryable=False,
                           officer_message="The gateway may not use the scanner: ask an "
                                           "administrator to allow access to it (udev rule)")
    if error.errno == errno.EBUSY:
        return DeviceError(detail, retryable=False,
                           officer_message="Another program is using the scanner: close it "
                                           "and try again")
    # EIO (CRC errors after the controller's retries), EPIPE (stall), EOVERFLOW ...
    return ProtocolError(detail)


class Uru4000Device(Device):
    """A U.are.U 4000B found through pyusb.

    ``backend`` is a ``usb.backend.IBackend`` (None: pyusb's default, i.e. libusb);
    ``bus`` and ``address`` pick one of several scanners (the address changes when a
    scanner is replugged, so reconnecting after an unplug matches on bus only).
    ``timeout`` bounds opening and power-up; ``transfer_timeout`` each control or bulk
    transfer; ``poll_slice`` how long one interrupt read waits while looking for a
    finger, so the capture deadline is checked that often.
    """

    kind = "usb"

    def __init__(
        self,
        model: str = "uru4000b",
        *,
        bus: int | None = None,
        address: int | None = None,
        backend: Any = None,
        timeout: float = 5.0,
        transfer_timeout: float = 2.0,
        poll_slice: float = 0.2,
    ) -> None:
        try:
            self.model = MODELS[model.lower()]
        except KeyError:
            raise DeviceError(
                f"unknown USB scanner model {model!r}; known: {', '.join(MODELS)}",
                officer_message="The scanner setting is wrong: check the device URL",
                retryable=False,
            ) from None
        self.model_key = model.lower()
        self.bus = bus
        self.address = address
        self.backend = backend
        self.open_timeout = timeout
        self.transfer_timeout = transfer_timeout
        self.poll_slice = poll_slice
        self.stray_events = 0
        self._device: Any = None
        self.device_info_register = b""
        self.info = DeviceInfo(self.kind, self.model.name, self._url())
        self._connect(match_address=True)

    # -- public ---------------------------------------------------------------------------
    def capture(
        self,
        *,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scan:
        """Wait up to ``timeout`` s for the finger-on event, then read the frame."""
        if self._device is None:
            # Unplugged earlier: the scanner comes back under a new address, find it again.
            self._connect(match_address=False)
        self._write_register(Register.MODE, Mode.AWAIT_FINGER_ON)
        self._wait_for_event(Event.FINGER_ON, timeout, NoFinger(
            f"no finger within {timeout:.1f} s"))
        self._write_register(Register.MODE, Mode.CAPTURE)
        started = time.monotonic()
        frame = self._read_frame(progress)
        upload_seconds = time.monotonic() - started
        self._write_register(Register.MODE, Mode.AWAIT_FINGER_OFF)
        image = np.frombuffer(frame, dtype=np.uint8, offset=IMAGE_HEADER)
        image = image.reshape(IMAGE_HEIGHT, IMAGE_WIDTH).copy()
        return Scan(image, IMAGE_PPI, self.info, upload_seconds)

    def close(self) -> None:
        """Power the sensor down and release the device; safe to call more than once."""
        device, self._device = self._device, None
        if device is None:
            return
        with contextlib.suppress(usb.core.USBError):
            timeout_ms = self._ms(self.transfer_timeout)
            device.ctrl_transfer(CTRL_OUT, REGISTER_REQUEST, Register.MODE, 0,
                                 bytes([Mode.INIT]), timeout_ms)
            device.ctrl_transfer(CTRL_OUT, REGISTER_REQUEST, Register.HWSTAT, 0,
                                 bytes([HWSTAT_POWER_DOWN]), timeout_ms)
        with contextlib.suppress(usb.core.USBError):
            usb.util.release_interface(device, INTERFACE)
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(device)

    # -- connection -----------------------------------------------------------------------
    def _url(self) -> str:
        options = []
        if self.bus is not None:
            options.append(f"bus={self.bus}")
        if self.address is not None:
            options.append(f"address={self.address}")
        return f"usb:{self.model_key}" + ("?" + "&".join(options) if options else "")

    def _find(self, match_address: bool) -> Any:
        criteria: dict[str, int] = {"idVendor": self.model.vendor_id,
                                    "idProduct": self.model.product_id}
        if self.bus is not None:
            criteria["bus"] = self.bus
        if self.address is not None and match_address:
            criteria["address"] = self.address
        try:
            device = usb.core.find(backend=self.backend, **criteria)
        except usb.core.NoBackendError as error:
            raise DeviceError(
                f"no pyusb backend: {error}", retryable=False,
                officer_message="USB support (libusb) is not installed on this gateway: "
                                "ask an administrator") from error
        except usb.core.USBError as error:
            raise _usb_failure(error, "USB enumeration") from error
        if device is None:
            raise DeviceDisconnected(
                f"no {self.model.name} ({self.model.vendor_id:04x}:{self.model.product_id:04x})"
                " found", officer_message="The scanner is not connected: plug it in and try "
                                          "again")
        return device

    def _connect(self, *, match_address: bool) -> None:
        device = self._find(match_address)
        try:
            with contextlib.suppress(NotImplementedError):
                if device.is_kernel_driver_active(INTERFACE):
                    device.detach_kernel_driver(INTERFACE)
            device.set_configuration()
            usb.util.claim_interface(device, INTERFACE)
        except usb.core.USBError as error:
            with contextlib.suppress(usb.core.USBError):
                usb.util.dispose_resources(device)
            raise _usb_failure(error, "USB configuration") from error
        self._device = device
        try:
            self.device_info_register = self._read_register(Register.DEVICE_INFO,
                                                            DEVICE_INFO_LENGTH)
            self._power_up()
        except DeviceError:
            self.close()
            raise
        self.address = getattr(device, "address", self.address)
        self.bus = getattr(device, "bus", self.bus)
        self.info = DeviceInfo(self.kind, self.model.name, self._url(), None, {
            "vid_pid": f"{self.model.vendor_id:04x}:{self.model.product_id:04x}",
            "width": IMAGE_WIDTH, "height": IMAGE_HEIGHT,
            "device_info": self.device_info_register.hex(),
        })

    def _power_up(self) -> None:
        status = self._read_register(Register.HWSTAT, 1)[0]
        # Power-up is the falling edge of bit 7: make sure it is set first.
        if not status & HWSTAT_POWER_DOWN:
            self._write_register(Register.HWSTAT, status | HWSTAT_POWER_DOWN)
        self._write_register(Register.HWSTAT, status & ~HWSTAT_POWER_DOWN & 0xFF)
        self._wait_for_event(Event.SCAN_POWER_ON, self.open_timeout, DeviceTimeout(
            "the sensor did not report power-on"))

    # -- transfers ------------------------------------------------------------------------
    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    def _require_device(self) -> Any:
        if self._device is None:
            raise DeviceDisconnected(f"{self._url()} is closed")
        return self._device

    def _fail(self, error: usb.core.USBError, what: str) -> DeviceError:
        failure = _usb_failure(error, what)
        if isinstance(failure, DeviceDisconnected):
            self.close()
        return failure

    def _read_register(self, register: int, length: int) -> bytes:
        device = self._require_device()
        try:
            data = device.ctrl_transfer(CTRL_IN, REGISTER_REQUEST, register, 0, length,
                                        self._ms(self.transfer_timeout))
        except usb.core.USBError as error:
            raise self._fail(error, f"read register 0x{register:02X}") from error
        if len(data) != length:
            raise ProtocolError(f"register 0x{register:02X}: {len(data)} bytes, "
                                f"expected {length}")
        return bytes(data)

    def _write_register(self, register: int, value: int) -> None:
        device = self._require_device()
        try:
            device.ctrl_transfer(CTRL_OUT, REGISTER_REQUEST, register, 0, bytes([value]),
                                 self._ms(self.transfer_timeout))
        except usb.core.USBError as error:
            raise self._fail(error, f"write register 0x{register:02X}") from error

    def _wait_for_event(self, wanted: Event, timeout: float, on_timeout: DeviceError) -> None:
        """Read interrupt packets until ``wanted`` arrives; others are counted and skipped."""
        device = self._require_device()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise on_timeout
            try:
                packet = device.read(IRQ_ENDPOINT, IRQ_LENGTH,
                                     self._ms(min(self.poll_slice, remaining)))
            except usb.core.USBTimeoutError:
                continue
            except usb.core.USBError as error:
                raise self._fail(error, f"waiting for {wanted.name}") from error
            if len(packet) >= 2 and (packet[0] << 8 | packet[1]) == wanted:
                return
            self.stray_events += 1

    def _read_frame(self, progress: Callable[[int, int], None] | None) -> bytes:
        device = self._require_device()
        frame = bytearray()
        timeout_ms = self._ms(self.transfer_timeout)
        try:
            while len(frame) < FRAME_REQUEST:
                chunk = device.read(IMAGE_ENDPOINT, min(CHUNK, FRAME_REQUEST - len(frame)),
                                    timeout_ms)
                frame += chunk
                if progress is not None:
                    progress(min(len(frame), FRAME_BYTES), FRAME_BYTES)
                if len(chunk) < CHUNK:
                    break  # a short packet ends the frame
        except usb.core.USBTimeoutError as error:
            self._recover_endpoint(device)
            if frame:
                raise DeviceTimeout(
                    f"image: scanner went silent after {len(frame)} of {FRAME_BYTES} bytes",
                    officer_message="The scanner stopped sending the image: try the scan "
                                    "again") from error
            raise DeviceTimeout(f"image: no data within {self.transfer_timeout:.1f} s") from error
        except usb.core.USBError as error:
            failure = self._fail(error, f"image after {len(frame)} bytes")
            if not isinstance(failure, DeviceDisconnected):
                self._recover_endpoint(device)
            raise failure from error
        if len(frame) != FRAME_BYTES:
            raise ProtocolError(f"image: got {len(frame)} bytes, a frame has {FRAME_BYTES}")
        return bytes(frame)

    def _recover_endpoint(self, device: Any) -> None:
        # A stalled or aborted bulk pipe must be cleared before the next frame.
        with contextlib.suppress(usb.core.USBError):
            device.clear_halt(IMAGE_ENDPOINT)


def open_usb(target: str, *, timeout: float = 5.0, backend: Any = None) -> Uru4000Device:
    """Open ``target`` = ``<model>[?bus=N&address=M]``, e.g. ``uru4000b?bus=1``."""
    model, _, query = target.partition("?")
    options: dict[str, int] = {}
    try:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in ("bus", "address"):
                raise ValueError(f"unknown option {key!r}")
            options[key] = int(value, 0)
    except ValueError as error:
        raise DeviceError(
            f"bad USB device URL {target!r}: {error}",
            officer_message="The scanner setting is wrong: check the device URL",
            retryable=False,
        ) from error
    return Uru4000Device(model, backend=backend, timeout=timeout, **options)
