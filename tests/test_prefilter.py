"""The LSH candidate stage: codes, voting, and the index searching only its candidates."""

import numpy as np
import pytest

from matcher.index import FingerIndex
from matcher.mcc import MccComparator
from matcher.prefilter import LshPrefilter
from tests.factories import distorted_copy, random_template

N = 60


@pytest.fixture(scope="module")
def comparator():
    return MccComparator()


@pytest.fixture(scope="module")
def gallery(comparator):
    return [comparator.encode(random_template(seed)) for seed in range(N)]


def _probe(comparator, seed):
    return comparator.encode(distorted_copy(random_template(seed), seed=seed + 1000))


def test_codes_are_deterministic_and_mates_share_more_of_them(comparator, gallery) -> None:
    pf = LshPrefilter(tables=8)
    codes = pf.codes(gallery[3])
    assert codes.shape == (len(gallery[3]), 8) and codes.dtype == np.uint16
    assert np.array_equal(codes, LshPrefilter(tables=8).codes(gallery[3]))
    assert not np.array_equal(codes, LshPrefilter(tables=8, seed=1).codes(gallery[3]))

    def shared(a, b):
        return sum(len(set(a[:, t]) & set(b[:, t])) for t in range(a.shape[1]))

    mates = [shared(pf.codes(_probe(comparator, s)), pf.codes(gallery[s])) for s in range(10)]
    others = [shared(pf.codes(_probe(comparator, s)), pf.codes(gallery[s + 20]))
              for s in range(10)]
    assert np.mean(mates) > 3 * np.mean(others)


def test_index_scores_only_candidates_and_finds_mates(comparator, gallery, tmp_path) -> None:
    pf = LshPrefilter(share=0.0, min_keep=10, from_rows=0, min_segment_rows=0)
    idx = FingerIndex(comparator, pf)
    for start in range(0, N, 16):
        part = gallery[start:start + 16]
        idx.add(range(start, start + len(part)), [2] * len(part), part)
    found = 0
    for seed in range(0, N, 6):
        rs = idx.search(_probe(comparator, seed))
        assert rs.eligible == N and rs.scored < N  # a share of the gallery, per segment
        found += int(rs.keys[np.argmax(rs.scores)]) == seed
    assert found >= 8  # of 10 mates
    exhaustive = FingerIndex(comparator).search(_probe(comparator, 6), view=idx.view)
    assert exhaustive.scored == N
    idx.save(tmp_path / "snap", {})
    again = FingerIndex(comparator, LshPrefilter(share=0.0, min_keep=10, from_rows=0,
                                                 min_segment_rows=0))
    again.load(tmp_path / "snap")
    a, b = idx.search(_probe(comparator, 12)), again.search(_probe(comparator, 12))
    assert sorted(a.keys.tolist()) == sorted(b.keys.tolist())
    assert idx.view.nbytes() > FingerIndex(comparator).view.nbytes()


def test_small_watchlists_are_searched_exhaustively(comparator, gallery) -> None:
    idx = FingerIndex(comparator, LshPrefilter(share=0.0, min_keep=10, from_rows=N + 1))
    idx.add(range(N), [2] * N, gallery)
    rs = idx.search(_probe(comparator, 5))
    assert rs.scored == rs.eligible == N


@pytest.mark.parametrize("min_segment_rows", [0, 10])
@pytest.mark.parametrize("codes_given", [False, True])
def test_merged_and_compacted_lists_equal_lists_built_afresh(
    comparator, gallery, min_segment_rows, codes_given
) -> None:
    pf = LshPrefilter(tables=8, from_rows=0, min_segment_rows=min_segment_rows)
    idx = FingerIndex(comparator, pf)
    for start in range(0, N, 7):  # batches of 7: the LSM tail merges several times
        part = gallery[start:start + 7]
        keys = range(start, start + len(part))
        if codes_given:  # as Watchlist.prepare hands them over
            stacked = comparator.stack(part)
            codes = idx.codes_for(stacked, len(idx) + len(part))
            assert codes is not None
            idx.update(keys, [2] * len(part), stacked, None, remove=(), codes=codes)
        else:
            idx.add(keys, [2] * len(part), part)
    idx.remove(list(range(3, N, 2)))  # over a quarter of every segment: compacted
    assert len(idx) == N - len(range(3, N, 2))
    merged_any = False
    for seg in idx.view.segments:
        assert seg.alive.all()  # compacted
        if len(seg) < min_segment_rows:  # small: no lists, scored whole
            assert "lists" not in seg.cache
            continue
        have = seg.cache["lists"]
        fresh = pf.lists(pf.codes(seg.gallery), seg.gallery.offsets)
        assert np.array_equal(have.bucket_start, fresh.bucket_start)
        assert np.array_equal(have.entries, fresh.entries)
        assert np.array_equal(have.norm, fresh.norm)
        assert have.max_bucket == fresh.max_bucket
        merged_any |= len(seg) > 7
    assert merged_any


