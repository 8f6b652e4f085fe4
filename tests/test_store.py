"""The SQLite watchlist store: durable, transactional, and ISO-exact."""

import numpy as np
import pytest

from matcher.store import StoreError, SubjectRecord, WatchlistStore
from matcher.template import make_template


def _template(seed: int, finger: int = 2):
    rng = np.random.default_rng(seed)
    n = 30
    return make_template(rng.uniform(10, 240, n), rng.uniform(10, 280, n),
                         rng.uniform(0, 2 * np.pi, n), rng.integers(1, 3, n),
                         rng.integers(20, 100, n), width=256, height=288, finger=finger)


def test_put_get_remove_and_reopen(tmp_path) -> None:
    path = tmp_path / "w.sqlite"
    store = WatchlistStore(path)
    s = SubjectRecord("P-1", (_template(1, 2), _template(2, 7)), {"name": "Doe"}, 0.0, None)
    assert store.put_subjects([s], replace=False) == [False]
    store.close()
    store = WatchlistStore(path)
    got = store.get_subject("P-1")
    assert got is not None and got.labels == {"name": "Doe"}
    assert [int(t.finger) for t in got.fingers] == [2, 7]
    assert np.allclose(got.fingers[0].x, np.round(s.fingers[0].x), atol=0.5)
    assert store.counts() == (1, 2)
    assert store.remove_subject("P-1") == 2
    assert store.remove_subject("P-1") == 0
    assert store.get_subject("P-1") is None


def test_existing_subject_without_replace_writes_nothing(tmp_path) -> None:
    store = WatchlistStore(tmp_path / "w.sqlite")
    store.put_subjects([SubjectRecord("A", (_template(1),))], replace=False)
    batch = [SubjectRecord("B", (_template(2),)), SubjectRecord("A", (_template(3),))]
    with pytest.raises(KeyError):
        store.put_subjects(batch, replace=False)
    assert store.get_subject("B") is None, "a refused batch must leave no subject behind"
    assert store.put_subjects(batch, replace=True) == [False, True]
    assert store.counts() == (2, 2)


def test_journal_is_wal_with_full_sync(tmp_path) -> None:
    store = WatchlistStore(tmp_path / "w.sqlite")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_generation_advances_with_every_write_and_stamps_subjects(tmp_path) -> None:
    store = WatchlistStore(tmp_path / "w.sqlite")
    store_id, g0 = store.state()
    store.put_subjects([SubjectRecord("A", (_template(1),)), SubjectRecord("B", (_template(2),))],
                       replace=False)
    store.remove_subject("nobody")  # no change, no new generation
    _, g1 = store.state()
    assert g1 == g0 + 1
    store.put_subjects([SubjectRecord("B", (_template(3),))], replace=True)
    sid, g2, versions = store.versions()
    assert sid == store_id and g2 == g1 + 1
    assert versions == [("A", g1), ("B", g2)]
    got = dict((r.subject_id, g) for r, g in store.subjects_with_generation(["B", "Z"]))
    assert got == {"B": g2}
    store.close()
    assert WatchlistStore(tmp_path / "w.sqlite").state() == (store_id, g2)
    assert WatchlistStore(tmp_path / "other.sqlite").state()[0] != store_id


def test_purge_expired_deletes_only_the_expired(tmp_path) -> None:
    store = WatchlistStore(tmp_path / "w.sqlite")
    store.put_subjects([SubjectRecord("old", (_template(1),), expires_at=100.0),
                        SubjectRecord("new", (_template(2),), expires_at=300.0),
                        SubjectRecord("kept", (_template(3),))], replace=False)
    assert store.purge_expired(200.0) == ["old"]
    assert store.counts() == (2, 2) and store.get_subject("old") is None
    assert store.purge_expired(200.0) == []


def test_a_subject_twice_in_one_write_is_refused_and_nothing_written(tmp_path) -> None:
    store = WatchlistStore(tmp_path / "w.sqlite")
    twice = [SubjectRecord("P-1", (_template(1),)), SubjectRecord("P-2", (_template(2),)),
             SubjectRecord("P-1", (_template(3),))]
    with pytest.raises(StoreError, match="P-1.*twice"):
        store.put_subjects(twice, replace=True)
    assert store.versions()[2] == []
    store.close()


def test_given_records_are_stored_as_given(tmp_path) -> None:
    from matcher.formats import iso_round_trip

    store = WatchlistStore(tmp_path / "w.sqlite")
    t = _template(4, finger=7)
    record, stored = iso_round_trip(t)
    store.put_subjects([SubjectRecord("P-4", (stored,))], replace=False, records=[[record]])
    got = store.get_subject("P-4").fingers[0]
    assert np.array_equal(got.x, stored.x) and np.array_equal(got.angle, stored.angle)
    assert int(got.finger) == 7
    store.close()
