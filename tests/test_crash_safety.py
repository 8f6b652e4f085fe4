"""SIGKILL a real matcher process in the middle of bulk enrolment, restart, check the watchlist.

The matcher runs as a user runs it (``python -m matcher.cli serve --insecure``) and starts
from a snapshot of derived arrays taken before the stream, so the restart exercises the
snapshot-plus-changes path. After the restart every acknowledged subject must be present
with all its fingers and findable, and the index must hold exactly what the store holds.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.client import MatcherClient, MatcherError, RetryPolicy, enroll_request
from matcher.mcc import MccComparator
from matcher.store import SubjectRecord, WatchlistStore
from matcher.watchlist import Watchlist
from protos.ink.v1 import matcher_pb2 as pb
from tests.factories import distorted_copy, random_template

ROOT = Path(__file__).resolve().parents[1]
CTX = pb.Context(operator_id="crash-test", device_id="bulk", reason="kill -9 test")
FINGERS = (2, 7)


def _fingers(n: int):
    return [random_template(10 * n + f, finger=f) for f in FINGERS]


def _start(db: Path) -> tuple[subprocess.Popen, str]:
    port_file = db.with_name(f"port-{time.monotonic_ns()}")
    log = (db.parent / "matcher.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matcher.cli", "serve", "--db", str(db), "--insecure",
         "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    log.close()
    deadline = time.monotonic() + 300  # slow when the machine is busy
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((db.parent / "matcher.log").read_text()[-3000:])
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


def _enrol_until_killed(address: str, acked: dict[str, int], stop: threading.Event) -> None:
    client = MatcherClient(address, insecure=True, deadline_s=30, retry=RetryPolicy(attempts=1))
    k = 1000
    try:
        while not stop.is_set():
            ids = [(k + i, f"K-{k + i:06d}") for i in range(16)]
            k += 16
            try:
                summary = client.enroll_stream(
                    [enroll_request(sid, _fingers(n), CTX) for n, sid in ids])
            except MatcherError:
                return  # killed mid-call: that call acknowledged nothing
            acked.update(dict.fromkeys(summary.subject_ids, len(FINGERS)))
    finally:
        client.close()


@pytest.mark.slow
def test_sigkill_during_bulk_enrolment_loses_nothing_acknowledged(tmp_path) -> None:
    db = tmp_path / "watchlist.sqlite"
    before = Watchlist(WatchlistStore(db), MccComparator())
    before.enroll([SubjectRecord(f"B-{n:06d}", tuple(_fingers(n))) for n in range(40)])
    before.close()  # leaves a snapshot the server starts from
    assert (tmp_path / "watchlist.sqlite.index" / "header.json").exists()

    proc, address = _start(db)
    acked: dict[str, int] = {}
    stop = threading.Event()
    worker = threading.Thread(target=_enrol_until_killed, args=(address, acked, stop))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 48 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the stream
    finally:
        stop.set()
        worker.join(timeout=60)
        proc.wait(timeout=30)
    assert len(acked) >= 48, "the stream did not get going before the deadline"

    proc, address = _start(db)
    try:
        with MatcherClient(address, insecure=True, deadline_s=30) as client:
            client.wait_until_serving(60)
            for sid, n in acked.items():
                assert len(client.get_subject(sid).enrolled) == n, sid
            stats = client.stats()
            # searchable = stored: the index re-derived exactly what the store holds
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as check:
                subjects = check.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
                partial = check.execute(
                    "SELECT COUNT(*) FROM (SELECT subject_id FROM fingers GROUP BY subject_id "
                    "HAVING COUNT(*) != ?)", (len(FINGERS),)).fetchone()[0]
                assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert partial == 0, "a half-written subject is in the store"
            assert stats.subjects == subjects and stats.fingers == 2 * subjects
            assert subjects >= 40 + len(acked)
            last = max(acked)  # the last acknowledged subject is found by a search
            probes = [distorted_copy(t, seed=5) for t in _fingers(int(last.split("-")[1]))]
            answer = client.identify(probes, CTX, max_candidates=3)
            assert answer.candidates[0].subject_id == last
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
