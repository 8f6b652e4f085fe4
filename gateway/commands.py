"""The handlers behind each ``ink-gateway`` command (argument parsing is in cli.py).

Every handler prints for a person by default and one JSON object with ``--json``, and
returns an exit code: 0 done (or HIT), 1 NO HIT / no match, 2 failed. Failures print the
officer-facing sentence, never a traceback.
"""

from __future__ import annotations

import sys
import time

from gateway.capture import (
    CaptureFailed,
    CaptureSettings,
    capture_finger,
    describe_identify,
    identify_json,
    identify_person,
)
from gateway.cli import EXIT_FAILED, EXIT_NO_HIT, EXIT_OK, context_from_args, print_json
from gateway.client import ClientTls, MatcherClient, MatcherError
from gateway.devices.base import DeviceError
from gateway.progress import ProgressBar
from matcher.template import Finger
from protos.ink.v1 import matcher_pb2 as pb


def _say(args):
    # With --json, stdout holds only the JSON object; prompts go to stderr.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda text: print(text, file=stream, flush=True)


def _client(args) -> MatcherClient:
    tls = None if args.insecure else ClientTls(args.ca, args.cert, args.key)
    return MatcherClient(args.matcher, tls=tls, insecure=args.insecure,
                         deadline_s=args.deadline)


