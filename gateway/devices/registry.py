"""Open any scanner from one device URL: ``<scheme>:<target>``.

``zfm:/dev/ttyUSB0``, ``zfm:socket://127.0.0.1:7000?baud=115200``; a bare device path
or a bare pyserial URL (``socket://``, ``rfc2217://`` ...) means a ZFM module. Drivers are
imported only when their scheme is used, so a missing optional dependency of one driver
never stops another from opening. Other drivers add themselves to ``_OPENERS`` (module
and function name) or call :func:`register_scheme`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from gateway.devices.base import Device, DeviceError

Opener = Callable[..., Device]

# scheme -> (module, function); each function takes (target: str, *, timeout: float).
_OPENERS: dict[str, tuple[str, str]] = {
    "zfm": ("gateway.devices.zfm", "open_zfm"),
    "gt521": ("gateway.devices.gt521", "open_gt521"),
    "usb": ("gateway.devices.usb_uru4000", "open_usb"),
    "file": ("gateway.devices.files", "open_files"),
}
_REGISTERED: dict[str, Opener] = {}
# pyserial URL schemes that, without a driver prefix, mean "a ZFM module there".
_SERIAL_URL_SCHEMES = ("socket://", "rfc2217://", "spy://", "hwgrep://", "loop://")


def register_scheme(scheme: str, opener: Opener) -> None:
    """Make ``scheme:<target>`` open with ``opener(target, *, timeout)``."""
    _REGISTERED[scheme.lower()] = opener


def schemes() -> list[str]:
    """Every scheme :func:`open_device` accepts."""
    return sorted(set(_OPENERS) | set(_REGISTERED))


def split_device_url(url: str) -> tuple[str, str]:
    """``"zfm:/dev/ttyUSB0"`` -> ``("zfm", "/dev/ttyUSB0")``; bare paths mean zfm."""
    text = url.strip()
    if not text:
        raise _bad_url(url, "the device URL is empty")
    if text.startswith("/") or text.startswith("."):
        return "zfm", text
    if text.lower().startswith(_SERIAL_URL_SCHEMES):
        return "zfm", text
    scheme, sep, target = text.partition(":")
    # A Windows port name (COM3) has no colon; a drive letter is one character.
    if not sep or len(scheme) == 1:
        if text.upper().startswith("COM"):
            return "zfm", text
        raise _bad_url(url, "it names no device type")
    return scheme.lower(), target


def open_device(url: str, *, timeout: float = 5.0) -> Device:
    """Open and handshake the scanner at ``url``; ``timeout`` bounds the whole opening."""
    scheme, target = split_device_url(url)
    opener = _REGISTERED.get(scheme)
    if opener is None and scheme in _OPENERS:
        module_name, function_name = _OPENERS[scheme]
        opener = getattr(importlib.import_module(module_name), function_name)
    if opener is None:
        raise _bad_url(url, f"unknown device type {scheme!r}")
    if not target:
        raise _bad_url(url, f"{scheme}: needs a port or path after the colon")
    return opener(target, timeout=timeout)


def _bad_url(url: str, why: str) -> DeviceError:
    known = ", ".join(f"{s}:" for s in schemes())
    return DeviceError(
        f"cannot open device {url!r}: {why}; known device types: {known} "
        "(a bare path or socket:// URL means zfm:)",
        officer_message="The scanner setting is wrong: check the device URL",
        retryable=False,
    )
