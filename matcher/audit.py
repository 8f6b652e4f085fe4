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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
DAY_S = 86_400.0


class AuditError(RuntimeError):
    """The audit trail cannot be written; nothing may be answered without a record."""


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
    """Append-only audit records in their own SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(
                f"cannot open the audit trail {self.path}: {exc}. Check that the folder is "
                "writable and the disk is not full."
            ) from None
        self._lock = threading.Lock()

    def append(self, action: str, context: dict, outcome: dict, *, client: str = "") -> str:
        """Write one record; returns its id (quoted to the caller as the search id)."""
        record_id = uuid.uuid4().hex
        record = _record(record_id, action, context, outcome, client)
        with self._lock:
            self._transaction(f"record the {action}", lambda: self._insert(record))
        return record_id

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
        """Walk the chain; an empty list means every record is intact and in order."""
        with self._lock:
            anchor_seq, anchor_hash = self._anchor()
            rows = self._db.execute(
                "SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq"
            ).fetchall()
        problems = []
        prev, expected_seq = anchor_hash, anchor_seq + 1
        purge_anchors = set()
        for seq, text, prev_hash, digest in rows:
            if seq != expected_seq:
                problems.append(AuditProblem(seq, f"records {expected_seq}..{seq - 1} missing"))
            if prev_hash != prev:
                problems.append(AuditProblem(seq, "does not follow the record before it"))
            if _chain_hash(prev_hash, seq, text) != digest:
                problems.append(AuditProblem(seq, "content was changed after it was written"))
            else:
                record = json.loads(text)
                if record.get("action") == "purge":
                    out = record.get("outcome", {})
                    purge_anchors.add((out.get("anchor_seq"), out.get("anchor_hash")))
            prev, expected_seq = digest, seq + 1
        if anchor_seq and (anchor_seq, anchor_hash) not in purge_anchors:
            problems.append(AuditProblem(
                anchor_seq + 1,
                f"records 1..{anchor_seq} are gone but no recorded purge accounts for them"))
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- internals ----------------------------------------------------------------
    def _anchor(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM anchor WHERE id = 1").fetchone()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def _insert(self, record: dict) -> None:
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else self._next_after_anchor()
        self._db.execute(
            "INSERT INTO audit (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)",
            (seq, text, prev, _chain_hash(prev, seq, text)),
        )

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
        "reason": context.get("reason", ""),
        "case": context.get("case_reference", ""),
        "client": client,
        "outcome": outcome,
    }


def _chain_hash(prev: str, seq: int, text: str) -> str:
    return hashlib.sha256(f"{prev}|{seq}|{text}".encode()).hexdigest()
