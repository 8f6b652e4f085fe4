"""Find scanners attached to this machine (behind ``ink-gateway devices``).

Serial ports come from ``serial.tools.list_ports.comports()`` and are named by the
USB-UART bridge's VID:PID; a bridge says nothing about the sensor behind it, so with
``probe=True`` each bridge port is opened and handshaken (VfyPwd, ReadSysPara,
ReadProdInfo) to confirm a ZFM-family module and its model, and failing that with the
GT-521F's Open command. USB image sensors with a known VID:PID come from
``usb.core.find(find_all=True)`` when libusb is present; without libusb that part is
skipped, never an error. Ports and USB devices can be injected, so
all of this is testable without hardware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.devices.base import DeviceError

log = logging.getLogger(__name__)

# USB-UART bridges that fingerprint modules sit behind (reference section 1.2).
BRIDGES: dict[str, str] = {
    "10c4:ea60": "Silabs CP2102/CP2104",
    "10c4:ea70": "Silabs CP2105",
    "1a86:7523": "WCH CH340",
    "1a86:7522": "WCH CH340K",
    "1a86:5523": "WCH CH341",
    "1a86:55d4": "WCH CH9102/CH343",
    "0403:6001": "FTDI FT232R",
    "067b:2303": "Prolific PL2303",
}

# USB image sensors with an open protocol (reference section 2.3).
USB_SCANNERS: dict[str, str] = {
    "061a:0110": "Veridicom 5thSense",
    "05ba:0007": "DigitalPersona U.are.U 4000",
    "05ba:0008": "DigitalPersona U.are.U 4000",
    "05ba:000a": "DigitalPersona U.are.U 4000B",
    "0483:2015": "UPEK TouchChip",
    "147e:3001": "UPEK TouchChip",
}

# USB scanners the gateway has a driver for: VID:PID -> device URL.
USB_URLS: dict[str, str] = {
    "05ba:000a": "usb:uru4000b",
}


@dataclass(frozen=True)
class FoundDevice:
    """One candidate scanner.

    ``port`` is the serial device path or ``usb:BUS:ADDRESS``; ``bridge`` the USB-UART
    bridge's name when the VID:PID is a known one; ``sensor`` the model a handshake
    confirmed (or the known USB scanner's name), None when nothing was confirmed;
    ``url`` what :func:`gateway.devices.registry.open_device` opens, when there is one.
    """

    port: str
    vid_pid: str | None
    description: str
    bridge: str | None
    sensor: str | None = None
    url: str | None = None
    serial_number: str | None = None


def _vid_pid(vid: int | None, pid: int | None) -> str | None:
    if vid is None or pid is None:
        return None
    return f"{vid:04x}:{pid:04x}"


def probe_zfm(port: str, *, timeout: float = 2.0) -> str | None:
    """The model of a ZFM-family module answering on ``port``, or None.

    Leaves the module's baud rate alone (no SetSysPara) and closes the port again.
    """
    from gateway.devices.zfm import ZfmDevice

    try:
        device = ZfmDevice(port, fast_baud=False, timeout=timeout)
    except DeviceError as error:
        log.debug("no ZFM module on %s: %s", port, error)
        return None
    with device:
        return device.info.model


def probe_gt521(port: str, *, timeout: float = 2.0) -> str | None:
    """The model of a GT-521F module answering Open on ``port``, or None.

    Leaves the module's baud rate alone (no ChangeBaudrate) and closes the port again.
    """
    from gateway.devices.gt521 import Gt521Device

    try:
        device = Gt521Device(port, fast_baud=False, timeout=timeout)
    except DeviceError as error:
        log.debug("no GT-521F module on %s: %s", port, error)
        return None
    with device:
        return device.info.model


def probe_serial_sensor(port: str, *, timeout: float = 2.0) -> str | None:
    """Which sensor answers on ``port``: a ZFM-family model, a GT-521F model, or None."""
    return probe_zfm(port, timeout=timeout) or probe_gt521(port, timeout=timeout)


def scheme_for_sensor(sensor: str) -> str:
    """The device-URL scheme of a sensor model a probe confirmed."""
    return "gt521" if sensor.upper().startswith("GT-521") else "zfm"


def list_devices(
    *,
    probe: bool = True,
    ports: Iterable[Any] | None = None,
    usb_devices: Iterable[Any] | None = None,
    prober: Callable[[str], str | None] = probe_serial_sensor,
) -> list[FoundDevice]:
    """Serial ports and known USB scanners, bridge ports confirmed by handshake.

    ``ports`` defaults to ``comports()`` (objects with ``device``, ``vid``, ``pid``,
    ``description``, ``serial_number``); ``usb_devices`` to ``usb.core.find`` (objects
    with ``idVendor``, ``idProduct``, ``bus``, ``address``). Only ports behind a known
    bridge are probed: writing to an unknown serial device (a modem, a GPS) is rude.
    """
    if ports is None:
        from serial.tools import list_ports

        ports = list_ports.comports()
    found: list[FoundDevice] = []
    for info in ports:
        vid_pid = _vid_pid(getattr(info, "vid", None), getattr(info, "pid", None))
        bridge = BRIDGES.get(vid_pid) if vid_pid else None
        sensor = prober(info.device) if probe and bridge else None
        found.append(FoundDevice(
            port=info.device,
            vid_pid=vid_pid,
            description=getattr(info, "description", None) or "",
            bridge=bridge,
            sensor=sensor,
            url=f"{scheme_for_sensor(sensor)}:{info.device}" if sensor else None,
            serial_number=getattr(info, "serial_number", None),
        ))
    for device in _usb_devices() if usb_devices is None else usb_devices:
        vid_pid = _vid_pid(device.idVendor, device.idProduct)
        name = USB_SCANNERS.get(vid_pid or "")
        if name is None:
            continue
        found.append(FoundDevice(
            port=f"usb:{getattr(device, 'bus', 0)}:{getattr(device, 'address', 0)}",
            vid_pid=vid_pid,
            description=name,
            bridge=None,
            sensor=name,
            url=_usb_url(vid_pid, device),
        ))
    return found


def _usb_url(vid_pid: str | None, device: Any) -> str | None:
    base = USB_URLS.get(vid_pid or "")
    if base is None:
        return None
    return f"{base}?bus={getattr(device, 'bus', 0)}&address={getattr(device, 'address', 0)}"


def _usb_devices() -> list[Any]:
    try:
        import usb.core

        return list(usb.core.find(find_all=True))
    # NoBackendError without libusb, USBError on permissions: listing is best effort.
    except Exception as error:
        log.debug("USB listing unavailable: %s", error)
        return []


def format_devices(devices: Iterable[FoundDevice]) -> str:
    """A table for a person: port, VID:PID, bridge, confirmed sensor, URL."""
    lines = []
    for d in devices:
        sensor = d.sensor or "(not confirmed)"
        lines.append(f"{d.port:<22} {d.vid_pid or '-':<10} {d.bridge or d.description:<28} "
                     f"{sensor:<16} {d.url or ''}".rstrip())
    return "\n".join(lines) if lines else "No serial ports or known USB scanners found."