def _fail(args, message: str) -> int:
    if getattr(args, "json", False):
        print_json({"error": message})
    else:
        print(f"ink-gateway: {message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_devices(args) -> int:
    from dataclasses import asdict

    from gateway.devices.discovery import format_devices, list_devices

    found = list_devices(probe=not args.no_probe)
    if args.json:
        print_json({"devices": [asdict(d) for d in found]})
    elif not found:
        print("No scanners found. Check the cable; serial bridges appear as /dev/ttyUSB* "
              "or /dev/ttyACM*.")
    else:
        print(format_devices(found))
    return EXIT_OK


def cmd_emulate(args) -> int:
    from gateway.emulators.serial_transports import run_emulator

    if not args.images.is_dir():
        return _fail(args, f"{args.images} is not a folder of images")
    run_emulator(args.images, kind=args.kind, model=args.model, socket_address=args.socket,
                 faults=args.fault, realtime=not args.no_realtime)
    return EXIT_OK


def _open(args):
    from gateway.devices.registry import open_device

    return open_device(args.device)


def _fingers(args, default=(Finger.RIGHT_INDEX,)) -> list[Finger]:
    return list(args.finger or default)


def _settings(args) -> CaptureSettings:
    return CaptureSettings(timeout_s=args.timeout, extractor=args.extractor)


def _progress_factory(args):
    stream = sys.stderr
    return lambda label: ProgressBar(label, stream)


def cmd_identify(args) -> int:
    say = _say(args)
    try:
        with _open(args) as device, _client(args) as client:
            outcome = identify_person(
                device, client, _fingers(args), context_from_args(args, device.info.url),
                _settings(args), say, _progress_factory(args),
            )
    except (DeviceError, CaptureFailed, MatcherError) as exc:
        return _fail(args, exc.officer_message)
    if args.json:
        print_json(identify_json(outcome))
    else:
        print(describe_identify(outcome), flush=True)
    return EXIT_OK if outcome.response.decision == pb.DECISION_HIT else EXIT_NO_HIT


def cmd_verify(args) -> int:
    say = _say(args)
    start = time.perf_counter()
    try:
        with _open(args) as device, _client(args) as client:
            captured = [
                capture_finger(device, f, _settings(args), say,
                               _progress_factory(args)(f"Reading {f.label}"))
                for f in _fingers(args)
            ]
            say("Checking the claimed identity...")
            r = client.verify(args.subject, [c.template for c in captured],
                              context_from_args(args, device.info.url))
    except (DeviceError, CaptureFailed, MatcherError) as exc:
        return _fail(args, exc.officer_message)
    seconds = time.perf_counter() - start
    match = r.decision == pb.DECISION_HIT
    if args.json:
        print_json({"decision": "HIT" if match else "NO_HIT", "subject_id": args.subject,
                    "score": r.score, "threshold": r.threshold,
                    "matched_finger": int(r.matched_finger), "seconds": round(seconds, 3),
                    "search_id": r.search_id})
    elif match:
        print(f"MATCH: this is {args.subject} ({Finger(r.matched_finger).label}, score "
              f"{r.score:.1f}, needed {r.threshold:.1f}) in {seconds:.1f} s")
    else:
        print(f"NO MATCH: this is not shown to be {args.subject} (score {r.score:.1f}, needed "
              f"{r.threshold:.1f}) in {seconds:.1f} s")
    return EXIT_OK if match else EXIT_NO_HIT


def cmd_enroll(args) -> int:
    say = _say(args)
    if len(set(args.finger)) != len(args.finger):
        return _fail(args, "each finger may be given once")
    try:
        with _open(args) as device, _client(args) as client:
            captured = [
                capture_finger(device, f, _settings(args), say,
                               _progress_factory(args)(f"Reading {f.label}"))
                for f in args.finger
            ]
            r = client.enroll(args.subject, [c.template for c in captured],
                              context_from_args(args, device.info.url), replace=args.replace)
    except (DeviceError, CaptureFailed, MatcherError) as exc:
        return _fail(args, exc.officer_message)
    if args.json:
        print_json({"subject_id": r.subject_id, "fingers": r.fingers, "replaced": r.replaced})
    else:
        print(f"Enrolled {r.subject_id}: {r.fingers} finger(s)"
              + (" (replaced the earlier enrolment)" if r.replaced else ""))
    return EXIT_OK


def cmd_enroll_images(args) -> int:
    from gateway.bulk_enrol import enrol_images

    if not args.folder.is_dir():
        return _fail(args, f"{args.folder} is not a folder")
    try:
        with _client(args) as client:
            summary = enrol_images(
                client, args.folder, context_from_args(args, "enroll-images"),
                ppi=args.ppi, extractor=args.extractor, replace=args.replace,
                progress=ProgressBar("Extracting", sys.stderr),
                warn=lambda text: print(text, file=sys.stderr),
            )
    except FileNotFoundError as exc:
        return _fail(args, str(exc))
    except MatcherError as exc:
        return _fail(args, exc.officer_message)
    return _print_summary(args, summary)


def cmd_enroll_templates(args) -> int:
    from gateway.bulk_enrol import enrol_templates

    if not args.folder.is_dir():
        return _fail(args, f"{args.folder} is not a folder")
    skipped = 0

    def warn(text: str) -> None:
        nonlocal skipped
        skipped += 1
        print(text, file=sys.stderr, flush=True)

    try:
        with _client(args) as client:
            summary = enrol_templates(
                client, args.folder, context_from_args(args, "enroll-templates"),
                replace=args.replace, progress=ProgressBar("Enrolling", sys.stderr),
                warn=warn,
            )
    except FileNotFoundError as exc:
        return _fail(args, str(exc))
    except MatcherError as exc:
        return _fail(args, exc.officer_message)
    return _print_summary(args, summary, skipped)


def _print_summary(args, summary: pb.EnrollSummary, skipped: int | None = None) -> int:
    """A bulk enrolment's outcome; failed when any subject or file was refused."""
    if args.json:
        out = {"enrolled": summary.enrolled, "failed": summary.failed,
               "failures": [{"subject_id": f.subject_id, "message": f.message}
                            for f in summary.failures]}
        if skipped is not None:
            out["skipped_files"] = skipped
        print_json(out)
    else:
        print(f"Enrolled {summary.enrolled} subjects; {summary.failed} failed"
              + (f"; {skipped} files skipped" if skipped else ""))
        for f in summary.failures:
            print(f"  {f.subject_id}: {f.message}")
    return EXIT_OK if summary.failed == 0 and not skipped else EXIT_FAILED


def cmd_show(args) -> int:
    import cv2
    import numpy as np

    from gateway.extraction import extract
    from gateway.extraction.decode import load_image
    from gateway.extraction.overlay import draw_overlay

    try:
        image, ppi = load_image(args.image, args.ppi)
    except (ValueError, OSError) as exc:
        return _fail(args, str(exc))
    from gateway.extraction.detector_extraction import front_stages
    from gateway.extraction.params import DEFAULT_PARAMS

    try:
        template = extract(image, ppi, args.extractor)
    except ValueError as exc:
        return _fail(args, str(exc))
    # Every extractor works inside the same segmentation mask: draw it too.
    mask = front_stages(image, ppi, DEFAULT_PARAMS).mask
    mask = cv2.resize(mask.astype(np.uint8), (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_NEAREST).astype(bool)
    picture = draw_overlay(image, template, mask)
    if not cv2.imwrite(str(args.out), picture):
        return _fail(args, f"cannot write {args.out}")
    print(f"{len(template)} minutiae, image quality {template.image_quality}; drawn to {args.out}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from gateway.demo import run_demo

    return run_demo(json_output=args.json, keep=args.keep)
