"""Audit trail: one append-only, hash-chained record per search or change.

A record says who did what, from which device and client certificate, why, when and
what came back (decision, candidate subject ids, latency). It never holds biometric
data: no templates, no minutiae, no images. Each record carries the SHA-256 of the
previous one, so a deleted, edited or reordered record breaks the chain and
:meth:`AuditLog.verify` finds it.

Retention: :meth:`AuditLog.purge` deletes the records older than a cut-off, oldest
first. The chain stays verifiable because the hash of the last purged record is kept as
the new anchor, and the purge itself appends a record that names that anchor; deleted
content is overwritten (``secure_delete``) and the write-ahead log is emptied, so purged
records are gone from the file, not just hidden.

Keyed chain: a plain SHA-256 chain shows accidents and clumsy edits, but whoever can
write the SQLite file can also recompute every hash after an edit. With a secret key
(:func:`load_audit_key`, ``--audit-key FILE``) each record's link is an HMAC-SHA256
instead, which nobody without the key can recompute. The ``meta`` table records the
scheme: ``sha256`` (the default, and every trail written before keys existed), or
``hmac-sha256`` from a record on. The first write with a key keys the trail from then
on: it appends an ``audit-key`` record (naming the key's id, never the key), and older
records stay verifiable as the plain chain they are. A keyed trail cannot be written or
verified without its key, and a wrong key is refused by its id before anything is
checked; given a key, :meth:`AuditLog.verify` also reports a trail that is (or claims to
be) unkeyed, since rewriting a keyed trail as an unkeyed one is the one forgery left.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
DAY_S = 86_400.0
PLAIN = "sha256"
KEYED = "hmac-sha256"
MIN_KEY_BYTES = 32
# A record's stored text (json.dumps with these arguments, its encoder made once).
_RECORD_TEXT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
KEY_CONTEXT = {"operator_id": "ink-matcher", "device_id": "matcher",
               "reason": "audit trail keyed"}


class AuditError(RuntimeError):
    """The audit trail cannot be written; nothing may be answered without a record."""


class AuditKeyError(AuditError):
    """The audit key is missing, wrong for this trail, or kept in an unsafe file."""


def load_audit_key(path: str | Path) -> bytes:
    """The secret in a key file, refused (as ssh refuses a private key) unless owner-only.

    The key is the file's content without surrounding whitespace, at least 32 bytes; make
    one with :func:`new_audit_key` (``ink-matcher audit new-key FILE``).
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise AuditKeyError(f"the audit key {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise AuditKeyError(
                f"permissions {mode:04o} for the audit key {path} are too open: other users "
                f"could read it and forge audit records. Run: chmod 600 {path}")
        if info.st_uid not in (os.getuid(), 0):
            raise AuditKeyError(
                f"the audit key {path} belongs to another user (uid {info.st_uid}); it must "
                "belong to the user that runs the matcher")
        key = path.read_bytes().strip()
    except OSError as exc:
        raise AuditKeyError(f"cannot read the audit key {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"the audit key {path} holds {len(key)} bytes; a key needs at least "
            f"{MIN_KEY_BYTES} random bytes: make one with `ink-matcher audit new-key FILE`")
    return key


def new_audit_key(path: str | Path) -> bytes:
    """Write a new random key (64 hex digits) to a new owner-only file; returns the key."""
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key + b"\n")
    return key