def test_snapshot_keeps_the_lists_and_rebuilds_them_for_another_prefilter(
    comparator, gallery, tmp_path
) -> None:
    pf = LshPrefilter(tables=8, from_rows=0, min_segment_rows=0)
    idx = FingerIndex(comparator, pf)
    for start in range(0, N, 20):
        idx.add(range(start, start + 20), [2] * 20, gallery[start:start + 20])
    idx.save(tmp_path / "snap", {})
    again = FingerIndex(comparator, LshPrefilter(tables=8, from_rows=0, min_segment_rows=0))
    again.load(tmp_path / "snap")
    for saved, loaded in zip(idx.view.segments, again.view.segments, strict=True):
        have = loaded.cache["lists"]
        assert isinstance(have.entries, np.memmap)  # read from the snapshot, not rebuilt
        for name in ("bucket_start", "entries", "norm"):
            assert np.array_equal(getattr(have, name), getattr(saved.cache["lists"], name))
        assert have.max_bucket == saved.cache["lists"].max_bucket
    other = LshPrefilter(tables=8, seed=7, from_rows=0, min_segment_rows=0)
    rebuilt = FingerIndex(comparator, other)
    rebuilt.load(tmp_path / "snap")
    for seg in rebuilt.view.segments:
        fresh = other.lists(other.codes(seg.gallery), seg.gallery.offsets)
        assert not isinstance(seg.cache["lists"].entries, np.memmap)
        assert np.array_equal(seg.cache["lists"].entries, fresh.entries)
    probe = _probe(comparator, 12)
    assert np.array_equal(idx.search(probe).scores, again.search(probe).scores)


def test_watchlist_saves_lists_it_had_to_build_and_reads_them_next_time(tmp_path) -> None:
    from matcher.store import SubjectRecord, WatchlistStore
    from matcher.watchlist import Watchlist

    def open_watchlist(prefilter):
        return Watchlist(WatchlistStore(tmp_path / "w.sqlite"), MccComparator(),
                         prefilter=prefilter)

    w = open_watchlist(None)  # an older matcher: its snapshot has no lists
    w.enroll([SubjectRecord(f"S-{i}", (random_template(i, finger=2),)) for i in range(30)])
    w.close()
    w = open_watchlist(LshPrefilter(tables=8, from_rows=0, min_segment_rows=0))
    assert w.index.lists_built_on_load == 1
    w.close()  # nothing enrolled, but the snapshot is written again with the lists
    w = open_watchlist(LshPrefilter(tables=8, from_rows=0, min_segment_rows=0))
    assert w.index.lists_built_on_load == 0
    assert isinstance(w.index.view.segments[0].cache["lists"].entries, np.memmap)
    assert w.identify([distorted_copy(random_template(4, finger=2), seed=9)]
                      ).candidates[0].subject_id == "S-4"
    w.close()


def test_small_segments_are_scored_whole_and_large_ones_through_candidates(
    comparator, gallery
) -> None:
    idx = FingerIndex(comparator, LshPrefilter(share=0.0, min_keep=4, from_rows=0,
                                               min_segment_rows=30))
    idx.add(range(40), [2] * 40, gallery[:40])
    idx.add(range(40, 52), [2] * 12, gallery[40:52])  # 12 * 2 < 40: not merged
    sizes = [len(seg) for seg in idx.view.segments]
    assert sizes == [40, 12]
    assert "lists" in idx.view.segments[0].cache
    assert "lists" not in idx.view.segments[1].cache
    rs = idx.search(_probe(comparator, 45))
    scored_small = np.isin(rs.keys, np.arange(40, 52)).sum()
    assert scored_small == 12 and rs.scored < 52  # the small one whole, the large one not
    assert int(rs.keys[np.argmax(rs.scores)]) == 45
