"""The searchable finger index: add, remove, search, save, load (in the spirit of faiss).

Rows are enrolled fingers. Each row carries an integer ``key`` (the watchlist gives every
version of a subject a new key, never reused), a finger position and an expiry time.
The derived arrays live in append-only *segments*: a batch of additions becomes a new
small segment, and every :data:`MERGE_FANOUT` segments of one size level are merged, up
to :data:`SEGMENT_ROWS`, so enrolment never restacks the whole gallery. A removal clears
rows in a copy of the affected segment's ``alive`` mask; a segment whose dead share grows
past :data:`COMPACT_DEAD` is rewritten without them.

Every change builds a new immutable :class:`IndexView` (sharing the untouched segments)
and publishes it with one reference assignment, so a search that took a view sees one
consistent version of the watchlist -- never half of a replaced subject -- and waits for
no writer. Writers are serialised by the caller (the watchlist holds a lock).

With a candidate stage (:class:`matcher.prefilter.LshPrefilter`), each segment also keeps
its inverted lists (built from the cylinders when the segment is made or loaded), and a
search of a large watchlist passes only the candidate rows they select to the comparator;
without one, or below the prefilter's size, every eligible row is compared.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matcher.comparator import Comparator
from matcher.prefilter import InvertedLists, LshPrefilter
from matcher.template import Finger


# Merges allocate fresh memory as the index grows. numpy asks the kernel for huge pages
# for large arrays (madvise), and where transparent huge pages defragment on madvise --
# this project's VMs -- every such allocation stalls in memory compaction: merging four
# segments of 16,384 rows took 2.1-2.6 s that way and 0.55 s without. Searches read
# mapped snapshot files, on ordinary pages anyway.
def _no_huge_page_requests() -> None:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, 1.26
        try:
            __import__(module, fromlist=["_"])._set_madvise_hugepage(False)
            return
        except (ImportError, AttributeError):
            continue


_no_huge_page_requests()

SEGMENT_ROWS = 65_536  # merged segments stop growing here: bounded merge cost and memory
MERGE_FANOUT = 4  # segments of one size level merged at once (binary merging copied twice)
COMPACT_DEAD = 0.25  # rewrite a segment once this share of its rows is removed
SNAPSHOT_FORMAT = 1
LIST_ARRAYS = ("bucket_start", "entries", "norm")  # saved with a snapshot (InvertedLists)


@dataclass(frozen=True)
class Segment:
    """Rows enrolled together: the comparator's stacked gallery plus per-row metadata."""

    gallery: Any
    keys: np.ndarray  # int64 per row
    fingers: np.ndarray  # uint8 per row
    expires: np.ndarray  # float64 per row, +inf when it never expires
    alive: np.ndarray  # bool per row (a copy is made on every removal)
    # derived from the gallery (the prefilter's inverted lists, never saved: they are
    # rebuilt from the cylinders); shared by copies that differ only in ``alive``
    cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def live_rows(self) -> int:
        return int(self.alive.sum())


@dataclass(frozen=True)
class IndexView:
    """One immutable version of the index: what a search reads from start to end."""

    segments: tuple[Segment, ...]
    rows: int  # live rows

    def nbytes(self) -> int:
        """Bytes of every array the view holds (galleries, metadata, inverted lists)."""
        total = 0
        for s in self.segments:
            total += _gallery_nbytes(s.gallery)
            total += s.keys.nbytes + s.fingers.nbytes + s.expires.nbytes + s.alive.nbytes
            lists = s.cache.get("lists")
            if lists is not None:
                total += lists.nbytes
            codes = s.cache.get("codes")  # the newest segments', until their lists exist
            if codes is not None:
                total += codes.nbytes
        return total


@dataclass(frozen=True)
class RowScores:
    """Scores of the rows one search scored (others count as not matched)."""

    keys: np.ndarray  # int64
    fingers: np.ndarray  # uint8
    scores: np.ndarray  # float32 calibrated
    scored: int  # rows scored with MCC (after the candidate stage)
    eligible: int  # rows the probe was eligible for (live, right finger position)


