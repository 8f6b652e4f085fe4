"""`ink-gateway` as an officer uses it: answers, --json, and failures as sentences."""

from __future__ import annotations

import json

import pytest

from gateway.bulk_enrol import enrol_images
from gateway.cli import main
from gateway.client import MatcherClient
from gateway.demo import DEMO_DIR, pick_probes
from gateway.emulators.serial_transports import serve_socket
from gateway.emulators.zfm import ZfmEmulator
from gateway.extraction.decode import load_image
from protos.ink.v1 import matcher_pb2 as pb


@pytest.fixture
def scanner():
    probes = pick_probes()
    emulator = ZfmEmulator([load_image(p).image for p, _, _ in probes], finger_after_polls=1,
                           source_ppi=500)
    with serve_socket(emulator) as server:
        yield server.url, probes


def _identify(device_url: str, matcher: str, finger: int, *extra: str) -> list[str]:
    return ["identify", "--device", f"zfm:{device_url}", "--matcher", matcher, "--insecure",
            "--reason", "test", "--finger", str(finger), "--deadline", "3", *extra]


def test_dead_matcher_gives_a_sentence_not_a_traceback(scanner, capsys) -> None:
    url, probes = scanner
    code = main(_identify(url, "127.0.0.1:1", int(probes[0][1])))
    out, err = capsys.readouterr()
    assert code == 2
    assert "cannot be reached" in err and "Traceback" not in err + out


def test_missing_device_gives_a_sentence(capsys) -> None:
    code = main(["identify", "--device", "zfm:socket://127.0.0.1:1", "--matcher",
                 "127.0.0.1:1", "--insecure", "--reason", "test", "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "error" in json.loads(out)
    assert "Traceback" not in err


def test_identify_json_against_a_real_matcher(scanner, matcher_server, tmp_path, capsys):
    url, probes = scanner
    address = f"127.0.0.1:{matcher_server.port}"
    folder = tmp_path / "wl"
    folder.mkdir()
    mate_path, finger, expected = probes[0]
    for path in (DEMO_DIR / "watchlist").glob(f"{expected}_*.png"):
        (folder / path.name).write_bytes(path.read_bytes())
    for path in sorted((DEMO_DIR / "watchlist").glob("*.png"))[:20]:
        (folder / path.name).write_bytes(path.read_bytes())
    with MatcherClient(address, insecure=True, deadline_s=60) as client:
        ctx = pb.Context(operator_id="t", device_id="t", reason="t")
        assert enrol_images(client, folder, ctx).failed == 0
    code = main(_identify(url, address, int(finger), "--json"))
    out, _ = capsys.readouterr()
    answer = json.loads(out)
    assert code == 0 and answer["decision"] == "HIT" and answer["subject_id"] == expected
    assert answer["upload_seconds"] >= 0 and answer["search_id"]
    code = main(_identify(url, address, int(probes[1][1])))
    out, _ = capsys.readouterr()
    assert code == 1 and out.strip().splitlines()[-1].startswith("NO HIT")


def test_enroll_then_verify_through_the_scanner(matcher_server, capsys) -> None:
    """Custody desk: enrol a subject from two scans, then verify a claim 1:1."""
    from gateway.bulk_enrol import image_subjects

    subject = "S0003"
    enrolment = image_subjects(DEMO_DIR / "watchlist")[subject]
    probe = DEMO_DIR / "probes" / "S0003_2_2.png"
    other = DEMO_DIR / "probes" / "X0001_2_2.png"
    images = [load_image(enrolment[2]).image, load_image(enrolment[7]).image,
              load_image(probe).image, load_image(other).image]
    emulator = ZfmEmulator(images, finger_after_polls=1, source_ppi=500)
    address = f"127.0.0.1:{matcher_server.port}"
    with serve_socket(emulator) as server:
        common = ["--device", f"zfm:{server.url}", "--matcher", address, "--insecure",
                  "--reason", "custody test"]
        assert main(["enroll", "--subject", "P-42", "--finger", "right_index", "--finger",
                     "7", *common]) == 0
        assert "Enrolled P-42: 2 finger(s)" in capsys.readouterr().out
        assert main(["verify", "--subject", "P-42", "--finger", "2", "--json", *common]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["decision"] == "HIT" and answer["matched_finger"] == 2
        assert main(["verify", "--subject", "P-42", "--finger", "2", *common]) == 1
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith("NO MATCH")
        assert main(["verify", "--subject", "nobody", "--finger", "2", *common]) == 2
        assert "not enrolled" in capsys.readouterr().err
