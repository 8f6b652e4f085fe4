"""Assemble and run the matcher's gRPC server: servicer, health, reflection, TLS, access.

Access: with an :class:`~matcher.access.AccessPolicy` every Matcher RPC is checked
against the caller's role and rate limit (:mod:`matcher.interceptors`); without one,
every client may do everything, as a demo on one machine needs, and the log says so
loudly. Retention: with ``audit_retention_days`` the audit trail is purged of older
records at start and then every ``retention_check_s``. Audit key: with ``audit_key`` the
trail's chain is an HMAC that nobody without the key can recompute (:mod:`matcher.audit`).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matcher import decision
from matcher.access import AccessPolicy, ClientIdentity
from matcher.audit import DAY_S, KEYED, AuditKeyError, AuditLog
from matcher.comparator import Comparator
from matcher.index import MERGE_FANOUT
from matcher.interceptors import AccessInterceptor
from matcher.messages import context_from_message
from matcher.prefilter import LshPrefilter
from matcher.ratelimit import RateLimiter
from matcher.service import MatcherServicer
from matcher.store import WatchlistStore
from matcher.template import Finger, TemplateError, make_template
from matcher.watchlist import Watchlist
from protos.ink.v1 import matcher_pb2, matcher_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = matcher_pb2.DESCRIPTOR.services_by_name["Matcher"].full_name
# A two-finger search is a few KB; a bulk enrolment message holds one subject
# (EnrollStream) or a client's batch of them (EnrollBatchStream, some 64 subjects and a
# few hundred KB at most): a larger message is refused with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 1 << 20


def default_data_dir() -> Path:
    """Per-user data folder: $INK_DATA_HOME, else $XDG_DATA_HOME/ink, else ~/.local/share/ink."""
    if os.environ.get("INK_DATA_HOME"):
        return Path(os.environ["INK_DATA_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ink"


def warm_up(comparator: Comparator, prefilter: LshPrefilter | None = None) -> None:
    """Compile (or load from the cache) every kernel a search or an enrolment uses, before
    serving.

    Without this the first officer's search, or the first bulk enrolment, would wait for
    Numba's compiler (some 14 s for enrolment's kernels when the cache is stale).
    """
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    radius = 40 + 3 * np.arange(40)
    template = make_template(150 + radius * np.cos(angles * 3), 200 + radius * np.sin(angles * 3),
                             angles, width=320, height=400)
    encoded = comparator.encode(template)
    # Large enough for the parallel kernel as well as the one that scores small galleries.
    for size in (2, 256):
        comparator.scores(encoded, comparator.stack([encoded] * size))
    # Enrolment builds a batch's cylinders together, on one core or on all.
    for threads in (1, None):
        gallery = comparator.encode_many([template, template.with_finger(Finger.LEFT_INDEX)],
                                         threads=threads)
    if prefilter is not None:
        _warm_up_prefilter(prefilter, encoded, gallery)


def _warm_up_prefilter(prefilter: LshPrefilter, probe, gallery) -> None:
    """The candidate stage's kernels: codes of a batch, its lists, their merges (of as many
    segments as the index merges at once) and a vote."""
    codes = prefilter.codes(gallery)
    lists = prefilter.lists(codes, gallery.offsets)
    rows = gallery.offsets.shape[0] - 1
    for parts in range(1, MERGE_FANOUT + 1):
        prefilter.merged([(lists, np.arange(k * rows, (k + 1) * rows, dtype=np.int32))
                          for k in range(parts)])
    prefilter.candidates(prefilter.codes(probe), lists, np.ones(rows, bool), 1)


def make_comparator(name: str = "mcc") -> Comparator:
    if name == "mcc":
        from matcher.mcc import MccComparator

        return MccComparator()
    raise ValueError(f"unknown comparator {name!r}; known: mcc")


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it


RETENTION_CHECK_S = 3600.0


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    servicer: MatcherServicer
    health: health.HealthServicer
    access: AccessInterceptor | None = None  # counts refusals
    retention: threading.Event | None = None  # set to stop the housekeeping thread

    def stop(self, grace: float | None = 2.0) -> None:
        if self.retention is not None:
            self.retention.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.servicer.watchlist.close()  # saves a snapshot of the index when it changed
        self.servicer.audit.close()


def start_server(
    db_path: Path,
    listen: str = "127.0.0.1:50051",
    *,
    tls: TlsFiles | None = None,
    insecure: bool = False,
    comparator: Comparator | None = None,
    audit_path: Path | None = None,
    workers: int = 8,
    target_fpir: float = decision.DEFAULT_TARGET_FPIR,
    access: AccessPolicy | None = None,
    rate_limiter: RateLimiter | None = None,
    audit_retention_days: float | None = None,
    retention_check_s: float = RETENTION_CHECK_S,
    audit_key: bytes | None = None,
    exhaustive: bool = False,
) -> RunningServer:
    """Open the watchlist, start serving, and return once the port is bound.

    Large watchlists are searched through the LSH candidate stage
    (:class:`matcher.prefilter.LshPrefilter`, from 50,000 eligible fingers); with
    ``exhaustive`` every eligible finger is scored on every search (exact, but linear in
    the watchlist's size).

    With ``audit_key`` (see :func:`matcher.audit.load_audit_key`) the audit trail is
    keyed with HMAC-SHA256 from now on (an ``audit-key`` record marks where); a keyed
    trail refuses to start without its key, or with another.
    """
    if tls is None and not insecure:
        raise ValueError(
            "the matcher serves TLS by default: give --cert and --key, or --insecure for "
            "plain text on a trusted network"
        )
    if tls is None:
        log.warning("SERVING PLAIN TEXT (--insecure): searches and subjects cross the network "
                    "unencrypted and no client is authenticated; for demos and tests only")
    if access is None:
        log.warning("NO ACCESS FILE (--access): every client may call every RPC, including "
                    "Remove; give an access file to restrict clients by certificate")
    elif tls is not None and tls.client_ca is None:
        log.warning("no --client-ca: no client shows a certificate, so every client gets the "
                    "anonymous role %r of %s", access.anonymous_role.label, access.source)
    audit = AuditLog(audit_path or default_audit_path(db_path), key=audit_key)
    scheme = audit.scheme
    if scheme.name == KEYED and audit_key is None:
        audit.close()
        raise AuditKeyError(f"the audit trail {audit.path} is {scheme.describe()}: start the "
                            "matcher with --audit-key FILE (its key), or it could not audit")
    if audit_key is not None:
        try:
            audit.ensure_keyed()
        except BaseException:
            audit.close()
            raise
    else:
        log.warning("UNKEYED AUDIT TRAIL (no --audit-key): whoever can write %s can rewrite "
                    "records and recompute the chain undetected", audit.path)
    try:
        store = WatchlistStore(db_path)
        comparator = comparator or make_comparator()
        prefilter = None if exhaustive else LshPrefilter()
        warm_up(comparator, prefilter)
        watchlist = Watchlist(store, comparator, prefilter=prefilter)
    except BaseException:
        audit.close()
        raise
    servicer = MatcherServicer(watchlist, audit, target_fpir=target_fpir)
    interceptor = AccessInterceptor(access, rate_limiter, on_denied=_audit_denial(audit))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ink-rpc"),
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Handheld links drop silently: probe idle connections, accept client pings.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    matcher_pb2_grpc.add_MatcherServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
            require_client_auth=tls.client_ca is not None,
        )
        port = server.add_secure_port(listen, creds)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not local")
    retention = _start_housekeeping(
        watchlist, audit,
        None if audit_retention_days is None else audit_retention_days * DAY_S,
        retention_check_s,
    )
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, servicer, health_servicer, interceptor, retention)


def default_audit_path(db_path: Path) -> Path:
    """The audit trail lives next to the watchlist: ``<name>.audit.sqlite``."""
    return db_path.with_name(db_path.stem + ".audit.sqlite")


RETENTION_CONTEXT = {"operator_id": "ink-matcher", "device_id": "matcher",
                     "reason": "audit retention"}
EXPIRY_CONTEXT = {"operator_id": "ink-matcher", "device_id": "matcher",
                  "reason": "watchlist expiry"}


def _start_housekeeping(
    watchlist: Watchlist, audit: AuditLog, older_than_s: float | None, every_s: float
) -> threading.Event:
    """Purge expired subjects (and, when set, old audit records) now and every ``every_s``.

    Expired subjects already stop matching at search time; this deletes them from the
    store and the index, and audits the deletion. Returns the event that stops the thread.
    """
    stop = threading.Event()

    def purge_once() -> None:
        try:
            expired = watchlist.purge_expired()
            if expired:
                audit.append("purge-expired", EXPIRY_CONTEXT, {"subjects": expired})
                log.info("watchlist: purged %d expired subjects", expired)
        except Exception:
            log.exception("watchlist: purging expired subjects failed; will try again")
        if older_than_s is None:
            return
        try:
            result = audit.purge(older_than_s, RETENTION_CONTEXT)
            log.info("audit retention: purged %d records older than %.4g days",
                     result.purged, older_than_s / DAY_S)
        except Exception:
            log.exception("audit retention: purge failed; will try again")

    purge_once()

    def loop() -> None:
        while not stop.wait(every_s):
            purge_once()

    threading.Thread(target=loop, name="ink-housekeeping", daemon=True).start()
    return stop


def _audit_denial(audit: AuditLog):
    """Record who tried to call what without the role for it."""
    def record(method: str, client: ClientIdentity, role: str, request, details: dict) -> None:
        ctx: dict = {}
        if request is not None and hasattr(request, "context"):
            try:
                # The device as the request claims it, beside the certificate (client).
                ctx = context_from_message(request.context, required=False)
            except TemplateError:
                ctx = {}
        label = client.label if client.has_certificate else f"peer {client.peer}"
        audit.append("denied", ctx, {"method": method, "role": role, **details}, client=label)

    return record