class FingerIndex:
    """Enrolled fingers, searchable one probe at a time (see the module docstring)."""

    def __init__(
        self, comparator: Comparator, prefilter: LshPrefilter | None = None,
        view: IndexView | None = None,
    ) -> None:
        """An empty index, or one starting from another index's ``view`` (shared, never
        changed: changes here make new versions of their own)."""
        self.comparator = comparator
        self.prefilter = prefilter
        self._view = IndexView((), 0)
        self.lists_built_on_load = 0  # segments whose saved snapshot lacked their lists
        if view is not None:
            self._publish(list(view.segments))

    # ---- reading ---------------------------------------------------------------------
    @property
    def view(self) -> IndexView:
        """The current version; keep the reference for the length of one search."""
        return self._view

    def __len__(self) -> int:
        return self._view.rows

    def search(
        self,
        probe: Any,
        *,
        finger: Finger = Finger.UNKNOWN,
        now: float = float("-inf"),
        view: IndexView | None = None,
    ) -> RowScores:
        """Calibrated scores of one encoded probe against the live rows it may match.

        A probe with a known finger position is compared with rows of that position and
        rows of unknown position only. Rows expired at ``now`` are not compared.
        """
        view = self._view if view is None else view
        eligible = [_eligible(seg, finger, now) for seg in view.segments]
        eligible_total = int(sum(int(e.sum()) for e in eligible))
        probe_codes = None
        if self.prefilter is not None and self.prefilter.applies_to(eligible_total):
            probe_codes = self.prefilter.codes(probe)
        parts = []
        for seg, ok in zip(view.segments, eligible, strict=True):
            if not ok.any():
                continue
            if probe_codes is not None and self.prefilter.indexes(len(seg)):
                keep = self.prefilter.quota(int(ok.sum()), eligible_total)
                rows = self.prefilter.candidates(probe_codes, self._lists(seg), ok, keep)
            else:
                # only eligible rows are compared: a probe of a known finger costs the rows
                # of that finger, not the whole watchlist
                rows = np.flatnonzero(ok)
            parts.append((seg, rows))
        if not parts:
            empty = np.zeros(0, np.int64)
            return RowScores(empty, np.zeros(0, np.uint8), np.zeros(0, np.float32), 0, 0)
        scores = self.comparator.scores_of_parts(probe, [(s.gallery, r) for s, r in parts])
        return RowScores(
            np.concatenate([s.keys[r] for s, r in parts]),
            np.concatenate([s.fingers[r] for s, r in parts]),
            np.concatenate(scores).astype(np.float32),
            sum(int(r.size) for _, r in parts),
            eligible_total,
        )

    def rows_of(self, key: int, view: IndexView | None = None) -> tuple[Any, np.ndarray]:
        """A gallery of the live rows of ``key`` and their finger positions (for 1:1)."""
        view = self._view if view is None else view
        for seg in view.segments:
            rows = np.flatnonzero((seg.keys == key) & seg.alive)
            if rows.size:  # a key's rows are always added in one segment
                return _take(seg.gallery, rows), seg.fingers[rows]
        return self.comparator.stack([]), np.zeros(0, np.uint8)

    # ---- changes (callers serialise them) -----------------------------------------------
    def add(
        self,
        keys: Sequence[int],
        fingers: Sequence[int],
        encoded: Sequence[Any],
        expires: Sequence[float] | None = None,
    ) -> None:
        """Add rows; they become searchable all at once."""
        self.update(keys, fingers, encoded, expires, remove=())

    def remove(self, keys: Sequence[int]) -> int:
        """Remove every row of these keys; the number of rows removed."""
        before = self._view.rows
        self.update((), (), (), None, remove=keys)
        return before - self._view.rows

    def update(
        self,
        keys: Sequence[int],
        fingers: Sequence[int],
        encoded: Sequence[Any] | Any,
        expires: Sequence[float] | None,
        *,
        remove: Sequence[int],
        codes: np.ndarray | None = None,
    ) -> None:
        """Remove and add in one step: a search sees both or neither.

        ``encoded`` is a sequence of the comparator's encodings, or a gallery it stacked
        already (:meth:`~matcher.comparator.Comparator.encode_many`), one row per key;
        ``codes`` its :meth:`codes_for`, when the caller has them.
        """
        segments = list(self._view.segments)
        if len(remove):
            gone = np.asarray(sorted(set(int(k) for k in remove)), np.int64)
            segments = [self._without(seg, gone) for seg in segments]
            segments = [s for s in segments if s.live_rows]
        if len(encoded):
            n = len(encoded)
            exp = np.full(n, np.inf) if expires is None else np.asarray(expires, np.float64)
            added = Segment(
                gallery=(
                    self.comparator.stack(list(encoded)) if isinstance(encoded, Sequence)
                    else encoded
                ),
                keys=np.asarray(keys, np.int64),
                fingers=np.asarray(fingers, np.uint8),
                expires=np.where(np.isfinite(exp), exp, np.inf),
                alive=np.ones(n, bool),
            )
            if codes is not None:
                added.cache["codes"] = codes
            if self._indexed(sum(seg.live_rows for seg in segments) + n) and \
                    self.prefilter.indexes(n):
                self._lists(added)  # built on the new rows alone; merges then merge lists
            segments = self._merge_tail(segments + [added])
        self._publish(segments)

    def _indexed(self, rows: int) -> bool:
        """Whether a watchlist of this many rows keeps inverted lists: only where searches
        may use them (small watchlists are searched exhaustively; their lists would
        cost memory -- a few MB per segment -- for nothing)."""
        return self.prefilter is not None and self.prefilter.applies_to(rows)

    def _lists(self, seg: Segment):
        lists = seg.cache.get("lists")
        if lists is None:  # two readers may both build it: harmless
            codes = seg.cache.get("codes")
            if codes is None:
                codes = self.prefilter.codes(seg.gallery)
            lists = self.prefilter.lists(codes, seg.gallery.offsets)
            seg.cache["lists"] = lists
            seg.cache.pop("codes", None)  # needed no more: merges merge lists
        return lists

    def codes_for(self, encoded: Any, rows_after: int) -> np.ndarray | None:
        """The candidate stage's codes of a gallery about to be added, when a watchlist of
        ``rows_after`` rows will index them (else None). For callers that prepare additions
        outside the writer's turn (:meth:`matcher.watchlist.Watchlist.prepare`): the codes
        go to :meth:`update` and spare the writer computing them."""
        if not self._indexed(rows_after):
            return None
        return self.prefilter.codes(encoded)

    def _without(self, seg: Segment, gone: np.ndarray) -> Segment:
        hit = np.isin(seg.keys, gone) & seg.alive
        if not hit.any():
            return seg
        seg = dataclasses.replace(seg, alive=seg.alive & ~hit)
        if 1.0 - seg.live_rows / max(1, len(seg)) > COMPACT_DEAD:
            lists, alive = seg.cache.get("lists"), seg.alive
            seg = _compacted(seg)
            if lists is not None:
                seg.cache["lists"] = self.prefilter.merged([(lists, _row_map(alive, 0))])
        return seg

    def _merge_tail(self, segments: list[Segment]) -> list[Segment]:
        """Merge the newest segments once :data:`MERGE_FANOUT` of them share a size level
        (size-tiered, LSM style): a row is copied once per level, four times from a batch
        of 256 to a full segment. Their inverted lists are merged too, not built again."""
        while len(segments) >= 2:
            level = _level(len(segments[-1]))
            run = 1
            while run < len(segments) and _level(len(segments[-run - 1])) == level:
                run += 1
            if run < MERGE_FANOUT:
                break
            # the longest run of the newest that fits in one segment
            take, rows = 0, 0
            while take < run and rows + len(segments[-take - 1]) <= SEGMENT_ROWS:
                rows += len(segments[-take - 1])
                take += 1
            if take < 2:
                break
            parts = segments[-take:]
            merged = _concat([_compacted(p) for p in parts])
            if any("lists" in p.cache for p in parts):
                # parts without lists are the smaller ones: build theirs and merge, rather
                # than build the merged segment's all over again
                maps, base = [], 0
                for p in parts:
                    maps.append((self._lists(p), _row_map(p.alive, base)))
                    base += p.live_rows
                merged.cache["lists"] = self.prefilter.merged(maps)
            segments[-take:] = [merged]
        return segments

    def _publish(self, segments: list[Segment]) -> None:
        if self._indexed(sum(seg.live_rows for seg in segments)):
            # built by the writer, so that readers never wait for them; segments in
            # parallel (the kernels release the GIL): a restart builds them all
            missing = [seg for seg in segments
                       if "lists" not in seg.cache and self.prefilter.indexes(len(seg))]
            if len(missing) > 1:
                with ThreadPoolExecutor(max_workers=getattr(self.comparator, "threads", 1)) as pool:
                    list(pool.map(self._lists, missing))
            for seg in missing:
                self._lists(seg)
        self._view = IndexView(tuple(segments), sum(s.live_rows for s in segments))

    # ---- persistence -----------------------------------------------------------------
    def save(self, path: str | Path, header: dict) -> None:
        """Write the view's arrays and ``header`` to folder ``path``, atomically.

        The folder is written next to its final place and renamed over it, so a crash
        leaves the old snapshot or the new one, never a mix.
        """
        path = Path(path)
        view = self._view
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        layout, lists_saved = [], []
        for i, seg in enumerate(view.segments):
            lists = seg.cache.get("lists") if seg.alive.all() else None
            seg = _compacted(seg)
            arrays = _gallery_arrays(seg.gallery)
            arrays.update(keys=seg.keys, fingers=seg.fingers, expires=seg.expires)
            for name, a in arrays.items():
                np.save(tmp / f"{i:04d}-{name}.npy", a, allow_pickle=False)
            layout.append(sorted(arrays))
            # the inverted lists too: at a million fingers they take a minute to build
            lists_saved.append(None if lists is None else lists.max_bucket)
            if lists is not None:
                for name in LIST_ARRAYS:
                    np.save(tmp / f"{i:04d}-lists-{name}.npy", getattr(lists, name),
                            allow_pickle=False)
        meta = {"format": SNAPSHOT_FORMAT, "segments": layout,
                "lists": {"prefilter": self._prefilter_key(), "max_bucket": lists_saved},
                "gallery_type": type(view.segments[0].gallery).__qualname__
                if view.segments else None, "header": header}
        (tmp / "header.json").write_text(json.dumps(meta))
        _fsync_tree(tmp)
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def read_header(path: str | Path) -> dict | None:
        """The header saved with a snapshot, or None when there is no readable one."""
        try:
            meta = json.loads((Path(path) / "header.json").read_text())
        except (OSError, ValueError):
            return None
        return meta.get("header") if meta.get("format") == SNAPSHOT_FORMAT else None

    def load(self, path: str | Path) -> dict:
        """Replace the contents with a saved snapshot; its header. Raises OSError/ValueError."""
        path = Path(path)
        meta = json.loads((path / "header.json").read_text())
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {meta.get('format')} is not {SNAPSHOT_FORMAT}")
        empty = self.comparator.stack([])
        segments = []
        for i, names in enumerate(meta["segments"]):
            # Mapped, not read: a restart serves as soon as the small tables are in, and
            # the arrays come in from the page cache as searches touch them. Private
            # copy-on-write maps give ordinary writable arrays (the kernels' usual types);
            # nothing writes to them, and save() replaces files, never rewrites them.
            arrays = {n: np.load(path / f"{i:04d}-{n}.npy", allow_pickle=False, mmap_mode="c")
                      for n in names}
            keys, fingers = arrays.pop("keys"), arrays.pop("fingers")
            expires = arrays.pop("expires")
            gallery = dataclasses.replace(empty, **arrays)
            seg = Segment(gallery, keys, fingers, expires, np.ones(keys.shape[0], bool))
            saved = meta.get("lists", {})
            max_bucket = saved.get("max_bucket", [None] * (i + 1))[i]
            if max_bucket is not None and saved.get("prefilter") == self._prefilter_key():
                seg.cache["lists"] = InvertedLists(
                    **{n: np.load(path / f"{i:04d}-lists-{n}.npy", allow_pickle=False,
                                  mmap_mode="c") for n in LIST_ARRAYS},
                    max_bucket=int(max_bucket),
                )
            segments.append(seg)
        read = sum("lists" in seg.cache for seg in segments)
        self._publish(segments)
        self.lists_built_on_load = sum("lists" in seg.cache for seg in segments) - read
        return meta["header"]

    def _prefilter_key(self) -> str | None:
        """What saved inverted lists must have been built with to be reused."""
        return None if self.prefilter is None else self.prefilter.signature


