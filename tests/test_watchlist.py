"""The watchlist over the index: enrol, replace, remove, purge, restart from a snapshot."""

import threading

import numpy as np
import pytest

from matcher.mcc import MccComparator
from matcher.store import SubjectRecord, WatchlistStore
from matcher.template import Finger
from matcher.watchlist import SubjectNotFound, Watchlist
from tests.factories import distorted_copy, random_template


class CountingComparator(MccComparator):
    """The real MCC comparator, counting encodings (to see what a start re-derives)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def encode(self, template):
        self.encoded += 1
        return super().encode(template)

    def encode_many(self, templates, **kw):
        self.encoded += len(templates)
        return super().encode_many(templates, **kw)


def _subject(i: int, expires=None) -> SubjectRecord:
    return SubjectRecord(f"S-{i:04d}", (random_template(2 * i, finger=2),
                                       random_template(2 * i + 1, finger=7)),
                         {"i": i}, 0.0, expires)


def _probe(i: int, finger: int = 2, seed: int = 99):
    return distorted_copy(random_template(2 * i + (finger == 7), finger=finger), seed=seed)


def _open(path, **kw) -> Watchlist:
    return Watchlist(WatchlistStore(path), CountingComparator(), **kw)


def test_bulk_batches_are_searchable_and_fused(tmp_path) -> None:
    w = _open(tmp_path / "w.sqlite")
    for start in range(0, 30, 7):
        w.enroll([_subject(i) for i in range(start, min(30, start + 7))])
    assert w.counts() == (30, 60)
    result = w.identify([_probe(11, 2), _probe(11, 7)])
    assert result.hit and result.candidates[0].subject_id == "S-0011"
    assert {f.finger for f in result.candidates[0].fingers} == {Finger(2), Finger(7)}
    assert result.comparisons == 60 and result.gallery_fingers == 60
    assert w.verify("S-0011", [_probe(11, 7)]).hit
    assert not w.verify("S-0012", [_probe(11, 7)]).hit


def test_replace_and_remove_change_what_is_found(tmp_path) -> None:
    w = _open(tmp_path / "w.sqlite")
    w.enroll([_subject(i) for i in range(10)])
    other = SubjectRecord("S-0003", (random_template(500, finger=2),))
    assert w.enroll([other], replace=True) == [True]
    assert w.counts() == (10, 19)
    assert w.identify([_probe(3)]).candidates[0].subject_id != "S-0003" or not \
        w.identify([_probe(3)]).hit
    assert w.remove("S-0004") == 2
    assert all(c.subject_id != "S-0004" for c in w.identify([_probe(4)], max_candidates=20)
               .candidates)
    with pytest.raises(SubjectNotFound):
        w.remove("S-0004")


def test_purge_expired_removes_from_store_and_index(tmp_path) -> None:
    w = _open(tmp_path / "w.sqlite")
    w.enroll([_subject(i, expires=1000.0 if i < 3 else None) for i in range(8)])
    assert w.identify([_probe(1)], now=500.0).candidates[0].subject_id == "S-0001"
    assert all(c.subject_id != "S-0001"
               for c in w.identify([_probe(1)], now=2000.0, max_candidates=20).candidates)
    assert w.purge_expired(now=2000.0) == 3
    assert w.counts() == (5, 10) and w.store.counts() == (5, 10)
    assert w.purge_expired(now=2000.0) == 0


def test_restart_uses_the_snapshot_and_rederives_only_changes(tmp_path) -> None:
    path = tmp_path / "w.sqlite"
    w = _open(path)
    w.enroll([_subject(i) for i in range(12)])
    w.close()  # writes the snapshot
    w = _open(path)
    assert w.comparator.encoded == 0, "a matching snapshot needs no re-encoding"
    assert w.counts() == (12, 24)
    expected = w.identify([_probe(5)]).candidates[0]
    # changes after the snapshot, then a crash (no close): only they are re-derived
    w.enroll([_subject(20)])
    w.remove("S-0001")
    w.enroll([SubjectRecord("S-0002", (random_template(777, finger=2),))], replace=True)
    w2 = _open(path)
    assert w2.comparator.encoded == 3  # S-0020's two fingers and the new S-0002
    assert w2.counts() == (12, 23)
    got = w2.identify([_probe(5)]).candidates[0]
    assert got.subject_id == expected.subject_id
    assert got.score == pytest.approx(expected.score, abs=1e-4)
    assert all(c.subject_id != "S-0001" for c in w2.identify([_probe(1)], max_candidates=20)
               .candidates)


def test_a_snapshot_of_another_store_is_never_used(tmp_path) -> None:
    a = _open(tmp_path / "a.sqlite")
    a.enroll([_subject(i) for i in range(4)])
    a.close()
    b = _open(tmp_path / "b.sqlite", snapshot_path=tmp_path / "a.sqlite.index")
    assert b.counts() == (0, 0)
    (tmp_path / "a.sqlite").rename(tmp_path / "c.sqlite")  # same file, found by its id
    c = _open(tmp_path / "c.sqlite", snapshot_path=tmp_path / "a.sqlite.index")
    assert c.comparator.encoded == 0 and c.counts() == (4, 8)


def test_searches_during_changes_never_see_half_a_subject(tmp_path) -> None:
    w = _open(tmp_path / "w.sqlite")
    w.enroll([_subject(i) for i in range(6)])
    stop = threading.Event()
    seen = []

    def search() -> None:
        while not stop.is_set():
            r = w.identify([_probe(2, 2), _probe(2, 7)], max_candidates=20)
            seen.append(r)

    t = threading.Thread(target=search)
    t.start()
    try:
        for round_ in range(6):
            # S-0002 flips between two fingers and one: a search must see either whole
            if round_ % 2:
                w.enroll([_subject(2)], replace=True)
            else:
                w.enroll([SubjectRecord("S-0002", (random_template(900, finger=3),))],
                         replace=True)
    finally:
        stop.set()
        t.join()
    assert seen
    for r in seen:
        assert r.gallery_fingers in (11, 12)
        s2 = [c for c in r.candidates if c.subject_id == "S-0002"]
        assert len(s2) <= 1
        if s2:
            fingers = {f.finger for f in s2[0].fingers}
            assert fingers in ({Finger(2), Finger(7)}, {Finger(3)}, {Finger(2)}, {Finger(7)})
    assert np.isfinite([r.candidates[0].score for r in seen]).all()


def test_pipelined_batches_enrol_like_enroll_and_a_refused_batch_writes_nothing(
    tmp_path,
) -> None:
    w = _open(tmp_path / "w.sqlite")
    batches = [([_subject(i) for i in range(0, 5)], False),
               ([_subject(5), _subject(6), _subject(2)], False),  # S-0002 exists: refused
               ([_subject(i) for i in range(7, 12)], False),
               ([_subject(3)], True)]  # replacing is allowed when asked for
    outcomes = list(w.enroll_batches(batches))
    assert [o.error is None for o in outcomes] == [True, False, True, True]
    assert "already enrolled" in str(outcomes[1].error)
    assert outcomes[0].replaced == [False] * 5 and outcomes[3].replaced == [True]
    assert w.counts() == (10, 20)  # neither S-0005 nor S-0006 of the refused batch
    assert w.store.get_subject("S-0005") is None
    result = w.identify([_probe(9, 7)])
    assert result.hit and result.candidates[0].subject_id == "S-0009"
    w.close()
    again = _open(tmp_path / "w.sqlite")
    assert again.counts() == (10, 20)
    again.close()
