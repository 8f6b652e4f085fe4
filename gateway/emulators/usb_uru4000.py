"""An emulated U.are.U 4000B behind a ``usb.backend.IBackend``, for the real pyusb driver.

:class:`Uru4000Emulator` is the device model (registers, interrupt events, image frames,
faults) and :class:`EmulatedUsbBackend` the pyusb backend that hands it to
``usb.core.find(backend=...)``, so :mod:`gateway.devices.usb_uru4000` runs unchanged,
through pyusb's own descriptor parsing, interface claiming and endpoint dispatch. The
backend logs every control, interrupt and bulk transfer (:attr:`Uru4000Emulator.log`) so a
test can assert the exact sequence. Interrupt reads block up to their timeout while no
event is queued, as on hardware, so a test thread can place the finger later; bulk reads
never wait. Images are served in order, rescaled from their source resolution and
cropped or padded to the 384 x 289 sensor.

Faults map the serial ones onto USB: a bad checksum is a CRC error the host controller
gives up on (EIO), stray bytes are spurious interrupt packets, a truncated frame ends
with an early short packet, a timeout is a frame that never comes, no finger is no
finger-on event, and an unplug drops the device mid-frame (ENODEV), after which it
re-enumerates at a new address.
"""

from __future__ import annotations

import array
import errno
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import usb.backend
import usb.core

from gateway.devices.usb_uru4000 import (
    FRAME_BYTES,
    HWSTAT_POWER_DOWN,
    IMAGE_ENDPOINT,
    IMAGE_HEADER,
    IMAGE_HEIGHT,
    IMAGE_PPI,
    IMAGE_WIDTH,
    IRQ_ENDPOINT,
    IRQ_LENGTH,
    PRODUCT_ID,
    REGISTER_REQUEST,
    VENDOR_ID,
    Event,
    Mode,
    Register,
)
from gateway.emulators.zfm import fit_image, load_images
from gateway.extraction.decode import load_image

# Interrupt packets a confused device (or a bouncing finger) sends unasked.
STRAY_EVENTS = (0x1234, int(Event.FINGER_OFF))


class Fault(StrEnum):
    """Injectable faults; each queued fault fires once, at the first point it applies."""

    BAD_CHECKSUM = "bad-checksum"  # a CRC error mid-frame: the bulk read fails with EIO
    STRAY_BYTES = "stray-bytes"  # spurious interrupt packets before the finger-on event
    TRUNCATED = "truncated"  # the next frame ends early with a short packet
    TIMEOUT = "timeout"  # the next frame never comes: the bulk read times out
    NO_FINGER = "no-finger"  # the next wait for a finger sees no finger-on event
    UNPLUG = "unplug"  # the device vanishes half way through the next frame


@dataclass(frozen=True)
class Transfer:
    """One logged transfer.

    ``kind`` is "ctrl_in", "ctrl_out", "intr_in" or "bulk_in" (or a setup step:
    "set_configuration", "claim_interface", "release_interface"); ``endpoint`` is the
    endpoint address, or the request code for control transfers; ``value`` the register
    (wValue); ``length`` the bytes asked for or written; ``data`` what moved (truncated
    to 16 bytes for frames).
    """

    kind: str
    endpoint: int = 0
    value: int = 0
    length: int = 0
    data: bytes = b""


def _descriptors(address: int) -> SimpleNamespace:
    """Device, configuration, interface and endpoint descriptors of a 4000B."""
    endpoints = [
        SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=IRQ_ENDPOINT,
                        bmAttributes=3, wMaxPacketSize=64, bInterval=1, bRefresh=0,
                        bSynchAddress=0, extra_descriptors=[]),
        SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=IMAGE_ENDPOINT,
                        bmAttributes=2, wMaxPacketSize=512, bInterval=0, bRefresh=0,
                        bSynchAddress=0, extra_descriptors=[]),
    ]
    interface = SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=0,
                                bAlternateSetting=0, bNumEndpoints=len(endpoints),
                                bInterfaceClass=0xFF, bInterfaceSubClass=0xFF,
                                bInterfaceProtocol=0xFF, iInterface=0, extra_descriptors=[])
    configuration = SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=9 + 9 + 14,
                                    bNumInterfaces=1, bConfigurationValue=1,
                                    iConfiguration=0, bmAttributes=0xA0, bMaxPower=50,
                                    extra_descriptors=[])
    device = SimpleNamespace(bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0,
                             bDeviceSubClass=0, bDeviceProtocol=0, bMaxPacketSize0=64,
                             idVendor=VENDOR_ID, idProduct=PRODUCT_ID, bcdDevice=0x0100,
                             iManufacturer=0, iProduct=0, iSerialNumber=0,
                             bNumConfigurations=1, address=address, bus=1, port_number=2,
                             port_numbers=(2,), speed=3)
    return SimpleNamespace(device=device, configuration=configuration, interface=interface,
                           endpoints=endpoints)


