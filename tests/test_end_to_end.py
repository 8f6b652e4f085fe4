"""The whole path: emulated R307 on a real pty -> real ZFM driver -> extraction -> real
gRPC on 127.0.0.1 -> MCC over a real SQLite watchlist -> HIT / NO HIT."""

from __future__ import annotations

import shutil

import pytest

from gateway.bulk_enrol import enrol_images
from gateway.capture import CaptureSettings, identify_json, identify_person
from gateway.client import MatcherClient
from gateway.demo import DEMO_DIR, pick_probes
from gateway.devices.registry import open_device
from gateway.emulators.serial_transports import serve_pty
from gateway.emulators.zfm import ZfmEmulator
from gateway.extraction.decode import load_image
from protos.ink.v1 import matcher_pb2 as pb

CTX = pb.Context(operator_id="pc-1", device_id="r307-test", reason="end-to-end test")


@pytest.fixture
def fixture_watchlist(matcher_server, tmp_path):
    """The committed demo watchlist, less a few subjects to keep the test short."""
    folder = tmp_path / "watchlist"
    folder.mkdir()
    mate_subjects = {p.name.split("_")[0] for p in (DEMO_DIR / "probes").glob("S*.png")}
    for path in sorted((DEMO_DIR / "watchlist").glob("*.png")):
        subject = path.name.split("_")[0]
        if subject in mate_subjects or int(subject[1:]) % 3 == 0:
            shutil.copy(path, folder / path.name)
    client = MatcherClient(f"127.0.0.1:{matcher_server.port}", insecure=True, deadline_s=60)
    summary = enrol_images(client, folder, CTX)
    assert summary.failed == 0 and summary.enrolled >= 20
    yield client
    client.close()


def test_enrolled_finger_hits_and_stranger_does_not(fixture_watchlist) -> None:
    probes = pick_probes()
    emulator = ZfmEmulator([load_image(p).image for p, _, _ in probes], model="R307",
                           finger_after_polls=2, source_ppi=500)
    said: list[str] = []
    with serve_pty(emulator) as port:
        for _, finger, expected in probes:
            with open_device(f"zfm:{port.url}") as device:
                outcome = identify_person(device, fixture_watchlist, [finger], CTX,
                                          CaptureSettings(timeout_s=20), said.append)
            answer = identify_json(outcome)
            if expected:
                assert answer["decision"] == "HIT", answer
                assert answer["subject_id"] == expected
                assert answer["matched_finger"] == int(finger)
                assert answer["score"] >= answer["threshold"]
            else:
                assert answer["decision"] == "NO_HIT", answer
    assert any("Place the" in s for s in said)
    assert emulator.images_served == 2
