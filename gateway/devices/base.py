"""The device interface every scanner driver implements, and the errors it raises.

A driver turns one finger placement into a :class:`Scan`: an 8-bit grey image as the
sensor saw it (ridges dark, 0 = black), its resolution, and which device took it. Failures
are :class:`DeviceError` subclasses that carry a message for the officer holding the
scanner and say whether trying again can help, so the capture loop never has to guess
from an exception type or show a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class DeviceInfo:
    """What a scanner is and how to reach it again.

    ``kind`` is the driver family ("zfm", "gt521", "usb", "file"), ``model`` the sensor
    model as the device reports it or as its geometry implies (e.g. "R307", "R503"),
    ``url`` the string that :func:`gateway.devices.registry.open_device` accepts to
    reopen it, and ``details`` driver-specific facts (baud, packet size, capacity ...).
    """

    kind: str
    model: str
    url: str
    serial_number: str | None = None
    # Excluded from the hash so a DeviceInfo stays usable as a dict key.
    details: dict[str, Any] = field(default_factory=dict, hash=False)


# eq=False: comparing two images element-wise has no single truth value.
@dataclass(frozen=True, eq=False)
class Scan:
    """One captured image: uint8, H x W, 0 = black, ridges dark as on the sensor."""

    image: np.ndarray
    ppi: float
    device: DeviceInfo
    upload_seconds: float = 0.0


class DeviceError(Exception):
    """A scanner failure, with what to tell the person and whether a retry can help.

    ``str(error)`` is the technical detail for logs; ``officer_message`` is the sentence
    for the screen. Subclasses set sensible defaults for both attributes.
    """

    default_officer_message = "The scanner reported a problem: try the scan again"
    default_retryable = True

    def __init__(
        self,
        detail: str = "",
        *,
        officer_message: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.officer_message: str = officer_message or self.default_officer_message
        self.retryable: bool = self.default_retryable if retryable is None else retryable
        super().__init__(detail or self.officer_message)


class NoFinger(DeviceError):
    """No finger was placed on the sensor before the capture timeout."""

    default_officer_message = (
        "No finger detected: place the finger flat on the sensor and try again"
    )


class DeviceTimeout(DeviceError):
    """The device stopped answering within the allowed time."""

    default_officer_message = (
        "The scanner did not answer in time: check its cable and try the scan again"
    )


class DeviceDisconnected(DeviceError):
    """The link to the device went away (cable pulled, port vanished)."""

    default_officer_message = (
        "The scanner was disconnected: reconnect it and try the scan again"
    )


class ProtocolError(DeviceError):
    """The device sent bytes that do not make a valid, expected message."""

    default_officer_message = (
        "The scanner sent garbled data: try the scan again; "
        "if this keeps happening, reconnect the scanner"
    )


@runtime_checkable
class Device(Protocol):
    """A scanner that can capture one finger image at a time.

    Drivers may inherit from this class to get the context-manager methods.
    """

    info: DeviceInfo

    def capture(
        self,
        *,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scan:
        """Wait up to ``timeout`` seconds for a finger, then read its image.

        ``progress(done_bytes, total_bytes)`` is called while the image is transferred.
        Raises :class:`NoFinger` when no finger came in time, and other
        :class:`DeviceError` subclasses for link and device failures.
        """
        ...

    def close(self) -> None:
        """Release the device; safe to call more than once."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
