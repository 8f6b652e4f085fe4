"""The watchlist's source of truth: an embedded SQLite file of subjects and templates.

Templates are kept as ISO/IEC 19794-2:2005 records, so the file outlives any change to
the matcher's in-memory representation. The journal is WAL with ``synchronous=FULL``:
once :meth:`WatchlistStore.put_subjects` returns, the subjects survive ``kill -9`` and a
power cut. Each write is one transaction, so a reader never sees half a subject.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from matcher.formats import decode_template, encode_iso
from matcher.template import Template

SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    subject_id  TEXT PRIMARY KEY,
    labels      TEXT NOT NULL DEFAULT '{}',
    enrolled_at REAL NOT NULL,
    expires_at  REAL
);
CREATE TABLE IF NOT EXISTS fingers (
    subject_id  TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    finger      INTEGER NOT NULL,
    record      BLOB NOT NULL,
    PRIMARY KEY (subject_id, finger)
);
"""


class StoreError(RuntimeError):
    """The watchlist file cannot be opened or written; the message says what to do."""


@dataclass(frozen=True)
class SubjectRecord:
    """One enrolled subject and its finger templates."""

    subject_id: str
    fingers: tuple[Template, ...]
    labels: dict = field(default_factory=dict)
    enrolled_at: float = 0.0
    expires_at: float | None = None


class WatchlistStore:
    """Subjects and their templates in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the watchlist file {self.path}: {exc}. Check that the folder "
                "exists, is writable and is not on a full disk."
            ) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put_subjects(self, subjects: Iterable[SubjectRecord], *, replace: bool) -> list[bool]:
        """Write subjects in one durable transaction; per subject, whether it replaced one.

        Without ``replace`` an existing subject id raises :class:`KeyError` and nothing of
        the batch is written.
        """
        replaced = []
        with self._lock, self._write("enrol subjects"):
            for s in subjects:
                exists = self._db.execute(
                    "SELECT 1 FROM subjects WHERE subject_id = ?", (s.subject_id,)
                ).fetchone()
                if exists and not replace:
                    raise KeyError(s.subject_id)
                self._db.execute("DELETE FROM subjects WHERE subject_id = ?", (s.subject_id,))
                self._db.execute(
                    "INSERT INTO subjects (subject_id, labels, enrolled_at, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (s.subject_id, json.dumps(s.labels, sort_keys=True),
                     s.enrolled_at or time.time(), s.expires_at),
                )
                self._db.executemany(
                    "INSERT INTO fingers (subject_id, finger, record) VALUES (?, ?, ?)",
                    [(s.subject_id, int(t.finger), encode_iso(t)) for t in s.fingers],
                )
                replaced.append(bool(exists))
        return replaced

    def remove_subject(self, subject_id: str) -> int:
        """Delete a subject; the number of fingers it had (0: it was not enrolled)."""
        with self._lock, self._write("remove a subject"):
            n = self._db.execute(
                "SELECT COUNT(*) FROM fingers WHERE subject_id = ?", (subject_id,)
            ).fetchone()[0]
            cur = self._db.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
            return int(n) if cur.rowcount else 0

    def get_subject(self, subject_id: str) -> SubjectRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT subject_id, labels, enrolled_at, expires_at FROM subjects "
                "WHERE subject_id = ?", (subject_id,)
            ).fetchone()
            if row is None:
                return None
            records = self._db.execute(
                "SELECT finger, record FROM fingers WHERE subject_id = ? ORDER BY finger",
                (subject_id,),
            ).fetchall()
        return _subject(row, records)

    def subjects(self) -> Iterator[SubjectRecord]:
        """Every subject, in id order (a consistent snapshot read in one transaction)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT subject_id, labels, enrolled_at, expires_at FROM subjects "
                "ORDER BY subject_id"
            ).fetchall()
            fingers = self._db.execute(
                "SELECT subject_id, finger, record FROM fingers ORDER BY subject_id, finger"
            ).fetchall()
        by_subject: dict[str, list] = {}
        for sid, finger, record in fingers:
            by_subject.setdefault(sid, []).append((finger, record))
        for row in rows:
            yield _subject(row, by_subject.get(row[0], []))

    def counts(self) -> tuple[int, int]:
        """(subjects, fingers) enrolled."""
        with self._lock:
            s = self._db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            f = self._db.execute("SELECT COUNT(*) FROM fingers").fetchone()[0]
        return int(s), int(f)

    def _write(self, what: str):
        return _Transaction(self._db, what, self.path)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, with errors a person can act on."""

    def __init__(self, db: sqlite3.Connection, what: str, path: Path) -> None:
        self.db, self.what, self.path = db, what, path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {self.what}: {exc} ({self.path})") from exc

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.Error as err:
                self.db.execute("ROLLBACK")
                raise StoreError(
                    f"cannot {self.what}: {err}. Nothing was written; check free disk space "
                    f"and write permission on {self.path.parent}."
                ) from err
        self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(
                f"cannot {self.what}: {exc}. Nothing was written; check free disk space and "
                f"write permission on {self.path.parent}."
            ) from exc
        return False


def _subject(row, records) -> SubjectRecord:
    sid, labels, enrolled_at, expires_at = row
    fingers = tuple(decode_template(bytes(rec), finger=int(f)) for f, rec in records)
    return SubjectRecord(sid, fingers, json.loads(labels), float(enrolled_at), expires_at)
