"""``ink-matcher``: serve the watchlist over gRPC, and check the audit trail."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from matcher import decision
from matcher.server import TlsFiles, default_data_dir, start_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ink-matcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the watchlist over gRPC")
    serve.add_argument("--db", type=Path, default=default_data_dir() / "watchlist.sqlite",
                       help="watchlist SQLite file (default: %(default)s)")
    serve.add_argument("--listen", default="127.0.0.1:50051",
                       help="address to listen on, host:port; port 0 picks a free one")
    serve.add_argument("--cert", type=Path, help="TLS certificate chain (PEM)")
    serve.add_argument("--key", type=Path, help="TLS private key (PEM)")
    serve.add_argument("--client-ca", type=Path,
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--insecure", action="store_true",
                       help="serve plain text, without TLS (trusted networks and demos only)")
    serve.add_argument("--target-fpir", type=float, default=decision.DEFAULT_TARGET_FPIR,
                       help="accepted false positive identification rate (default %(default)s)")
    serve.add_argument("--workers", type=int, default=8, help="concurrent requests")
    serve.add_argument("--port-file", type=Path,
                       help="write the bound port to this file once serving (for scripts)")

    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of the audit trail")
    verify.add_argument("--db", type=Path, default=default_data_dir() / "watchlist.sqlite")
    verify.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "serve":
        return _serve(args, parser)
    return _audit_verify(args)


def _serve(args, parser) -> int:
    if (args.cert is None) != (args.key is None):
        parser.error("give both --cert and --key for TLS")
    if args.cert is None and not args.insecure:
        parser.error(
            "TLS is the default: give --cert and --key, or --insecure to serve plain text"
        )
    tls = TlsFiles(args.cert, args.key, args.client_ca) if args.cert else None
    try:
        running = start_server(
            args.db, args.listen, tls=tls, insecure=args.insecure,
            target_fpir=args.target_fpir, workers=args.workers,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ink-matcher: cannot start: {exc}", file=sys.stderr)
        return 2
    subjects, fingers = running.servicer.watchlist.counts()
    host = args.listen.rsplit(":", 1)[0]
    print(
        f"ink-matcher serving on {host}:{running.port} "
        f"({'TLS' if tls else 'plain text'}); watchlist {args.db}: {subjects} subjects, "
        f"{fingers} fingers",
        flush=True,
    )
    if args.port_file:
        args.port_file.write_text(str(running.port))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    running.stop()
    return 0


def _audit_verify(args) -> int:
    from matcher.audit import AuditLog

    path = args.db.with_name(args.db.stem + ".audit.sqlite")
    if not path.exists():
        print(f"ink-matcher: no audit trail at {path}", file=sys.stderr)
        return 2
    log = AuditLog(path)
    problems = log.verify()
    count = len(log.records())
    if args.json:
        print(json.dumps({"records": count, "intact": not problems,
                          "problems": [{"seq": p.seq, "message": p.message} for p in problems]}))
    elif problems:
        for p in problems:
            print(f"record {p.seq}: {p.message}")
    else:
        print(f"audit trail intact: {count} records")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
