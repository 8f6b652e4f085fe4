"""Device discovery: bridges by VID:PID, sensors confirmed by a real handshake on a pty."""

from __future__ import annotations

import os
import tty
from types import SimpleNamespace

import numpy as np
import pytest
from serial.tools.list_ports_common import ListPortInfo

from gateway.devices.discovery import (
    FoundDevice,
    _usb_devices,
    format_devices,
    list_devices,
    probe_zfm,
)
from gateway.devices.registry import open_device
from gateway.emulators.serial_transports import serve_pty
from gateway.emulators.zfm import ZfmEmulator


def port_info(device: str, vid: int | None, pid: int | None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid = vid, pid
    info.description = "USB Serial"
    return info


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (192, 192), dtype=np.uint8)


def test_bridge_port_is_confirmed_by_handshake(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], model="R503")
    with serve_pty(emulator) as server:
        [found] = list_devices(ports=[port_info(server.url, 0x10C4, 0xEA60)], usb_devices=[])
        assert found == FoundDevice(port=server.url, vid_pid="10c4:ea60",
                                    description="USB Serial",
                                    bridge="Silabs CP2102/CP2104", sensor="R503",
                                    url=f"zfm:{server.url}")
        # Discovery must not change the module's baud rate behind the user's back.
        assert emulator.baud == 57600
        # What discovery hands out opens as a device.
        assert found.url is not None
        with open_device(found.url) as device:
            assert device.capture().image.shape == (192, 192)


def test_silent_bridge_port_is_listed_unconfirmed() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        path = os.ttyname(slave)
        [found] = list_devices(ports=[port_info(path, 0x1A86, 0x7523)], usb_devices=[],
                               prober=lambda port: probe_zfm(port, timeout=0.5))
    finally:
        os.close(master)
        os.close(slave)
    assert (found.bridge, found.sensor, found.url) == ("WCH CH340", None, None)


def test_only_bridge_ports_are_probed_and_only_when_asked() -> None:
    probed: list[str] = []

    def prober(port: str) -> str | None:
        probed.append(port)
        return "R307"

    ports = [port_info("/dev/ttyS0", None, None), port_info("/dev/ttyACM0", 0x2341, 0x0043),
             port_info("/dev/ttyUSB0", 0x0403, 0x6001)]
    found = list_devices(ports=ports, usb_devices=[], prober=prober)
    assert probed == ["/dev/ttyUSB0"]
    assert [d.sensor for d in found] == [None, None, "R307"]
    assert found[2].bridge == "FTDI FT232R" and found[1].vid_pid == "2341:0043"
    unprobed = list_devices(probe=False, ports=ports, usb_devices=[], prober=prober)
    assert probed == ["/dev/ttyUSB0"] and unprobed[2].sensor is None


def test_known_usb_scanners_are_listed_others_ignored() -> None:
    devices = [SimpleNamespace(idVendor=0x05BA, idProduct=0x000A, bus=1, address=7),
               SimpleNamespace(idVendor=0x046D, idProduct=0xC52B, bus=1, address=3)]
    [found] = list_devices(ports=[], usb_devices=devices)
    assert (found.port, found.vid_pid, found.sensor) == (
        "usb:1:7", "05ba:000a", "DigitalPersona U.are.U 4000B")
    assert "usb:1:7" in format_devices([found])


def test_usb_listing_survives_a_missing_libusb() -> None:
    # On a machine without libusb, usb.core.find raises NoBackendError.
    assert isinstance(_usb_devices(), list)
    assert isinstance(list_devices(probe=False, ports=[]), list)
