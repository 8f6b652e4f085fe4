"""``ink-gateway``: scanners, captures and searches from the command line.

Commands: ``devices`` (list attached scanners), ``emulate`` (an emulated scanner for tests
and demos), ``identify`` / ``verify`` / ``enroll`` (capture and ask the matcher),
``enroll-images`` / ``enroll-templates`` (bulk enrolment from image or ISO/ANSI template
files), ``show`` (draw what the extractor
found) and ``demo`` (the whole path on the fixture watchlist).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from matcher.template import Finger

EXIT_OK, EXIT_NO_HIT, EXIT_FAILED = 0, 1, 2


def _finger(text: str) -> Finger:
    try:
        value = int(text)
    except ValueError:
        key = text.strip().upper().replace(" ", "_").replace("-", "_")
        if key in Finger.__members__:
            return Finger[key]
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finger: use an FGP code 1..10 or a name like right_index"
        ) from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError("finger codes are 0 (unknown) and 1..10")
    return Finger(value)


def _add_matcher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--matcher", default="127.0.0.1:50051", help="matcher address host:port")
    p.add_argument("--insecure", action="store_true", help="plain text, no TLS")
    p.add_argument("--ca", type=Path, help="CA certificate that signed the matcher's")
    p.add_argument("--cert", type=Path, help="this device's client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, help="this device's client key")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds to wait for the matcher")


def _add_context_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operator", default=None, help="operator id (default: login name)")
    p.add_argument("--device-id", default=None,
                   help="device id (default: with --cert the certificate's, else the device URL)")
    p.add_argument("--reason", required=True, help="why this search or change is made (audited)")
    p.add_argument("--case", default="", help="case reference")


def _add_capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True,
                   help="scanner URL, e.g. zfm:/dev/ttyUSB0 or zfm:socket://127.0.0.1:7000")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a finger")
    p.add_argument("--extractor", default=None, help="minutiae extractor (default: the best)")
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ink-gateway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("devices", help="list attached scanners")
    p.add_argument("--no-probe", action="store_true",
                   help="do not send a handshake to identify the sensor behind a bridge")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("emulate", help="run an emulated scanner serving real images")
    p.add_argument("kind", choices=["zfm", "gt521"], help="device family to emulate")
    p.add_argument("--images", type=Path, required=True, help="folder of fingerprint images")
    p.add_argument("--model", default=None,
                   help="zfm: R307 (256x288, default) or R503 (192x192); gt521: GT-521F52")
    p.add_argument("--socket", metavar="HOST:PORT",
                   help="serve on TCP (socket://) instead of a pseudo-terminal")
    p.add_argument("--fault", action="append", default=[], help="inject a fault (repeatable)")
    p.add_argument("--no-realtime", action="store_true",
                   help="send bytes as fast as possible instead of at the baud rate")

    p = sub.add_parser("identify", help="scan a person's finger(s) and search the watchlist")
    _add_capture_args(p)
    _add_matcher_args(p)
    _add_context_args(p)
    p.add_argument("--finger", type=_finger, action="append",
                   help="finger(s) to scan, in order (default: right index; repeat for two)")

    p = sub.add_parser("verify", help="scan and check a claimed identity 1:1")
    _add_capture_args(p)
    _add_matcher_args(p)
    _add_context_args(p)
    p.add_argument("--subject", required=True, help="the claimed subject id")
    p.add_argument("--finger", type=_finger, action="append")

    p = sub.add_parser("enroll", help="scan fingers of a subject and enrol them")
    _add_capture_args(p)
    _add_matcher_args(p)
    _add_context_args(p)
    p.add_argument("--subject", required=True, help="subject id to enrol")
    p.add_argument("--finger", type=_finger, action="append", required=True,
                   help="finger to scan (repeat for each, up to ten)")
    p.add_argument("--replace", action="store_true", help="replace an enrolled subject")

    p = sub.add_parser("enroll-images", help="enrol subjects from image files "
                       "named <subject>_<finger>_<impression>.<ext>")
    p.add_argument("folder", type=Path)
    p.add_argument("--ppi", type=float, default=500.0)
    p.add_argument("--extractor", default=None)
    p.add_argument("--replace", action="store_true")
    p.add_argument("--json", action="store_true")
    _add_matcher_args(p)
    _add_context_args(p)

    p = sub.add_parser("enroll-templates", help="enrol subjects from ISO 19794-2 (.iso) or "
                       "ANSI 378 (.ist) template files named <subject>_<finger>_<impression>")
    p.add_argument("folder", type=Path)
    p.add_argument("--replace", action="store_true", help="replace enrolled subjects")
    p.add_argument("--json", action="store_true")
    _add_matcher_args(p)
    _add_context_args(p)

    p = sub.add_parser("show", help="draw the mask and minutiae the extractor finds")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--ppi", type=float, default=None)
    p.add_argument("--extractor", default=None)

    p = sub.add_parser("demo", help="the whole path on the fixture watchlist, end to end")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, default=None,
                   help="folder for the demo watchlist (default: a temporary one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import commands
    from matcher.allocator import keep_freed_heap

    # the gateway extracts image after image: keep the heap its temporaries come from
    keep_freed_heap()

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return EXIT_FAILED


def context_from_args(args, device_url: str = ""):
    from protos.ink.v1 import matcher_pb2 as pb

    # With a client certificate the matcher takes the device id from it (an empty id
    # asks for that); naming another device would be refused.
    certified = getattr(args, "cert", None) is not None
    return pb.Context(
        operator_id=args.operator or getpass.getuser(),
        device_id=args.device_id or ("" if certified else device_url or "ink-gateway"),
        reason=args.reason,
        case_reference=args.case,
    )


def print_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
