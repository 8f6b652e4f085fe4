"""The watchlist's source of truth: an embedded SQLite file of subjects and templates.

Templates are kept as ISO/IEC 19794-2:2005 records, so the file outlives any change to
the matcher's in-memory representation. The journal is WAL with ``synchronous=FULL``:
once :meth:`WatchlistStore.put_subjects` returns, the subjects survive ``kill -9`` and a
power cut. Each write is one transaction, so a reader never sees half a subject.

Every write transaction also advances a *generation* counter (and stamps the subjects it
wrote with it), and the file carries a random id: a snapshot of derived search arrays
records both and is used at start only when they still match (see
:meth:`WatchlistStore.versions`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matcher.formats import decode_template, encode_iso
from matcher.template import Template

SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    subject_id  TEXT PRIMARY KEY,
    labels      TEXT NOT NULL DEFAULT '{}',
    enrolled_at REAL NOT NULL,
    expires_at  REAL,
    generation  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS fingers (
    subject_id  TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    finger      INTEGER NOT NULL,
    record      BLOB NOT NULL,
    PRIMARY KEY (subject_id, finger)
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


_IN_LIST = 500  # ids per "IN (...)" query, well under SQLite's host parameter limit
_ROWS_PER_INSERT = 3000  # values per multi-row INSERT (older SQLite takes only 999)


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
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the watchlist file {self.path}: {exc}. Check that the folder "
                "exists, is writable and is not on a full disk."
            ) from exc
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Bring a file written before generations existed up to this schema."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(subjects)")}
        if "generation" not in columns:
            self._db.execute(
                "ALTER TABLE subjects ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"
            )
        self._db.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('store_id', ?)",
            (uuid.uuid4().hex,),
        )
        self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', '0')")

    def _advance(self) -> int:
        """Inside a write transaction: the generation this transaction writes."""
        self._db.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE name = 'generation'"
        )
        return int(self._db.execute(
            "SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])

    def state(self) -> tuple[str, int]:
        """(store id, generation): which file this is and how many writes it has seen."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        return rows["store_id"], int(rows["generation"])

    def versions(self) -> tuple[str, int, list[tuple[str, int]]]:
        """(store id, generation, [(subject id, generation written)]) read in one go.

        A snapshot of derived arrays that lists the same versions holds exactly what the
        store holds; any other subject is re-derived from its record.
        """
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
                listed = self._db.execute(
                    "SELECT subject_id, generation FROM subjects ORDER BY subject_id"
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        return rows["store_id"], int(rows["generation"]), [(s, int(g)) for s, g in listed]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put_subjects(
        self,
        subjects: Iterable[SubjectRecord],
        *,
        replace: bool,
        records: Sequence[Sequence[bytes]] | None = None,
    ) -> list[bool]:
        """Write subjects in one durable transaction; per subject, whether it replaced one.

        Without ``replace`` an existing subject id raises :class:`KeyError` and nothing of
        the batch is written. ``records`` may give each subject's fingers already encoded
        as ISO records (in order), which saves encoding them again.
        """
        subjects = list(subjects)
        if records is None:
            records = [[encode_iso(t) for t in s.fingers] for s in subjects]
        ids = [s.subject_id for s in subjects]
        if len(set(ids)) != len(ids):
            twice = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise StoreError(f"subject {twice!r} appears twice in one write; send it once")
        with self._lock, self._write("enrol subjects"):
            generation = self._advance()
            existing: set[str] = set()
            for start in range(0, len(ids), _IN_LIST):
                chunk = ids[start:start + _IN_LIST]
                existing.update(row[0] for row in self._db.execute(
                    "SELECT subject_id FROM subjects WHERE subject_id IN "
                    f"({','.join('?' * len(chunk))})", chunk))
            if existing and not replace:
                raise KeyError(next(i for i in ids if i in existing))
            if existing:
                self._db.executemany("DELETE FROM subjects WHERE subject_id = ?",
                                     [(i,) for i in ids if i in existing])
            now = time.time()
            self._insert_rows(
                "subjects (subject_id, labels, enrolled_at, expires_at, generation)",
                [(s.subject_id, json.dumps(s.labels, sort_keys=True) if s.labels else "{}",
                  s.enrolled_at or now, s.expires_at, generation) for s in subjects],
            )
            self._insert_rows(
                "fingers (subject_id, finger, record)",
                [(s.subject_id, int(t.finger), record)
                 for s, recs in zip(subjects, records, strict=True)
                 for t, record in zip(s.fingers, recs, strict=True)],
            )
        return [i in existing for i in ids]

    def _insert_rows(self, into: str, rows: list[tuple]) -> None:
        """INSERT of many rows, a few hundred per statement: one statement step for each
        (executemany steps once per row, and lets go of the GIL each time -- with the
        enrolment pipeline's other thread busy, getting it back cost more than the
        inserts)."""
        if not rows:
            return
        width = len(rows[0])
        one = "(" + ",".join("?" * width) + ")"
        limit = min(_ROWS_PER_INSERT, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        per = max(1, limit // width)
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            self._db.execute(f"INSERT INTO {into} VALUES " + ",".join([one] * len(chunk)),
                             [v for row in chunk for v in row])

    def remove_subject(self, subject_id: str) -> int:
        """Delete a subject; the number of fingers it had (0: it was not enrolled)."""
        with self._lock, self._write("remove a subject"):
            n = self._db.execute(
                "SELECT COUNT(*) FROM fingers WHERE subject_id = ?", (subject_id,)
            ).fetchone()[0]
            cur = self._db.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
            if cur.rowcount:
                self._advance()
            return int(n) if cur.rowcount else 0

    def purge_expired(self, now: float) -> list[str]:
        """Delete every subject whose expiry is at or before ``now``; their ids."""
        with self._lock, self._write("purge expired subjects"):
            ids = [r[0] for r in self._db.execute(
                "SELECT subject_id FROM subjects WHERE expires_at IS NOT NULL "
                "AND expires_at <= ?", (now,))]
            if ids:
                self._advance()
                self._db.executemany(
                    "DELETE FROM subjects WHERE subject_id = ?", [(i,) for i in ids])
        return ids

    def subjects_with_generation(self, ids: Iterable[str]) -> Iterator[tuple[SubjectRecord, int]]:
        """The listed subjects that exist, each with the generation that wrote it."""
        ids = list(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    "SELECT subject_id, labels, enrolled_at, expires_at, generation FROM "
                    f"subjects WHERE subject_id IN ({marks})", chunk).fetchall()
                fingers = self._db.execute(
                    f"SELECT subject_id, finger, record FROM fingers WHERE subject_id IN "
                    f"({marks}) ORDER BY subject_id, finger", chunk).fetchall()
            by_subject: dict[str, list] = {}
            for sid, finger, record in fingers:
                by_subject.setdefault(sid, []).append((finger, record))
            for row in rows:
                yield _subject(row[:4], by_subject.get(row[0], [])), int(row[4])

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
                self._rollback()
                raise StoreError(self._nothing_written(err)) from err
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(self._nothing_written(exc)) from exc
        return False

    def _rollback(self) -> None:
        # SQLite may already have rolled back (a full disk does that); a second ROLLBACK
        # would raise and hide the real error.
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def _nothing_written(self, err: Exception) -> str:
        return (f"cannot {self.what}: {err}. Nothing was written; check free disk space and "
                f"write permission on {self.path.parent}.")


def _subject(row, records) -> SubjectRecord:
    sid, labels, enrolled_at, expires_at = row
    fingers = tuple(decode_template(bytes(rec), finger=int(f)) for f, rec in records)
    return SubjectRecord(sid, fingers, json.loads(labels), float(enrolled_at), expires_at)
