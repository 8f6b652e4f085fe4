"""pytest-benchmark: 1:N identification latency and bulk enrolment on a synthetic gallery.

Small sizes so that it runs anywhere; ``python -m benchmarks.identify`` measures the large
ones (100,000 and 1,000,000 fingers).
"""

import pytest

from benchmarks.synthetic_gallery import gallery_template, mate_template
from matcher.mcc import MccComparator
from matcher.store import SubjectRecord, WatchlistStore
from matcher.watchlist import Watchlist

SIZE = 2048


@pytest.fixture(scope="module")
def watchlist(tmp_path_factory):
    w = Watchlist(WatchlistStore(tmp_path_factory.mktemp("identify") / "w.sqlite"),
                  MccComparator())
    for start in range(0, SIZE, 256):
        w.enroll([SubjectRecord(f"G-{i:06d}", (gallery_template(0, i),))
                  for i in range(start, start + 256)])
    yield w
    w.close()


def test_identify_single_finger(benchmark, watchlist) -> None:
    probe = mate_template(0, 17)
    result = benchmark(watchlist.identify, [probe])
    assert result.candidates[0].subject_id == "G-000017"


def test_enrol_batch_of_256(benchmark, tmp_path) -> None:
    w = Watchlist(WatchlistStore(tmp_path / "w.sqlite"), MccComparator())
    batches = iter(range(10_000))

    def enrol() -> None:
        b = next(batches)
        w.enroll([SubjectRecord(f"E-{b}-{i}", (gallery_template(1, 256 * b + i),))
                  for i in range(256)])

    benchmark.pedantic(enrol, rounds=3, iterations=1)
    done = next(batches)  # rounds run (one when benchmarks are disabled)
    assert done >= 1 and w.counts() == (256 * done, 256 * done)
    w.close()
