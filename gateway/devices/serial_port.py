"""Opening a serial fingerprint module whose baud rate is not known for sure.

Both serial drivers (ZFM family, GT-521F) share this: a baud change made earlier stays in
the module, so a module that does not answer at the expected rate is tried at the others,
within the open deadline. Over TCP (``socket://``) and other URL transports the baud rate
means nothing, so one attempt is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import serial

from gateway.devices.base import DeviceDisconnected, DeviceError, DeviceTimeout, ProtocolError


def open_serial(factory: Callable[..., Any], url: str, baud: int, *, read_timeout: float,
                write_timeout: float) -> Any:
    """A pyserial port for ``url``, or DeviceDisconnected with a sentence for the officer."""
    try:
        return factory(url, baudrate=baud, timeout=read_timeout, write_timeout=write_timeout)
    except (serial.SerialException, OSError, ValueError) as error:
        raise DeviceDisconnected(
            f"cannot open {url}: {error}",
            officer_message="The scanner is not connected: plug it in and try again",
        ) from error


def handshake_at_some_baud(
    url: str,
    first_baud: int,
    fallback_bauds: Iterable[int],
    deadline_s: float,
    open_port: Callable[[int], None],
    handshake: Callable[[], None],
) -> None:
    """Open at ``first_baud`` and shake hands; on silence or garbage try the other rates.

    Raises the last handshake error when no rate answers before the deadline.
    """
    deadline = time.monotonic() + deadline_s
    candidates = [first_baud]
    if "://" not in url:
        candidates += [b for b in fallback_bauds if b != first_baud]
    last_error: DeviceError | None = None
    for attempt, baud in enumerate(candidates):
        if attempt and time.monotonic() >= deadline:
            break
        open_port(baud)
        try:
            handshake()
        except (DeviceTimeout, ProtocolError) as error:
            last_error = error
            continue
        return
    if last_error is not None:
        raise last_error
