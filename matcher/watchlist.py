"""The watchlist: enrolled subjects, searchable 1:N and 1:1.

The SQLite store is the source of truth; the search arrays are derived from it and held
by a :class:`matcher.index.FingerIndex`, whose immutable views a change replaces (sharing
what did not change), so a search always sees a consistent watchlist (never half a
subject) and never waits for a writer. Every version of a subject gets a new integer
key; a replaced subject's old rows go and its new rows come in one index update.

Start: a snapshot folder of the derived arrays (``<db>.index``) is used only when it was
taken from this very store file; subjects written or removed since (per the store's
generation stamps) are re-derived, and with no usable snapshot everything is.

A probe lives only in the arguments of one call: nothing here keeps or logs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matcher import decision
from matcher.comparator import Comparator
from matcher.formats import iso_round_trips
from matcher.index import FingerIndex
from matcher.prefilter import LshPrefilter
from matcher.store import SubjectRecord, WatchlistStore
from matcher.template import Finger, Template, TemplateError

log = logging.getLogger(__name__)

# Fewer minutiae than this cannot identify anyone reliably; ask for a better scan.
MIN_PROBE_MINUTIAE = 6
MAX_PROBES = 10
MAX_SUBJECT_ID = 128
# Batches prepared ahead of the one being written, each on a worker thread of its own.
PREPARE_AHEAD = 2
# Re-deriving more fingers than this at start is worth a fresh snapshot afterwards.
SNAPSHOT_AFTER_REBUILD = 10_000


class WatchlistError(Exception):
    """A request the watchlist cannot serve; the message says what to do."""


class SubjectNotFound(WatchlistError):
    pass


class SubjectExists(WatchlistError):
    pass


class EmptyWatchlist(WatchlistError):
    pass


@dataclass(frozen=True)
class FingerMatch:
    probe_index: int
    finger: Finger
    score: float


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    score: float
    fingers: tuple[FingerMatch, ...]

    @property
    def matched_finger(self) -> Finger:
        return max(self.fingers, key=lambda f: f.score).finger


@dataclass(frozen=True)
class IdentifyResult:
    hit: bool
    candidates: tuple[Candidate, ...]
    threshold: float
    expected_fpir: float
    gallery_fingers: int
    gallery_subjects: int
    comparisons: int
    elapsed_ms: float


@dataclass(frozen=True)
class VerifyResult:
    hit: bool
    score: float
    threshold: float
    fingers: tuple[FingerMatch, ...]
    elapsed_ms: float


@dataclass(frozen=True)
class PreparedEnrolment:
    """Checked subjects as the store will hold them, their ISO records and encodings."""

    subjects: tuple[SubjectRecord, ...]
    records: tuple[list[bytes], ...]
    encoded: Any  # the comparator's gallery of every finger, in order
    codes: Any = None  # the index's candidate-stage codes of it, when it will want them


@dataclass(frozen=True)
class BatchOutcome:
    """One batch of :meth:`Watchlist.enroll_batches`: enrolled, or refused whole."""

    subjects: Sequence[SubjectRecord]
    replaced: list[bool] | None  # per subject, when enrolled
    error: Exception | None  # why nothing of the batch was enrolled


class Watchlist:
    """Enrol, remove, identify and verify over a store and a comparator."""

    def __init__(
        self,
        store: WatchlistStore,
        comparator: Comparator,
        *,
        prefilter: LshPrefilter | None = None,
        snapshot_path: str | Path | None = None,
    ) -> None:
        self.store = store
        self.comparator = comparator
        self.index = FingerIndex(comparator, prefilter)
        self.snapshot_path = (
            Path(snapshot_path) if snapshot_path is not None
            else store.path.with_name(store.path.name + ".index")
        )
        self._write_lock = threading.Lock()
        self._next_key = 0
        # key -> subject id for every version any current view may hold; readers look up
        # keys of the view they took, so entries of removed keys may be missing: skipped.
        self._subject_of: dict[int, str] = {}
        self._key_of: dict[str, int] = {}
        self._fingers_of: dict[int, int] = {}
        self._finger_counts: Counter[int] = Counter()
        self._expiring: dict[int, float] = {}  # only subjects that carry an expiry
        self._changed = False
        self._load()

    # ---- changes -------------------------------------------------------------------
    def enroll(self, subjects: Sequence[SubjectRecord], *, replace: bool = False) -> list[bool]:
        """Make subjects durable, then searchable; per subject, whether it replaced one."""
        return self.commit(self.prepare(subjects), replace=replace)

    def prepare(
        self, subjects: Sequence[SubjectRecord], *, threads: int | None = None
    ) -> PreparedEnrolment:
        """Check subjects and derive what enrolment stores and searches, touching neither
        the store nor the index (so it may run beside other changes and searches);
        encoding on ``threads`` cores (default: the comparator's own)."""
        subjects = [_checked_subject(s) for s in subjects]
        seen = set()
        for s in subjects:
            if s.subject_id in seen:
                raise WatchlistError(f"subject {s.subject_id!r} appears twice in one request")
            seen.add(s.subject_id)
        # What is searched is exactly what the store gives back after a restart.
        now = time.time()
        pairs = iter(iso_round_trips([t for s in subjects for t in s.fingers]))
        records, stored = [], []
        for s in subjects:
            mine = [next(pairs) for _ in s.fingers]
            records.append([record for record, _ in mine])
            stored.append(SubjectRecord(s.subject_id, tuple(t for _, t in mine), s.labels,
                                        s.enrolled_at or now, s.expires_at))
        encoded = self.comparator.encode_many([t for s in stored for t in s.fingers],
                                              threads=threads)
        codes = self.index.codes_for(encoded, self.index.view.rows + len(encoded))
        return PreparedEnrolment(tuple(stored), tuple(records), encoded, codes)

    def commit(self, prepared: PreparedEnrolment, *, replace: bool = False) -> list[bool]:
        """Write prepared subjects in one durable transaction, then make them searchable;
        per subject, whether it replaced one."""
        with self._write_lock:
            try:
                replaced = self.store.put_subjects(prepared.subjects, replace=replace,
                                                   records=prepared.records)
            except KeyError as exc:
                raise SubjectExists(
                    f"subject {exc.args[0]!r} is already enrolled; remove it first or enrol "
                    "with replace"
                ) from None
            self._apply(prepared.subjects, prepared.encoded,
                        removed=[s.subject_id for s in prepared.subjects],
                        codes=prepared.codes)
        return replaced

    def enroll_batches(
        self, batches: Iterable[tuple[Sequence[SubjectRecord], bool]]
    ) -> Iterator[BatchOutcome]:
        """:meth:`enroll` of each ``(subjects, replace)`` batch in order, pipelined for
        bulk loads: the next :data:`PREPARE_AHEAD` batches are prepared on worker threads,
        one core each (their cylinders are built outside the GIL), while this one is
        written. Each outcome is yielded once its batch is durable and searchable, or
        refused whole (``error``; nothing of it written)."""
        # One core per batch rather than all cores per batch: a parallel build leaves
        # cores waiting at its end, spinning, when the writer could use them.
        with ThreadPoolExecutor(max_workers=PREPARE_AHEAD,
                                thread_name_prefix="enrol-prepare") as pool:
            pending: deque = deque()
            for subjects, replace in batches:
                subjects = list(subjects)
                pending.append((subjects, replace,
                                pool.submit(self.prepare, subjects, threads=1)))
                if len(pending) > PREPARE_AHEAD:
                    yield self._committed(*pending.popleft())
            while pending:
                yield self._committed(*pending.popleft())

    def _committed(self, subjects: Sequence[SubjectRecord], replace: bool,
                   prepared: Future) -> BatchOutcome:
        try:
            return BatchOutcome(subjects, self.commit(prepared.result(), replace=replace),
                                None)
        except (WatchlistError, TemplateError) as exc:
            return BatchOutcome(subjects, None, exc)

    def remove(self, subject_id: str) -> int:
        """Remove a subject; the number of fingers removed."""
        with self._write_lock:
            n = self.store.remove_subject(subject_id)
            if n == 0 and subject_id not in self._key_of:
                raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
            self._apply([], [], removed=[subject_id])
        return n

    def purge_expired(self, now: float | None = None) -> int:
        """Delete subjects expired at ``now`` from the store and the index; how many."""
        now = time.time() if now is None else now
        with self._write_lock:
            ids = self.store.purge_expired(now)
            self._apply([], [], removed=ids)
        return len(ids)

    def subject(self, subject_id: str) -> SubjectRecord:
        record = self.store.get_subject(subject_id)
        if record is None:
            raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
        return record

    # ---- searches --------------------------------------------------------------------
    def identify(
        self,
        probes: Sequence[Template],
        *,
        max_candidates: int = 10,
        target_fpir: float = decision.DEFAULT_TARGET_FPIR,
        now: float | None = None,
    ) -> IdentifyResult:
        start = time.perf_counter()
        _check_probes(probes)
        view = self.index.view
        now = time.time() if now is None else now
        n_subjects, n_fingers = len(self._key_of), view.rows
        if view.rows == 0:
            raise EmptyWatchlist(
                "the watchlist is empty: enrol subjects before searching (a search of an "
                "empty watchlist would wrongly read as NO HIT)"
            )
        n_live = max(1, n_subjects - sum(1 for e in list(self._expiring.values()) if e <= now))
        m = 1
        comparisons = 0
        best_parts = []
        for p_index, probe in enumerate(probes):
            rs = self.index.search(self.comparator.encode(probe), finger=probe.finger,
                                   now=now, view=view)
            # FPIR counts every eligible comparison, also those the candidate stage skipped
            comparisons += rs.eligible
            if probe.finger == Finger.UNKNOWN:
                m = max(m, self._max_fingers())
            if rs.keys.size == 0:
                continue
            order = np.lexsort((-rs.scores, rs.keys))
            first = np.ones(order.size, bool)
            first[1:] = rs.keys[order][1:] != rs.keys[order][:-1]
            pick = order[first]
            best_parts.append((p_index, rs.keys[pick], rs.fingers[pick], rs.scores[pick]))
        threshold = decision.hit_threshold(target_fpir, n_live, m, len(probes))
        candidates = self._fused(best_parts, max(1, max_candidates))
        hit = bool(candidates) and candidates[0].score >= threshold
        return IdentifyResult(
            hit=hit,
            candidates=candidates,
            threshold=threshold,
            expected_fpir=decision.expected_fpir(threshold, n_live, m, len(probes)),
            gallery_fingers=n_fingers,
            gallery_subjects=n_subjects,
            comparisons=comparisons,
            elapsed_ms=(time.perf_counter() - start) * 1e3,
        )

    def verify(
        self,
        subject_id: str,
        probes: Sequence[Template],
        *,
        target_fmr: float = decision.DEFAULT_TARGET_FMR,
    ) -> VerifyResult:
        start = time.perf_counter()
        _check_probes(probes)
        view = self.index.view
        key = self._key_of.get(subject_id)
        gallery, row_finger = (None, None) if key is None else self.index.rows_of(key, view)
        if key is None or row_finger.size == 0:
            raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
        fingers = []
        total = 0.0
        m = 1
        for p_index, probe in enumerate(probes):
            if probe.finger == Finger.UNKNOWN:
                m = max(m, int(row_finger.size))
            eligible = _finger_ok(row_finger, probe.finger)
            if not eligible.any():
                continue
            scores = np.asarray(self.comparator.scores(self.comparator.encode(probe), gallery))
            scores = np.where(eligible, scores, -np.inf)
            best = int(np.argmax(scores))
            fingers.append(FingerMatch(p_index, Finger(int(row_finger[best])),
                                       float(scores[best])))
            total += float(scores[best])
        threshold = decision.verify_threshold(target_fmr, len(probes), m)
        return VerifyResult(
            hit=total >= threshold,
            score=total,
            threshold=threshold,
            fingers=tuple(fingers),
            elapsed_ms=(time.perf_counter() - start) * 1e3,
        )

    def counts(self) -> tuple[int, int]:
        return len(self._key_of), self.index.view.rows

    def hit_threshold(self, target_fpir: float = decision.DEFAULT_TARGET_FPIR) -> float:
        subjects, _ = self.counts()
        return decision.hit_threshold(target_fpir, subjects, 1, 1)

    # ---- snapshot and shutdown ---------------------------------------------------------
    def save_snapshot(self) -> None:
        """Write the derived arrays next to the store, for a fast start."""
        with self._write_lock:
            store_id, generation, versions = self.store.versions()
            keys = [self._key_of[sid] for sid, _ in versions]
            header = {
                "store_id": store_id, "generation": generation,
                "subjects": len(versions), "fingers": self.index.view.rows,
                "versions": _versions_hash(versions),
                "comparator": self.comparator.name,
            }
            self.index.save(self.snapshot_path, header)
            table = {"ids": [sid for sid, _ in versions], "gen": [g for _, g in versions],
                     "keys": keys}
            tmp = self.snapshot_path / "subjects.json.tmp"
            tmp.write_text(json.dumps(table))
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            tmp.rename(self.snapshot_path / "subjects.json")
            self._changed = False

    def close(self) -> None:
        """Save a snapshot when the watchlist changed, then close the store."""
        try:
            if self._changed:
                self.save_snapshot()
        finally:
            self.store.close()

    # ---- internals ---------------------------------------------------------------------
    def _max_fingers(self) -> int:
        return max((n for n, c in self._finger_counts.items() if c > 0), default=1)

    def _fused(self, best_parts, limit: int) -> tuple[Candidate, ...]:
        """Fuse the per-probe best rows into subject scores; the best ``limit`` subjects."""
        if not best_parts:
            return ()
        keys = np.concatenate([k for _, k, _, _ in best_parts])
        scores = np.concatenate([s.astype(np.float64) for _, _, _, s in best_parts])
        uniq, inverse = np.unique(keys, return_inverse=True)
        fused = np.zeros(uniq.size)
        np.add.at(fused, inverse, scores)
        top = np.argsort(-fused, kind="stable")[: limit * 2]
        out = []
        for i in top:
            key = int(uniq[i])
            sid = self._subject_of.get(key)
            if sid is None:  # removed while this search ran
                continue
            fingers = tuple(
                FingerMatch(p, Finger(int(f[j])), float(s[j]))
                for p, k, f, s in best_parts
                for j in np.flatnonzero(k == key)
            )
            out.append(Candidate(sid, float(fused[i]), fingers))
            if len(out) == limit:
                break
        return tuple(out)

    def _apply(self, added: Sequence[SubjectRecord], encoded: Any, removed,
               codes: Any = None) -> None:
        """Under the write lock: drop ``removed`` subjects' rows and add ``added``, at once."""
        gone = []
        for sid in removed:
            key = self._key_of.pop(sid, None)
            if key is None:
                continue
            gone.append(key)
            self._finger_counts[self._fingers_of.pop(key)] -= 1
            self._expiring.pop(key, None)
        # the bookkeeping of a bulk batch in whole-batch steps (the writer's Python time
        # holds the GIL the preparing threads need)
        new_keys = range(self._next_key, self._next_key + len(added))
        self._next_key += len(added)
        ids = [s.subject_id for s in added]
        counts = [len(s.fingers) for s in added]
        self._key_of.update(zip(ids, new_keys, strict=True))
        self._subject_of.update(zip(new_keys, ids, strict=True))
        self._fingers_of.update(zip(new_keys, counts, strict=True))
        self._finger_counts.update(counts)
        self._expiring.update((key, float(s.expires_at))
                              for key, s in zip(new_keys, added, strict=True)
                              if s.expires_at is not None)
        keys = np.repeat(np.asarray(new_keys, np.int64), counts)
        fingers = [int(t.finger) for s in added for t in s.fingers]
        expires = np.repeat([np.inf if s.expires_at is None else float(s.expires_at)
                             for s in added], counts)
        if len(keys) or gone:
            self.index.update(keys, fingers, encoded, expires, remove=gone, codes=codes)
            self._changed = True
        for key in gone:
            # searches that took the previous view skip keys they cannot name any more
            self._subject_of.pop(key, None)

    def _load(self) -> None:
        """Derive the index: from a matching snapshot plus what changed since, or anew."""
        store_id, generation, versions = self.store.versions()
        in_store = dict(versions)
        kept = self._load_snapshot(store_id, generation, versions)
        stale = [sid for sid, g in versions if kept.get(sid) != g]
        with self._write_lock:
            self._apply([], [], removed=[sid for sid in list(self._key_of)
                                         if in_store.get(sid) != kept.get(sid)])
        rebuilt = 0
        for start in range(0, len(stale), 2048):
            records = [r for r, _ in self.store.subjects_with_generation(stale[start:start + 2048])]
            encoded = self.comparator.encode_many([t for s in records for t in s.fingers])
            with self._write_lock:
                self._apply(records, encoded, removed=[])
            rebuilt += len(encoded)
        # a snapshot without the inverted lists (older, or another prefilter) is saved
        # again at close, so that the next start reads them instead of building them
        self._changed = (bool(stale) or len(kept) != len(versions)
                         or self.index.lists_built_on_load > 0)
        if rebuilt >= SNAPSHOT_AFTER_REBUILD:
            self.save_snapshot()

    def _load_snapshot(self, store_id: str, generation: int, versions) -> dict[str, int]:
        """Load a snapshot taken from this store; {subject id: generation} it holds."""
        header = FingerIndex.read_header(self.snapshot_path)
        if not header or header.get("store_id") != store_id:
            return {}
        if header.get("comparator") != self.comparator.name:
            return {}
        try:
            table = json.loads((self.snapshot_path / "subjects.json").read_text())
            same_generation = header["generation"] == generation
            if same_generation and (header["subjects"] != len(versions)
                                    or header["versions"] != _versions_hash(versions)):
                return {}  # same generation, other content: not this store's history
            self.index.load(self.snapshot_path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("watchlist snapshot %s not used (%s); re-deriving from the store",
                        self.snapshot_path, exc)
            self.index = FingerIndex(self.comparator, self.index.prefilter)
            return {}
        with self._write_lock:
            for sid, key in zip(table["ids"], table["keys"], strict=True):
                self._key_of[sid] = key
                self._subject_of[key] = sid
            self._next_key = max(table["keys"], default=-1) + 1
            for seg in self.index.view.segments:
                uniq, first, counts = np.unique(seg.keys, return_index=True, return_counts=True)
                for k, f, c in zip(uniq, first, counts, strict=True):
                    self._fingers_of[int(k)] = int(c)
                    self._finger_counts[int(c)] += 1
                    if np.isfinite(seg.expires[f]):
                        self._expiring[int(k)] = float(seg.expires[f])
        return dict(zip(table["ids"], table["gen"], strict=True))


def _versions_hash(versions) -> str:
    h = hashlib.sha256()
    for sid, gen in versions:
        h.update(f"{sid}\x00{gen}\n".encode())
    return h.hexdigest()


def _finger_ok(row_finger: np.ndarray, finger: Finger) -> np.ndarray:
    """Rows a probe of this finger position is compared with."""
    if finger == Finger.UNKNOWN:
        return np.ones(row_finger.shape, dtype=bool)
    return (row_finger == int(finger)) | (row_finger == 0)


def _check_probes(probes: Sequence[Template]) -> None:
    if not probes:
        raise TemplateError("a search needs at least one probe template")
    if len(probes) > MAX_PROBES:
        raise TemplateError(f"a search takes at most {MAX_PROBES} probe templates")
    for i, p in enumerate(probes):
        if len(p) < MIN_PROBE_MINUTIAE:
            raise TemplateError(
                f"probe {i} has {len(p)} minutiae, fewer than the {MIN_PROBE_MINUTIAE} a "
                "search needs: scan the finger again, flat and centred"
            )


def _checked_subject(s: SubjectRecord) -> SubjectRecord:
    sid = s.subject_id
    if not sid or len(sid) > MAX_SUBJECT_ID or not sid.isprintable() or sid != sid.strip():
        raise TemplateError(
            f"subject id must be 1..{MAX_SUBJECT_ID} printable characters without "
            "leading or trailing spaces"
        )
    if not s.fingers or len(s.fingers) > 10:
        raise TemplateError(f"subject {sid!r}: enrol 1 to 10 fingers, not {len(s.fingers)}")
    positions = [int(t.finger) for t in s.fingers]
    if len(set(positions)) != len(positions):
        raise TemplateError(f"subject {sid!r}: a finger position appears twice")
    for t in s.fingers:
        if len(t) < MIN_PROBE_MINUTIAE:
            raise TemplateError(
                f"subject {sid!r}, {t.finger.label}: {len(t)} minutiae is too few to enrol; "
                "capture that finger again"
            )
    return s
