"""``ink-matcher``: serve the watchlist over gRPC; check and purge the audit trail."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from matcher import decision
from matcher.access import AccessConfigError, Role, certificate_fingerprint, load_policy
from matcher.allocator import keep_freed_heap
from matcher.audit import load_audit_key
from matcher.server import TlsFiles, default_audit_path, default_data_dir, start_server

KEY_HELP = ("audit key file (owner-only, at least 32 random bytes; make one with "
            "`ink-matcher audit new-key FILE`): chain the audit trail with HMAC-SHA256")


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
    serve.add_argument("--exhaustive", action="store_true",
                       help="score every enrolled finger on every search (exact, but about "
                            "7 s per search at a million fingers) instead of the candidates "
                            "the LSH index selects once the watchlist has 50,000 fingers")
    serve.add_argument("--workers", type=int, default=8, help="concurrent requests")
    serve.add_argument("--port-file", type=Path,
                       help="write the bound port to this file once serving (for scripts)")
    serve.add_argument("--access", type=Path,
                       help="access file (JSON or TOML): roles and rate limits per client "
                            "certificate; without it every client may do everything")
    serve.add_argument("--audit-retention-days", type=float,
                       help="purge audit records older than this, at start and hourly "
                            "(default: keep everything)")
    serve.add_argument("--audit-key", type=Path, metavar="FILE",
                       help=KEY_HELP + "; keys a plain trail from now on")

    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of the audit trail")
    verify.add_argument("--db", type=Path, default=default_data_dir() / "watchlist.sqlite")
    verify.add_argument("--audit-key", type=Path, metavar="FILE",
                        help=KEY_HELP + "; needed to verify a keyed trail")
    verify.add_argument("--json", action="store_true")
    purge = audit_sub.add_parser(
        "purge", help="delete audit records older than a retention period (recorded itself)")
    purge.add_argument("--db", type=Path, default=default_data_dir() / "watchlist.sqlite")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                       help="delete records older than this many days")
    purge.add_argument("--operator",
                       help="who purges, for the purge's own record (default: the OS user)")
    purge.add_argument("--reason", default="retention", help="why, for the record")
    purge.add_argument("--audit-key", type=Path, metavar="FILE",
                       help=KEY_HELP + "; needed to purge a keyed trail")
    purge.add_argument("--json", action="store_true")
    new_key = audit_sub.add_parser(
        "new-key", help="write a new random audit key to a new file readable by you only")
    new_key.add_argument("file", type=Path)

    access = sub.add_parser("access", help="access file tools")
    access_sub = access.add_subparsers(dest="access_command", required=True)
    check = access_sub.add_parser("check", help="read an access file and list its rules")
    check.add_argument("file", type=Path)
    fingerprint = access_sub.add_parser(
        "fingerprint", help="the sha256 of a client certificate, as an access file names it")
    fingerprint.add_argument("cert", type=Path, help="certificate (PEM)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "serve":
        return _serve(args, parser)
    if args.command == "access":
        return _access(args)
    if args.audit_command == "purge":
        return _audit_purge(args)
    if args.audit_command == "new-key":
        return _audit_new_key(args)
    return _audit_verify(args)


def _serve(args, parser) -> int:
    if (args.cert is None) != (args.key is None):
        parser.error("give both --cert and --key for TLS")
    if args.cert is None and not args.insecure:
        parser.error(
            "TLS is the default: give --cert and --key, or --insecure to serve plain text"
        )
    tls = TlsFiles(args.cert, args.key, args.client_ca) if args.cert else None
    # enrolment makes and drops arrays of megabytes batch after batch: keep the heap
    keep_freed_heap()
    try:
        policy = load_policy(args.access) if args.access else None
        running = start_server(
            args.db, args.listen, tls=tls, insecure=args.insecure,
            target_fpir=args.target_fpir, workers=args.workers, access=policy,
            audit_retention_days=args.audit_retention_days,
            audit_key=load_audit_key(args.audit_key) if args.audit_key else None,
            exhaustive=args.exhaustive,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ink-matcher: cannot start: {exc}", file=sys.stderr)
        return 2
    subjects, fingers = running.servicer.watchlist.counts()
    host = args.listen.rsplit(":", 1)[0]
    print(
        f"ink-matcher serving on {host}:{running.port} "
        f"({'TLS' if tls else 'plain text'}); watchlist {args.db}: {subjects} subjects, "
        f"{fingers} fingers; access: {policy.source if policy else 'OPEN to every client'}",
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


def _open_audit(db: Path, key_file: Path | None):
    from matcher.audit import AuditError, AuditLog

    path = default_audit_path(db)
    if not path.exists():
        print(f"ink-matcher: no audit trail at {path}", file=sys.stderr)
        return None
    try:
        return AuditLog(path, key=load_audit_key(key_file) if key_file else None)
    except AuditError as exc:
        print(f"ink-matcher: {exc}", file=sys.stderr)
        return None


def _audit_verify(args) -> int:
    from matcher.audit import AuditKeyError

    log = _open_audit(args.db, args.audit_key)
    if log is None:
        return 2
    try:
        problems = log.verify()
    except AuditKeyError as exc:
        # Not a verdict on the records: they could not be checked at all.
        print(f"ink-matcher: cannot verify: {exc}", file=sys.stderr)
        return 2
    count = len(log.records())
    head_seq, head_hash = log.head()
    scheme = log.scheme
    if args.json:
        print(json.dumps({"records": count, "intact": not problems, "head_seq": head_seq,
                          "head_hash": head_hash, "scheme": scheme.name,
                          "keyed_from": scheme.keyed_from or None,
                          "key_id": scheme.key_id or None,
                          "problems": [{"seq": p.seq, "message": p.message} for p in problems]}))
    elif problems:
        for p in problems:
            print(f"record {p.seq}: {p.message}" if p.seq else p.message)
    else:
        # Noting the head elsewhere lets a later check see records cut off the end.
        print(f"audit trail intact: {count} records, {scheme.describe()}; "
              f"head {head_seq} {head_hash}")
    return 1 if problems else 0


def _audit_new_key(args) -> int:
    from matcher.audit import key_id, new_audit_key

    try:
        key = new_audit_key(args.file)
    except OSError as exc:
        print(f"ink-matcher: cannot create {args.file}: {exc.strerror} (an existing key is "
              "never overwritten)", file=sys.stderr)
        return 2
    print(f"wrote a new audit key to {args.file} (key id {key_id(key)}); keep a copy where "
          "the auditors can reach it: without it the trail cannot be verified")
    return 0


def _audit_purge(args) -> int:
    from matcher.audit import DAY_S, AuditError

    if not args.older_than >= 0:
        print("ink-matcher: --older-than must be zero or more days", file=sys.stderr)
        return 2
    log = _open_audit(args.db, args.audit_key)
    if log is None:
        return 2
    context = {"operator_id": args.operator or _os_user(),
               "device_id": f"cli@{socket.gethostname()}", "reason": args.reason}
    try:
        result = log.purge(args.older_than * DAY_S, context, client="local ink-matcher audit purge")
    except AuditError as exc:
        print(f"ink-matcher: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"purged": result.purged, "anchor_seq": result.anchor_seq,
                          "anchor_hash": result.anchor_hash, "record": result.record_id}))
    else:
        print(f"purged {result.purged} audit records older than {args.older_than:g} days; "
              f"the chain now starts after record {result.anchor_seq}")
    return 0


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _access(args) -> int:
    if args.access_command == "fingerprint":
        try:
            print(certificate_fingerprint(args.cert.read_bytes()))
        except (OSError, ValueError) as exc:
            print(f"ink-matcher: cannot read a PEM certificate from {args.cert}: {exc}",
                  file=sys.stderr)
            return 2
        return 0
    try:
        policy = load_policy(args.file)
    except AccessConfigError as exc:
        print(f"ink-matcher: {exc}", file=sys.stderr)
        return 2
    limit = policy.rate_limit
    print(f"anonymous clients: {policy.anonymous_role.label}; unlisted certificates: "
          f"{policy.unlisted_role.label}; default search limit: "
          f"{f'{limit.per_second:g}/s, burst {limit.burst:g}' if limit else 'none'}")
    for rule in policy.clients:
        own = policy.rate_limit if rule.inherits_rate_limit else rule.rate_limit
        may_name = rule.role >= Role.CUSTODY if rule.name_devices is None else rule.name_devices
        device = repr(rule.device_id) if rule.device_id else "= its certificate's CN"
        print(f"  {rule.selector} = {rule.value}: {rule.role.label}"
              f"{f', {own.per_second:g}/s burst {own.burst:g}' if own else ', no limit'}"
              f"; device {device}{', may name others' if may_name else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
