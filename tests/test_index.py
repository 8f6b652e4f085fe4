"""The finger index: incremental segments, consistent views, removal, save and load."""

import numpy as np
import pytest

from matcher import index as index_module
from matcher.index import FingerIndex
from matcher.mcc import MccComparator
from matcher.template import Finger
from tests.factories import distorted_copy, random_template


@pytest.fixture(scope="module")
def comparator():
    return MccComparator()


@pytest.fixture(scope="module")
def encoded(comparator):
    return [comparator.encode(random_template(seed, finger=2 + seed % 2)) for seed in range(40)]


def _filled(comparator, encoded, batch):
    idx = FingerIndex(comparator)
    for start in range(0, len(encoded), batch):
        part = encoded[start:start + batch]
        keys = range(start, start + len(part))
        idx.add(keys, [2 + k % 2 for k in keys], part)
    return idx


def _scores_by_key(rs):
    return dict(zip(rs.keys.tolist(), rs.scores.tolist(), strict=True))


def test_mate_ranks_first_and_batches_give_the_same_scores(comparator, encoded) -> None:
    probe = comparator.encode(distorted_copy(random_template(7, finger=3), seed=1))
    one = _filled(comparator, encoded, 40).search(probe)
    many = _filled(comparator, encoded, 3).search(probe)
    assert one.keys[np.argmax(one.scores)] == 7
    assert _scores_by_key(one) == pytest.approx(_scores_by_key(many), abs=1e-4)
    assert one.eligible == 40 and one.scored == 40


def test_small_batches_are_merged_not_restacked_each_time(comparator, encoded, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "SEGMENT_ROWS", 16)
    idx = _filled(comparator, encoded, 1)
    sizes = [len(s) for s in idx.view.segments]
    assert sum(sizes) == 40 and max(sizes) <= 16
    assert len(sizes) <= 6, sizes  # merged, not one segment per batch


def test_finger_position_and_expiry_select_rows(comparator, encoded) -> None:
    idx = FingerIndex(comparator)
    idx.add([1, 2, 3], [2, 3, 0], encoded[:3], expires=[np.inf, np.inf, 100.0])
    rs = idx.search(encoded[0], finger=Finger(2), now=50.0)
    assert sorted(rs.keys.tolist()) == [1, 3]
    rs = idx.search(encoded[0], finger=Finger(2), now=200.0)
    assert rs.keys.tolist() == [1]
    assert sorted(idx.search(encoded[0]).keys.tolist()) == [1, 2, 3]


def test_a_held_view_does_not_change_and_update_is_atomic(comparator, encoded) -> None:
    idx = _filled(comparator, encoded[:10], 10)
    before = idx.view
    idx.update([100, 100], [2, 3], encoded[10:12], None, remove=[4])
    assert sorted(idx.search(encoded[4], view=before).keys.tolist()) == list(range(10))
    keys = idx.search(encoded[4]).keys.tolist()
    assert 4 not in keys and keys.count(100) == 2 and len(idx) == 11


def test_removal_compacts_and_keeps_scores(comparator, encoded) -> None:
    idx = _filled(comparator, encoded, 40)
    probe = encoded[30]
    full = _scores_by_key(idx.search(probe))
    assert idx.remove(range(0, 20)) == 20
    assert len(idx) == 20 and len(idx.view.segments[0]) == 20  # compacted
    left = _scores_by_key(idx.search(probe))
    assert set(left) == set(range(20, 40))
    assert left == pytest.approx({k: full[k] for k in left}, abs=1e-4)
    assert idx.remove([999]) == 0


def test_save_and_load_round_trip(comparator, encoded, tmp_path) -> None:
    idx = _filled(comparator, encoded, 7)
    idx.remove([3])
    idx.save(tmp_path / "snap", {"generation": 5})
    assert FingerIndex.read_header(tmp_path / "snap") == {"generation": 5}
    again = FingerIndex(comparator)
    assert again.load(tmp_path / "snap") == {"generation": 5}
    a, b = idx.search(encoded[9]), again.search(encoded[9])
    assert _scores_by_key(a) == pytest.approx(_scores_by_key(b), abs=1e-5)
    assert 3 not in b.keys and len(again) == 39
    assert again.view.nbytes() > 0
    assert FingerIndex.read_header(tmp_path / "missing") is None


def test_rows_of_a_key_form_a_gallery(comparator, encoded) -> None:
    idx = _filled(comparator, encoded, 40)
    gallery, fingers = idx.rows_of(5)
    assert len(gallery) == 1 and fingers.tolist() == [3]
    assert comparator.scores(encoded[5], gallery)[0] > 60
    assert len(idx.rows_of(12345)[0]) == 0