def _eligible(seg: Segment, finger: Finger, now: float) -> np.ndarray:
    ok = seg.alive & (seg.expires > now)
    if finger != Finger.UNKNOWN:
        ok &= (seg.fingers == int(finger)) | (seg.fingers == 0)
    return ok


def _level(rows: int) -> int:
    """The size level of a segment: floor(log4(rows)) for a fanout of 4."""
    level, size = 0, MERGE_FANOUT
    while rows >= size:
        level += 1
        size *= MERGE_FANOUT
    return level


def _row_map(alive: np.ndarray, base: int) -> np.ndarray:
    """Each row's number among the live rows, offset by ``base``; -1 for removed rows."""
    return np.where(alive, base + np.cumsum(alive) - 1, -1).astype(np.int32)


def _gallery_arrays(gallery: Any) -> dict[str, np.ndarray]:
    return {f.name: getattr(gallery, f.name) for f in dataclasses.fields(gallery)}


def _gallery_nbytes(gallery: Any) -> int:
    return sum(a.nbytes for a in _gallery_arrays(gallery).values())


def _concat(parts: list[Segment]) -> Segment:
    """One segment holding the rows of ``parts`` in order (galleries with ``offsets``)."""
    galleries = [_gallery_arrays(p.gallery) for p in parts]
    merged = {}
    for name in galleries[0]:
        if name == "offsets":
            pieces = [galleries[0]["offsets"]]
            for g in galleries[1:]:
                pieces.append(g["offsets"][1:] + pieces[-1][-1])
            merged[name] = np.ascontiguousarray(np.concatenate(pieces))
        else:
            merged[name] = np.ascontiguousarray(np.concatenate([g[name] for g in galleries]))
    seg = Segment(
        gallery=dataclasses.replace(parts[0].gallery, **merged),
        keys=np.concatenate([p.keys for p in parts]),
        fingers=np.concatenate([p.fingers for p in parts]),
        expires=np.concatenate([p.expires for p in parts]),
        alive=np.concatenate([p.alive for p in parts]),
    )
    if all("codes" in p.cache for p in parts):  # kept until the merged lists are built
        seg.cache["codes"] = np.concatenate([p.cache["codes"] for p in parts])
    return seg


def _compacted(seg: Segment) -> Segment:
    """The segment without its removed rows (itself when none are removed)."""
    if seg.alive.all():
        return seg
    keep = np.flatnonzero(seg.alive)
    return Segment(
        gallery=_take(seg.gallery, keep),
        keys=seg.keys[keep],
        fingers=seg.fingers[keep],
        expires=seg.expires[keep],
        alive=np.ones(keep.size, bool),
    )


def _take(gallery: Any, keep: np.ndarray) -> Any:
    """A gallery of the templates ``keep`` (ascending) of ``gallery``."""
    arrays = _gallery_arrays(gallery)
    offsets = arrays["offsets"]
    counts = offsets[keep + 1] - offsets[keep]
    new_offsets = np.zeros(keep.size + 1, np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    # cylinder rows of the kept templates, in order
    starts = np.repeat(offsets[keep] - new_offsets[:-1], counts)
    cyl = starts + np.arange(int(new_offsets[-1]), dtype=np.int64)
    taken = {name: (new_offsets if name == "offsets" else np.ascontiguousarray(a[cyl]))
             for name, a in arrays.items()}
    return dataclasses.replace(gallery, **taken)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
