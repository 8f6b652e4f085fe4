"""The watchlist: enrolled subjects, searchable 1:N and 1:1.

The SQLite store is the source of truth; the search arrays are derived from it at start
and kept in an immutable :class:`Snapshot` that a change replaces as a whole, so a search
always sees a consistent watchlist (never half a subject) and never waits for a writer.
A probe lives only in the arguments of one call: nothing here keeps or logs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from matcher import decision
from matcher.comparator import Comparator
from matcher.formats import decode_template, encode_iso
from matcher.store import SubjectRecord, WatchlistStore
from matcher.template import Finger, Template, TemplateError

# Fewer minutiae than this cannot identify anyone reliably; ask for a better scan.
MIN_PROBE_MINUTIAE = 6
MAX_PROBES = 10
MAX_SUBJECT_ID = 128


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
class Snapshot:
    """The derived search arrays of one version of the watchlist."""

    subject_ids: tuple[str, ...]
    expires_at: np.ndarray  # float64 per subject, +inf when it never expires
    encoded: tuple  # per row, the comparator's encoding (kept to rebuild the gallery)
    row_subject: np.ndarray  # int32 per row
    row_finger: np.ndarray  # uint8 per row
    gallery: object = None
    max_fingers: int = 1
    by_id: dict = field(default_factory=dict)


class Watchlist:
    """Enrol, remove, identify and verify over a store and a comparator."""

    def __init__(self, store: WatchlistStore, comparator: Comparator) -> None:
        self.store = store
        self.comparator = comparator
        self._write_lock = threading.Lock()
        self._snapshot = self._build([], [], [])
        self._load()

    # ---- changes -------------------------------------------------------------------
    def enroll(self, subjects: Sequence[SubjectRecord], *, replace: bool = False) -> list[bool]:
        """Make subjects durable, then searchable; per subject, whether it replaced one."""
        subjects = [_checked_subject(s) for s in subjects]
        seen = set()
        for s in subjects:
            if s.subject_id in seen:
                raise WatchlistError(f"subject {s.subject_id!r} appears twice in one request")
            seen.add(s.subject_id)
        # What is searched is exactly what the store gives back after a restart.
        stored = [
            SubjectRecord(s.subject_id, tuple(_as_stored(t) for t in s.fingers), s.labels,
                          s.enrolled_at or time.time(), s.expires_at)
            for s in subjects
        ]
        encoded = [[self.comparator.encode(t) for t in s.fingers] for s in stored]
        with self._write_lock:
            try:
                replaced = self.store.put_subjects(stored, replace=replace)
            except KeyError as exc:
                raise SubjectExists(
                    f"subject {exc.args[0]!r} is already enrolled; remove it first or enrol "
                    "with replace"
                ) from None
            self._apply(stored, encoded)
        return replaced

    def remove(self, subject_id: str) -> int:
        """Remove a subject; the number of fingers removed."""
        with self._write_lock:
            n = self.store.remove_subject(subject_id)
            if n == 0 and subject_id not in self._snapshot.by_id:
                raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
            self._apply([], [], removed={subject_id})
        return n

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
        snap = self._snapshot
        if not snap.subject_ids:
            raise EmptyWatchlist(
                "the watchlist is empty: enrol subjects before searching (a search of an "
                "empty watchlist would wrongly read as NO HIT)"
            )
        live = snap.expires_at > (time.time() if now is None else now)
        per_probe, best_row, comparisons, m = self._best_per_subject(snap, probes, live)
        fused = per_probe.sum(axis=0)
        fused[~live] = -np.inf
        n_live = int(live.sum())
        threshold = decision.hit_threshold(target_fpir, n_live, m, len(probes))
        order = np.argsort(-fused, kind="stable")[: max(1, max_candidates)]
        candidates = tuple(
            self._candidate(snap, int(i), per_probe, best_row, float(fused[i]))
            for i in order
            if np.isfinite(fused[i])
        )
        hit = bool(candidates) and candidates[0].score >= threshold
        return IdentifyResult(
            hit=hit,
            candidates=candidates,
            threshold=threshold,
            expected_fpir=decision.expected_fpir(threshold, n_live, m, len(probes)),
            gallery_fingers=int(snap.row_subject.shape[0]),
            gallery_subjects=len(snap.subject_ids),
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
        snap = self._snapshot
        index = snap.by_id.get(subject_id)
        if index is None:
            raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
        rows = np.flatnonzero(snap.row_subject == index)
        fingers = []
        total = 0.0
        m = 1
        for p_index, probe in enumerate(probes):
            eligible = rows[_finger_ok(snap.row_finger[rows], probe.finger)]
            if probe.finger == Finger.UNKNOWN:
                m = max(m, len(rows))
            if eligible.size == 0:
                continue
            scores = self.comparator.scores(
                self.comparator.encode(probe), self.comparator.stack(
                    [snap.encoded[r] for r in eligible])
            )
            best = int(np.argmax(scores))
            fingers.append(FingerMatch(p_index, Finger(int(snap.row_finger[eligible[best]])),
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
        snap = self._snapshot
        return len(snap.subject_ids), int(snap.row_subject.shape[0])

    def hit_threshold(self, target_fpir: float = decision.DEFAULT_TARGET_FPIR) -> float:
        subjects, _ = self.counts()
        return decision.hit_threshold(target_fpir, subjects, 1, 1)

    # ---- internals ---------------------------------------------------------------------
    def _best_per_subject(self, snap: Snapshot, probes, live):
        """Per probe and subject, the best score and the row (finger) that gave it."""
        n_subjects = len(snap.subject_ids)
        per_probe = np.zeros((len(probes), n_subjects), dtype=np.float64)
        best_row = np.full((len(probes), n_subjects), -1, dtype=np.int64)
        comparisons = 0
        m = 1
        for p_index, probe in enumerate(probes):
            scores = self.comparator.scores(self.comparator.encode(probe), snap.gallery)
            scores = scores.astype(np.float64)
            eligible = _finger_ok(snap.row_finger, probe.finger) & live[snap.row_subject]
            comparisons += int(eligible.sum())
            if probe.finger == Finger.UNKNOWN:
                m = max(m, snap.max_fingers)
            best = np.full(n_subjects, -np.inf)
            np.maximum.at(best, snap.row_subject[eligible], scores[eligible])
            rows = np.flatnonzero(eligible & (scores == best[snap.row_subject]))
            best_row[p_index, snap.row_subject[rows]] = rows
            per_probe[p_index] = np.where(np.isfinite(best), best, 0.0)
        return per_probe, best_row, comparisons, m

    def _candidate(self, snap, index, per_probe, best_row, score) -> Candidate:
        fingers = tuple(
            FingerMatch(p, Finger(int(snap.row_finger[best_row[p, index]])),
                        float(per_probe[p, index]))
            for p in range(per_probe.shape[0])
            if best_row[p, index] >= 0
        )
        return Candidate(snap.subject_ids[index], score, fingers)

    def _load(self) -> None:
        records = list(self.store.subjects())
        encoded = [[self.comparator.encode(t) for t in s.fingers] for s in records]
        with self._write_lock:
            self._apply(records, encoded)

    def _apply(self, added, added_encoded, removed=frozenset()) -> None:
        """Replace the snapshot with one that has ``added`` and lacks ``removed``."""
        old = self._snapshot
        replaced = {s.subject_id for s in added} | set(removed)
        keep = [i for i, sid in enumerate(old.subject_ids) if sid not in replaced]
        subjects, expires, encoded, row_subject, row_finger = [], [], [], [], []
        for i in keep:
            new_index = len(subjects)
            subjects.append(old.subject_ids[i])
            expires.append(old.expires_at[i])
            for r in np.flatnonzero(old.row_subject == i):
                encoded.append(old.encoded[r])
                row_subject.append(new_index)
                row_finger.append(old.row_finger[r])
        for s, encs in zip(added, added_encoded, strict=True):
            new_index = len(subjects)
            subjects.append(s.subject_id)
            expires.append(np.inf if s.expires_at is None else s.expires_at)
            for t, e in zip(s.fingers, encs, strict=True):
                encoded.append(e)
                row_subject.append(new_index)
                row_finger.append(int(t.finger))
        self._snapshot = self._build(subjects, expires, encoded, row_subject, row_finger)

    def _build(self, subjects, expires, encoded, row_subject=(), row_finger=()) -> Snapshot:
        row_subject = np.asarray(row_subject, dtype=np.int32)
        counts = np.bincount(row_subject) if row_subject.size else np.zeros(1, np.int64)
        return Snapshot(
            subject_ids=tuple(subjects),
            expires_at=np.asarray(expires, dtype=np.float64),
            encoded=tuple(encoded),
            row_subject=row_subject,
            row_finger=np.asarray(row_finger, dtype=np.uint8),
            gallery=self.comparator.stack(list(encoded)) if encoded else None,
            max_fingers=int(counts.max()) if counts.size else 1,
            by_id={sid: i for i, sid in enumerate(subjects)},
        )


def _finger_ok(row_finger: np.ndarray, finger: Finger) -> np.ndarray:
    """Rows a probe of this finger position is compared with."""
    if finger == Finger.UNKNOWN:
        return np.ones(row_finger.shape, dtype=bool)
    return (row_finger == int(finger)) | (row_finger == 0)


def _as_stored(t: Template) -> Template:
    return decode_template(encode_iso(t), finger=int(t.finger))


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