def key_id(key: bytes) -> str:
    """A short public name for a key: tells keys apart without revealing them."""
    return hmac.new(key, b"ink audit key id", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class ChainScheme:
    """How the trail's links are computed."""

    name: str  # PLAIN or KEYED
    keyed_from: int = 0  # first keyed record (KEYED only)
    key_id: str = ""  # the id of its key (KEYED only)

    def describe(self) -> str:
        if self.name == KEYED:
            return f"keyed (HMAC-SHA256, key id {self.key_id}) from record {self.keyed_from}"
        return "unkeyed (plain SHA-256 chain)"


@dataclass(frozen=True)
class AuditProblem:
    """Where the chain breaks and how."""

    seq: int
    message: str


@dataclass(frozen=True)
class PurgeResult:
    purged: int
    anchor_seq: int  # the last purged record (0: nothing was ever purged)
    anchor_hash: str
    record_id: str  # the purge's own audit record


class AuditLog:
    """Append-only audit records in their own SQLite file, optionally keyed (see above)."""

    def __init__(self, path: str | Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self._key = key
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Purged records are overwritten on disk, not only unlinked from the b-tree.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, record TEXT NOT NULL, "
                "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS anchor (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "seq INTEGER NOT NULL, hash TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            # Trails from before keys existed have no scheme row: they are plain chains.
            if self._db.execute("SELECT 1 FROM meta WHERE name = 'scheme'").fetchone() is None:
                self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
                                 ("scheme", PLAIN))
            scheme = self._scheme()
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(
                f"cannot open the audit trail {self.path}: {exc}. Check that the folder is "
                "writable and the disk is not full."
            ) from None
        if scheme.name == KEYED and key is not None and key_id(key) != scheme.key_id:
            self._db.close()
            raise AuditKeyError(
                f"the audit key given is not the key the audit trail {self.path} is written "
                f"with (key id {key_id(key)}; the trail's is {scheme.key_id}): check which "
                "key file belongs to this matcher")
        self._lock = threading.Lock()

    def ensure_keyed(self) -> None:
        """With a key, key a plain trail now (rather than at its next record)."""
        if self._key is None:
            return

        def key_now() -> None:
            if self._scheme().name != KEYED:
                self._start_keyed_part()

        with self._lock:
            self._transaction("key the audit trail", key_now)

    @property
    def scheme(self) -> ChainScheme:
        """The trail's scheme as its file says now."""
        with self._lock:
            return self._scheme()

    def append(self, action: str, context: dict, outcome: dict, *, client: str = "") -> str:
        """Write one record; returns its id (quoted to the caller as the search id)."""
        record_id = uuid.uuid4().hex
        record = _record(record_id, action, context, outcome, client)
        with self._lock:
            self._transaction(f"record the {action}", lambda: self._insert(record))
        return record_id

    def append_many(self, entries: Sequence[tuple[str, dict, dict]], *, client: str = ""
                    ) -> list[str]:
        """Write ``(action, context, outcome)`` records in one durable transaction (one
        sync for a batch of enrolments rather than one each); returns their ids."""
        records = [_record(uuid.uuid4().hex, action, context, outcome, client)
                   for action, context, outcome in entries]

        def insert_all() -> None:
            # The scheme and the chain's head are read once: the write transaction holds
            # the file, so nobody else can change them until it ends.
            self._ready_to_write()
            self._append_rows(records, self._key)

        if records:
            with self._lock:
                self._transaction(f"record {len(records)} {records[0]['action']}s", insert_all)
        return [r["id"] for r in records]

    def purge(self, older_than_s: float, context: dict, *, now: float | None = None,
              client: str = "") -> PurgeResult:
        """Delete records older than ``older_than_s`` seconds and record the purge."""
        if not older_than_s >= 0:
            raise ValueError("the retention period must be zero or more seconds")
        now = time.time() if now is None else now
        cutoff = now - older_than_s
        record_id = uuid.uuid4().hex
        result: list[PurgeResult] = []

        def purge() -> None:
            last_seq, last_hash, count = None, None, 0
            # Only a prefix of the chain can go, so it stays one unbroken chain.
            for seq, text, digest in self._db.execute(
                    "SELECT seq, record, hash FROM audit ORDER BY seq"):
                if json.loads(text)["time"] >= cutoff:
                    break
                last_seq, last_hash, count = seq, digest, count + 1
            if last_seq is None:
                anchor = self._anchor()
            else:
                self._db.execute("DELETE FROM audit WHERE seq <= ?", (last_seq,))
                self._db.execute("INSERT OR REPLACE INTO anchor (id, seq, hash) VALUES (1, ?, ?)",
                                 (last_seq, last_hash))
                anchor = (last_seq, last_hash)
            outcome = {"purged": count, "older_than_days": round(older_than_s / DAY_S, 4),
                       "anchor_seq": anchor[0], "anchor_hash": anchor[1]}
            self._insert(_record(record_id, "purge", context, outcome, client, now))
            result.append(PurgeResult(count, anchor[0], anchor[1], record_id))

        with self._lock:
            self._transaction("purge the audit trail", purge)
            # Empty the write-ahead log, which still holds the purged pages; when readers
            # hold it open this fails and the next checkpoint empties it.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result[0]

    def records(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM audit ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest record: note it elsewhere to detect a cut-off tail."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            return (row[0], row[1]) if row else self._anchor()

    def verify(self) -> list[AuditProblem]:
        """Walk the chain; an empty list means every record is intact and in order.

        Raises AuditKeyError when the trail is keyed and this log was opened without its
        key: without it, the keyed records cannot be checked at all.
        """
        with self._lock:
            scheme = self._scheme()
            anchor_seq, anchor_hash = self._anchor()
            rows = self._db.execute(
                "SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq"
            ).fetchall()
        keyed = scheme.name == KEYED
        if keyed:
            self._check_key(scheme, "verify")
        problems = []
        if not keyed and self._key is not None:
            problems.append(AuditProblem(
                0, "the trail is not keyed, although a key was given: either it was never "
                   "written with this key, or someone with write access rewrote it as a plain "
                   "SHA-256 chain, which cannot reveal edits"))
        prev, expected_seq = anchor_hash, anchor_seq + 1
        purge_anchors = set()
        actions: dict[int, str] = {}
        for seq, text, prev_hash, digest in rows:
            if seq != expected_seq:
                problems.append(AuditProblem(seq, f"records {expected_seq}..{seq - 1} missing"))
            if prev_hash != prev:
                problems.append(AuditProblem(seq, "does not follow the record before it"))
            key = self._key if keyed and seq >= scheme.keyed_from else None
            if not hmac.compare_digest(_chain_hash(prev_hash, seq, text, key), digest):
                problems.append(AuditProblem(seq, "content was changed after it was written"))
            else:
                record = json.loads(text)
                actions[seq] = record.get("action", "")
                if record.get("action") == "purge":
                    out = record.get("outcome", {})
                    purge_anchors.add((out.get("anchor_seq"), out.get("anchor_hash")))
            prev, expected_seq = digest, seq + 1
        if anchor_seq and (anchor_seq, anchor_hash) not in purge_anchors:
            problems.append(AuditProblem(
                anchor_seq + 1,
                f"records 1..{anchor_seq} are gone but no recorded purge accounts for them"))
        # The keyed part must begin with its own (authenticated) record; otherwise the
        # scheme row was moved to pass forged plain records off as the old unkeyed part.
        if keyed and scheme.keyed_from > anchor_seq \
                and actions.get(scheme.keyed_from) != "audit-key":
            problems.append(AuditProblem(
                scheme.keyed_from,
                f"the trail says it is keyed from record {scheme.keyed_from}, but that is not "
                "an intact audit-key record: the scheme was tampered with"))
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- internals ----------------------------------------------------------------
    def _anchor(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM anchor WHERE id = 1").fetchone()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def _scheme(self) -> ChainScheme:
        meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("scheme", PLAIN) == PLAIN:
            return ChainScheme(PLAIN)
        try:
            keyed_from = int(meta.get("keyed_from", 1))
        except ValueError:
            keyed_from = 1  # a mangled row: verify then reports every plain record
        return ChainScheme(KEYED, keyed_from, meta.get("key_id", ""))

    def _check_key(self, scheme: ChainScheme, what: str) -> None:
        if self._key is None:
            raise AuditKeyError(
                f"the audit trail {self.path} is {scheme.describe()}: give its key "
                f"(--audit-key FILE) to {what} it")
        if key_id(self._key) != scheme.key_id:
            raise AuditKeyError(
                f"the audit key given (key id {key_id(self._key)}) is not the key of the "
                f"audit trail {self.path} (key id {scheme.key_id})")

    def _insert(self, record: dict) -> None:
        self._ready_to_write()
        self._append_rows([record], self._key)

    def _ready_to_write(self) -> None:
        """Check (or, with a key, start) the keyed part before appending records."""
        # The scheme is read inside the write transaction: another process (a purge from
        # the command line) may have keyed the trail since this one opened it.
        scheme = self._scheme()
        if scheme.name == KEYED:
            self._check_key(scheme, "write to")
        elif self._key is not None:
            self._start_keyed_part()

    def _start_keyed_part(self) -> None:
        seq, _ = self._last()
        kid = key_id(self._key)
        for name, value in (("scheme", KEYED), ("keyed_from", str(seq)), ("key_id", kid)):
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                             (name, value))
        self._append_rows([_record(uuid.uuid4().hex, "audit-key", KEY_CONTEXT,
                                   {"scheme": KEYED, "key_id": kid, "unkeyed_before": seq},
                                   "ink-matcher")], self._key)

    def _last(self) -> tuple[int, str]:
        """(seq the next record takes, hash it links to)."""
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0] + 1, row[1]) if row else self._next_after_anchor()

    def _append_rows(self, records: Sequence[dict], key: bytes | None) -> None:
        """Chain records after the newest one, in order, with one statement."""
        seq, prev = self._last()
        rows = []
        for record in records:
            text = _RECORD_TEXT.encode(record)
            digest = _chain_hash(prev, seq, text, key)
            rows.append((seq, text, prev, digest))
            seq, prev = seq + 1, digest
        self._db.executemany(
            "INSERT INTO audit (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)", rows)

    def _next_after_anchor(self) -> tuple[int, str]:
        seq, digest = self._anchor()
        return seq + 1, digest

    def _transaction(self, what: str, body) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                body()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise AuditError(
                f"cannot {what} in the audit trail ({exc}); nothing was recorded. Check free "
                f"disk space and write permission on {self.path.parent}."
            ) from None


def _record(record_id: str, action: str, context: dict, outcome: dict, client: str,
            now: float | None = None) -> dict:
    return {
        "id": record_id,
        "time": time.time() if now is None else now,
        "action": action,
        "operator": context.get("operator_id", ""),
        "device": context.get("device_id", ""),
        # "certificate": the client's certificate names the device; "request": the
        # request does (clients allowed to name devices, or without a certificate).
        "device_source": context.get("device_source", "request"),
        "reason": context.get("reason", ""),
        "case": context.get("case_reference", ""),
        "client": client,
        "outcome": outcome,
    }


def _chain_hash(prev: str, seq: int, text: str, key: bytes | None = None) -> str:
    message = f"{prev}|{seq}|{text}".encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
