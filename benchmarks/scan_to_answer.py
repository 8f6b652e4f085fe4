"""Scan-to-answer time of the officer's loop on an emulated R307 at real baud rates.

``python -m benchmarks.scan_to_answer [--scans N] [--baud 115200] [--json]``

A real matcher process serves the fixture watchlist; an emulated R307 on a pseudo-terminal
paces its bytes at the wire rate; the gateway's real driver, extractor and gRPC client run
the identify loop. Reports, per scan and as medians, the whole time from the placement
prompt to the answer and its parts: image upload, extraction, matcher time. The target is
scan-to-answer <= upload + 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from gateway.bulk_enrol import IMAGE_NAME, enrol_images
from gateway.capture import CaptureSettings, identify_person
from gateway.client import MatcherClient
from gateway.demo import DEMO_DIR, start_matcher
from gateway.devices.registry import open_device
from gateway.emulators.serial_transports import serve_pty
from gateway.emulators.zfm import ZfmEmulator
from gateway.extraction.decode import load_image
from matcher.template import Finger
from protos.ink.v1 import matcher_pb2 as pb

CONTEXT = pb.Context(operator_id="bench", device_id="r307-emulated", reason="benchmark")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--baud", type=int, default=115200, choices=[57600, 115200])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    probes = sorted((DEMO_DIR / "probes").glob("*.png"))[: args.scans]
    images = [load_image(p).image for p in probes]
    fingers = [Finger(int(IMAGE_NAME.match(p.stem)["finger"])) for p in probes]
    work = Path(tempfile.mkdtemp(prefix="ink-bench-"))
    proc, address = start_matcher(work / "watchlist.sqlite", work / "matcher.log")
    rows = []
    try:
        with MatcherClient(address, insecure=True, deadline_s=60) as client:
            client.wait_until_serving(60)
            enrol_images(client, DEMO_DIR / "watchlist", CONTEXT, warn=lambda _: None)
            emulator = ZfmEmulator(images, model="R307", finger_after_polls=0, source_ppi=500)
            fast = "" if args.baud == 115200 else "?fast=0"
            with serve_pty(emulator, realtime=True) as port:
                for path, finger in zip(probes, fingers, strict=True):
                    with open_device(f"zfm:{port.url}{fast}") as device:
                        outcome = identify_person(device, client, [finger], CONTEXT,
                                                  CaptureSettings(), lambda _: None)
                    c = outcome.fingers[0]
                    rows.append({
                        "probe": path.name,
                        "scan_to_answer_s": round(outcome.seconds, 3),
                        "upload_s": round(c.upload_seconds, 3),
                        "extract_s": round(c.extract_seconds, 3),
                        "matcher_ms": round(outcome.response.elapsed_ms, 2),
                        "overhead_s": round(outcome.seconds - c.upload_seconds, 3),
                    })
    finally:
        proc.terminate()
        proc.wait(10)
    summary = {
        key: round(statistics.median(r[key] for r in rows), 3)
        for key in ("scan_to_answer_s", "upload_s", "extract_s", "matcher_ms", "overhead_s")
    }
    summary.update(baud=args.baud, scans=len(rows),
                   max_overhead_s=max(r["overhead_s"] for r in rows),
                   target_met=all(r["overhead_s"] <= 1.5 for r in rows))
    if args.json:
        print(json.dumps({"summary": summary, "scans": rows}, sort_keys=True))
    else:
        for r in rows:
            print(f"{r['probe']:>16}: {r['scan_to_answer_s']:.2f} s = upload {r['upload_s']:.2f}"
                  f" s + {r['overhead_s']:.2f} s (extract {r['extract_s']:.2f} s, matcher "
                  f"{r['matcher_ms']:.0f} ms)")
        print(f"median scan-to-answer {summary['scan_to_answer_s']:.2f} s at {args.baud} baud, "
              f"upload {summary['upload_s']:.2f} s; worst overhead "
              f"{summary['max_overhead_s']:.2f} s (target <= 1.5 s: "
              f"{'met' if summary['target_met'] else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
