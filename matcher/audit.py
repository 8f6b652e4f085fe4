"""Audit trail: one append-only, hash-chained record per search or change.

A record says who did what, from which device, why, when and what came back (decision,
candidate subject ids, latency). It never holds biometric data: no templates, no
minutiae, no images. Each record carries the SHA-256 of the previous one, so a deleted,
edited or reordered record breaks the chain and :meth:`AuditLog.verify` finds it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditProblem:
    """Where the chain breaks and how."""

    seq: int
    message: str


class AuditLog:
    """Append-only audit records in their own SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, record TEXT NOT NULL, "
            "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
        )
        self._lock = threading.Lock()

    def append(self, action: str, context: dict, outcome: dict) -> str:
        """Write one record; returns its id (quoted to the caller as the search id)."""
        record_id = uuid.uuid4().hex
        record = {
            "id": record_id,
            "time": time.time(),
            "action": action,
            "operator": context.get("operator_id", ""),
            "device": context.get("device_id", ""),
            "reason": context.get("reason", ""),
            "case": context.get("case_reference", ""),
            "outcome": outcome,
        }
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
                digest = _chain_hash(prev, seq, text)
                self._db.execute(
                    "INSERT INTO audit (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)",
                    (seq, text, prev, digest),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return record_id

    def records(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM audit ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def verify(self) -> list[AuditProblem]:
        """Walk the chain; an empty list means every record is intact and in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq"
            ).fetchall()
        problems = []
        prev, expected_seq = GENESIS, 1
        for seq, text, prev_hash, digest in rows:
            if seq != expected_seq:
                problems.append(AuditProblem(seq, f"records {expected_seq}..{seq - 1} missing"))
            if prev_hash != prev:
                problems.append(AuditProblem(seq, "does not follow the record before it"))
            if _chain_hash(prev_hash, seq, text) != digest:
                problems.append(AuditProblem(seq, "content was changed after it was written"))
            prev, expected_seq = digest, seq + 1
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _chain_hash(prev: str, seq: int, text: str) -> str:
    return hashlib.sha256(f"{prev}|{seq}|{text}".encode()).hexdigest()
