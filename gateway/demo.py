"""``ink-gateway demo``: the whole path on the fixture watchlist, with real parts.

It starts a real matcher process (gRPC on 127.0.0.1) over a fresh SQLite watchlist,
enrols the committed synthetic subjects through the gateway's extractor, starts an
emulated R307 scanner on a pseudo-terminal that serves two probe images at the real baud
rate, and runs the officer's identify loop twice through the real serial driver: once
for a finger on the watchlist (expect HIT) and once for a stranger (expect NO HIT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.bulk_enrol import IMAGE_NAME, enrol_images, image_subjects
from gateway.capture import CaptureSettings, describe_identify, identify_json, identify_person
from gateway.client import MatcherClient
from gateway.extraction.decode import load_image
from gateway.progress import ProgressBar
from matcher.template import Finger
from protos.ink.v1 import matcher_pb2 as pb

DEMO_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "demo"


def pick_probes(demo_dir: Path = DEMO_DIR) -> list[tuple[Path, Finger, str | None]]:
    """A probe of an enrolled finger and one of a stranger: (image, finger, expected id)."""
    enrolled = set(image_subjects(demo_dir / "watchlist"))
    mate = stranger = None
    for path in sorted((demo_dir / "probes").glob("*.png")):
        m = IMAGE_NAME.match(path.stem)
        if not m:
            continue
        finger = Finger(int(m["finger"]))
        if m["subject"] in enrolled and mate is None:
            mate = (path, finger, m["subject"])
        elif m["subject"] not in enrolled and stranger is None:
            stranger = (path, finger, None)
    if mate is None or stranger is None:
        raise FileNotFoundError(f"the demo needs mate and stranger probes in {demo_dir}/probes")
    return [mate, stranger]


def start_matcher(db: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A real ``ink-matcher serve`` process on a free local port."""
    port_file = db.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matcher.cli", "serve", "--db", str(db), "--insecure",
         "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the matcher did not start; see {log_path}:\n"
                               + log_path.read_text()[-2000:])
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def run_demo(json_output: bool = False, keep: Path | None = None) -> int:
    from gateway.devices.registry import open_device
    from gateway.emulators.serial_transports import serve_pty
    from gateway.emulators.zfm import ZfmEmulator

    def say(text: str) -> None:
        print(text, file=sys.stderr if json_output else sys.stdout, flush=True)

    work = keep or Path(tempfile.mkdtemp(prefix="ink-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "watchlist.sqlite"
    probes = pick_probes()
    context = pb.Context(operator_id=os.environ.get("USER", "demo"), device_id="demo-r307",
                         reason="ink-gateway demo")
    say(f"Starting the matcher (watchlist {db})...")
    t0 = time.perf_counter()
    proc, address = start_matcher(db, work / "matcher.log")
    results = []
    try:
        with MatcherClient(address, insecure=True, deadline_s=60) as client:
            client.wait_until_serving(60)
            stats = client.stats()
            if stats.subjects == 0:
                say("Enrolling the fixture watchlist (extracting minutiae from each image)...")
                summary = enrol_images(client, DEMO_DIR / "watchlist", context,
                                       progress=ProgressBar("Enrolling", sys.stderr), warn=say)
                say(f"Enrolled {summary.enrolled} subjects ({summary.failed} failed)")
            say(f"Matcher ready on {address} in {time.perf_counter() - t0:.1f} s")
            images = [load_image(path).image for path, _, _ in probes]
            emulator = ZfmEmulator(images, model="R307", finger_after_polls=2, source_ppi=500)
            with serve_pty(emulator, realtime=True) as port:
                say(f"Emulated R307 scanner on {port.url}")
                for _, finger, expected in probes:
                    who = f"{expected}'s" if expected else "a stranger's"
                    say(f"\n--- Scanning {who} {finger.label} ---")
                    with open_device(f"zfm:{port.url}") as device:
                        outcome = identify_person(
                            device, client, [finger], context,
                            CaptureSettings(timeout_s=20), say,
                            lambda text: ProgressBar(text, sys.stderr),
                        )
                    got = outcome.response
                    correct = (
                        got.decision == pb.DECISION_HIT and got.candidates[0].subject_id
                        == expected
                    ) if expected else got.decision == pb.DECISION_NO_HIT
                    results.append({**identify_json(outcome), "expected": expected or "NO_HIT",
                                    "correct": correct})
                    if not json_output:
                        print(describe_identify(outcome)
                              + ("" if correct else "   <-- WRONG ANSWER"), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if json_output:
        print(json.dumps({"results": results}, sort_keys=True))
    all_correct = all(r["correct"] for r in results)
    say("\nDemo " + ("passed: HIT for the enrolled finger, NO HIT for the stranger."
                     if all_correct else "FAILED: see the answers above."))
    return 0 if all_correct else 1
