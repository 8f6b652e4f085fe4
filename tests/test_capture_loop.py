"""The officer's capture loop: re-scan prompts on poor images and device faults, then success."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.capture import CaptureFailed, CaptureSettings, capture_finger
from gateway.demo import DEMO_DIR
from gateway.devices.registry import open_device
from gateway.emulators.serial_transports import serve_socket
from gateway.emulators.zfm import ZfmEmulator
from gateway.extraction.decode import load_image
from matcher.template import Finger

GOOD = DEMO_DIR / "probes" / "S0003_2_2.png"


def _blank() -> np.ndarray:
    return np.full((288, 256), 235, np.uint8)  # a sensor with nothing pressed on it


def test_poor_scan_asks_for_a_rescan_then_succeeds() -> None:
    emulator = ZfmEmulator([_blank(), load_image(GOOD).image], finger_after_polls=1,
                           source_ppi=500)
    said: list[str] = []
    with serve_socket(emulator) as server, open_device(f"zfm:{server.url}") as device:
        captured = capture_finger(device, Finger.RIGHT_INDEX, CaptureSettings(timeout_s=10),
                                  said.append)
    assert any("quality" in s.lower() and "place it flat again" in s for s in said)
    assert any("attempt 2" in s for s in said)
    assert captured.template.finger == Finger.RIGHT_INDEX and len(captured.template) >= 6


def test_a_device_fault_is_told_and_the_next_attempt_succeeds() -> None:
    emulator = ZfmEmulator([load_image(GOOD).image], finger_after_polls=1, source_ppi=500,
                           faults=["bad-checksum"])
    said: list[str] = []
    with serve_socket(emulator) as server, open_device(f"zfm:{server.url}") as device:
        captured = capture_finger(device, Finger.RIGHT_INDEX, CaptureSettings(timeout_s=10),
                                  said.append)
    assert len(said) >= 3, said  # prompt, the fault's sentence, the second prompt
    assert "Traceback" not in " ".join(said)
    assert len(captured.template) >= 6


def test_giving_up_after_the_allowed_attempts_says_why() -> None:
    emulator = ZfmEmulator([_blank()], finger_after_polls=0, source_ppi=500)
    with serve_socket(emulator) as server, open_device(f"zfm:{server.url}") as device, \
            pytest.raises(CaptureFailed) as info:
        capture_finger(device, Finger.LEFT_INDEX, CaptureSettings(timeout_s=5, attempts=2),
                       lambda _: None)
    assert "No usable scan after 2 attempts" in info.value.officer_message