class Uru4000Emulator:
    """The U.are.U 4000B device model: registers, events, frames and faults.

    ``images`` is a sequence of grey images or a folder of image files, served in order
    and cycled; ``source_ppi`` rescales them to the sensor's 512 ppi. The finger is on
    the sensor whenever the driver waits for it, unless :meth:`lift_finger` was called
    (then :meth:`place_finger` puts it back and wakes a waiting read).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | str | Path,
        *,
        source_ppi: float | None = None,
        faults: Iterable[Fault | str] = (),
        address: int = 5,
        device_info: bytes = bytes.fromhex("00010203040506070809a0b0c0d0e0f0"),
    ) -> None:
        self._images: list[np.ndarray | Path] = (
            list(load_images(images)) if isinstance(images, str | Path) else list(images)
        )
        if not self._images:
            raise ValueError("the emulator needs at least one image")
        self._scale = 1.0 if source_ppi is None else IMAGE_PPI / source_ppi
        self.address = address
        self.descriptors = _descriptors(address)
        self.registers: dict[int, int] = {Register.HWSTAT: 0x84, Register.MODE: Mode.INIT}
        self.device_info = device_info
        self.plugged = True
        self.configuration = 0
        self.log: list[Transfer] = []
        self.images_served = 0
        self._finger = True
        self._events: deque[bytes] = deque()
        self._frame: bytes = b""
        self._frame_fault: Fault | None = None
        self._next_image = 0
        self._faults: list[Fault] = []
        self._changed = threading.Condition()
        self.inject(*faults)

    # -- control, for tests and the demo --------------------------------------------
    def place_finger(self) -> None:
        """Put the finger on; a driver waiting for it is woken."""
        with self._changed:
            self._finger = True
            if self.registers[Register.MODE] == Mode.AWAIT_FINGER_ON:
                self._queue_event(Event.FINGER_ON)

    def lift_finger(self) -> None:
        """Take the finger off until :meth:`place_finger`."""
        with self._changed:
            self._finger = False

    def inject(self, *faults: Fault | str) -> None:
        """Queue faults; each fires once, at the next point where it applies."""
        with self._changed:
            self._faults.extend(Fault(f) for f in faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """Faults queued and not yet fired."""
        with self._changed:
            return list(self._faults)

    def replug(self) -> None:
        """The device comes back after an unplug, at the next bus address."""
        with self._changed:
            self.plugged = True
            self.address += 1
            self.descriptors = _descriptors(self.address)
            self.registers = {Register.HWSTAT: 0x84, Register.MODE: Mode.INIT}
            self.configuration = 0
            self._events.clear()
            self._frame = b""

    # -- what the backend calls -------------------------------------------------------
    def check_plugged(self) -> None:
        """Raise ENODEV, as libusb does, once the device is gone."""
        if not self.plugged:
            raise usb.core.USBError("No such device (it may have been disconnected)",
                                    -4, errno.ENODEV)

    def record(self, transfer: Transfer) -> None:
        """Add a transfer to the log."""
        with self._changed:
            self.log.append(transfer)

    def control(self, request_type: int, request: int, value: int, index: int,
                data: array.array) -> int:
        """A control transfer on endpoint 0; IN fills ``data``."""
        with self._changed:
            self.check_plugged()
            incoming = bool(request_type & 0x80)
            if request != REGISTER_REQUEST or request_type & 0x60 != 0x40:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            if incoming:
                answer = self._read_register(value, len(data))
                data[:len(answer)] = array.array("B", answer)
                self.log.append(Transfer("ctrl_in", request, value, len(data), answer))
                return len(answer)
            written = bytes(data)
            self.log.append(Transfer("ctrl_out", request, value, len(written), written))
            if written:
                self._write_register(value, written[0])
            return len(written)

    def read(self, endpoint: int, buffer: array.array, timeout_ms: int) -> int:
        """An interrupt or bulk IN transfer into ``buffer``; returns the byte count."""
        with self._changed:
            self.check_plugged()
            if endpoint == IRQ_ENDPOINT:
                return self._read_event(buffer, timeout_ms)
            if endpoint == IMAGE_ENDPOINT:
                return self._read_frame(buffer)
            raise usb.core.USBError("Pipe error", -9, errno.EPIPE)

    # -- registers and events -----------------------------------------------------------
    def _read_register(self, register: int, length: int) -> bytes:
        if register == Register.DEVICE_INFO:
            return self.device_info[:length]
        return bytes([self.registers.get(register, 0)]) + bytes(max(0, length - 1))

    def _write_register(self, register: int, value: int) -> None:
        old = self.registers.get(register, 0)
        self.registers[register] = value
        if register == Register.HWSTAT and old & HWSTAT_POWER_DOWN and not value & \
                HWSTAT_POWER_DOWN:
            self._queue_event(Event.SCAN_POWER_ON)
        elif register == Register.MODE:
            self._enter_mode(value)

    def _enter_mode(self, mode: int) -> None:
        if mode == Mode.AWAIT_FINGER_ON:
            if self._take(Fault.STRAY_BYTES):
                for event in STRAY_EVENTS:
                    self._queue_event(event)
            if self._take(Fault.NO_FINGER):
                return
            if self._finger:
                self._queue_event(Event.FINGER_ON)
        elif mode == Mode.CAPTURE:
            self._frame = self._next_frame()
            self._frame_fault = next((f for f in self._faults if f in _FRAME_FAULTS), None)
            if self._frame_fault is not None:
                self._faults.remove(self._frame_fault)
        elif mode == Mode.AWAIT_FINGER_OFF:
            # The person lifts the finger once the scanner has the image.
            self._queue_event(Event.FINGER_OFF)

    def _queue_event(self, event: int) -> None:
        self._events.append(event.to_bytes(2, "big") + bytes(IRQ_LENGTH - 2))
        self._changed.notify_all()

    def _read_event(self, buffer: array.array, timeout_ms: int) -> int:
        if not self._events:
            self._changed.wait(timeout_ms / 1000)
        self.check_plugged()
        if not self._events:
            self.log.append(Transfer("intr_in", IRQ_ENDPOINT, 0, len(buffer)))
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        event = self._events.popleft()
        count = min(len(buffer), len(event))
        buffer[:count] = array.array("B", event[:count])
        self.log.append(Transfer("intr_in", IRQ_ENDPOINT, 0, len(buffer), event[:2]))
        return count

    # -- frames -------------------------------------------------------------------------
    def _next_frame(self) -> bytes:
        source = self._images[self._next_image % len(self._images)]
        self._next_image += 1
        pixels = (load_image(source).image if isinstance(source, Path) else source)
        image = fit_image(pixels, IMAGE_WIDTH, IMAGE_HEIGHT, self._scale)
        header = b"UareU-4000B-emul".ljust(IMAGE_HEADER, b"\x00")
        return header + image.tobytes()

    def _read_frame(self, buffer: array.array) -> int:
        fault, frame = self._frame_fault, self._frame
        if not frame or fault == Fault.TIMEOUT:
            self._frame_fault, self._frame = None, b""
            self.log.append(Transfer("bulk_in", IMAGE_ENDPOINT, 0, len(buffer)))
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        sent = FRAME_BYTES - len(frame)
        if sent >= FRAME_BYTES // 2 and fault in (Fault.BAD_CHECKSUM, Fault.UNPLUG):
            self._frame_fault, self._frame = None, b""
            self.log.append(Transfer("bulk_in", IMAGE_ENDPOINT, 0, len(buffer)))
            if fault == Fault.UNPLUG:
                self.plugged = False
                self._changed.notify_all()
                self.check_plugged()
            raise usb.core.USBError("Input/Output Error", -1, errno.EIO)
        count = min(len(buffer), len(frame))
        if fault == Fault.TRUNCATED and sent >= FRAME_BYTES // 2:
            # An early short packet: the device thinks the frame is done.
            count, frame = min(count, 100), frame[:100]
            self._frame_fault = None
        chunk = frame[:count]
        buffer[:count] = array.array("B", chunk)
        self._frame = frame[count:]
        if not self._frame and fault is None:
            self.images_served += 1
        self.log.append(Transfer("bulk_in", IMAGE_ENDPOINT, 0, len(buffer), chunk[:16]))
        return count

    def _take(self, fault: Fault) -> bool:
        if fault in self._faults:
            self._faults.remove(fault)
            return True
        return False


_FRAME_FAULTS = (Fault.BAD_CHECKSUM, Fault.TRUNCATED, Fault.TIMEOUT, Fault.UNPLUG)


class EmulatedUsbBackend(usb.backend.IBackend):
    """A pyusb backend whose only device is ``emulator`` (while it is plugged in)."""

    def __init__(self, emulator: Uru4000Emulator) -> None:
        self.emulator = emulator

    def enumerate_devices(self) -> Iterator[Uru4000Emulator]:
        return iter([self.emulator] if self.emulator.plugged else [])

    def get_device_descriptor(self, dev: Uru4000Emulator) -> Any:
        return dev.descriptors.device

    def get_configuration_descriptor(self, dev: Uru4000Emulator, config: int) -> Any:
        if config:
            raise IndexError(config)
        return dev.descriptors.configuration

    def get_interface_descriptor(self, dev: Uru4000Emulator, intf: int, alt: int,
                                 config: int) -> Any:
        # pyusb walks alternate settings until this raises.
        if intf or alt or config:
            raise IndexError((intf, alt, config))
        return dev.descriptors.interface

    def get_endpoint_descriptor(self, dev: Uru4000Emulator, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        return dev.descriptors.endpoints[ep]

    def open_device(self, dev: Uru4000Emulator) -> Uru4000Emulator:
        dev.check_plugged()
        return dev

    def close_device(self, dev_handle: Uru4000Emulator) -> None:
        pass

    def set_configuration(self, dev_handle: Uru4000Emulator, config_value: int) -> None:
        dev_handle.check_plugged()
        dev_handle.configuration = config_value
        dev_handle.record(Transfer("set_configuration", 0, config_value))

    def get_configuration(self, dev_handle: Uru4000Emulator) -> int:
        return dev_handle.configuration

    def claim_interface(self, dev_handle: Uru4000Emulator, intf: int) -> None:
        dev_handle.check_plugged()
        dev_handle.record(Transfer("claim_interface", 0, intf))

    def release_interface(self, dev_handle: Uru4000Emulator, intf: int) -> None:
        dev_handle.record(Transfer("release_interface", 0, intf))

    def is_kernel_driver_active(self, dev_handle: Uru4000Emulator, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: Uru4000Emulator, intf: int) -> None:
        pass

    def clear_halt(self, dev_handle: Uru4000Emulator, ep: int) -> None:
        dev_handle.check_plugged()
        dev_handle.record(Transfer("clear_halt", ep))

    def ctrl_transfer(self, dev_handle: Uru4000Emulator, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: array.array, timeout: int) -> int:
        return dev_handle.control(bmRequestType, bRequest, wValue, wIndex, data)

    def bulk_read(self, dev_handle: Uru4000Emulator, ep: int, intf: int, buff: array.array,
                  timeout: int) -> int:
        return dev_handle.read(ep, buff, timeout)

    def intr_read(self, dev_handle: Uru4000Emulator, ep: int, intf: int, buff: array.array,
                  timeout: int) -> int:
        return dev_handle.read(ep, buff, timeout)
