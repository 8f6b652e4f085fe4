"""Faults with a real matcher process: kill -9 mid-enrolment, restart, full disk, read-only.

The long crash run (20 cycles) is ``python -m benchmarks.kill_restart --cycles 20``.

How the faults are made, without privileges a CI runner may lack:
- full disk: the matcher runs with RLIMIT_FSIZE, so a file cannot grow past a limit and
  writes fail as on a full disk (SQLite sees EFBIG; Python ignores SIGXFSZ);
- read-only folder: chmod; when the tests run as root, which chmod does not stop, the
  matcher is started without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH/CAP_FOWNER (dropped
  from its capability bounding set before exec), so the modes apply to it too.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sqlite3
import stat
import threading
import time
from pathlib import Path

import grpc
import pytest

from benchmarks.kill_restart import run_cycles
from benchmarks.matcher_process import start_matcher
from gateway.client import MatcherClient, MatcherError, RetryPolicy
from matcher.audit import AuditLog
from matcher.server import default_audit_path
from protos.ink.v1 import matcher_pb2 as pb
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="desk-2", device_id="custody-pc", reason="fault test")
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def test_sigkill_during_bulk_enrolment_loses_no_acknowledged_subject(tmp_path) -> None:
    report = run_cycles(tmp_path, cycles=3, seed=5, log=lambda _m: None)
    assert report.cycles == 3 and report.acknowledged > 0
    assert report.lost == [] and report.partial == []
    assert report.integrity == "ok" and report.audit_problems == 0


def test_a_gateway_client_rides_out_a_matcher_restart(tmp_path) -> None:
    db = tmp_path / "w.sqlite"
    matcher = start_matcher(db)
    port = matcher.port
    enrolled = random_template(11, finger=2)
    # Long enough to cover a restart (a few seconds); the default policy gives up sooner.
    retry = RetryPolicy(attempts=40, first_backoff_s=0.25, max_backoff_s=1.0)
    client = MatcherClient(f"127.0.0.1:{port}", insecure=True, deadline_s=90, retry=retry)
    restarted = {}
    try:
        client.enroll("R-1", [enrolled], CTX)
        probe = distorted_copy(enrolled, seed=3)
        assert client.identify([probe], CTX).candidates[0].subject_id == "R-1"
        matcher.stop()

        def restart() -> None:
            time.sleep(0.5)  # the client is already retrying when the matcher comes back
            restarted["matcher"] = start_matcher(db, port=port)

        thread = threading.Thread(target=restart)
        thread.start()
        reply = client.identify([probe], CTX)  # issued while the matcher is down
        thread.join()
        assert reply.decision == pb.DECISION_HIT and reply.candidates[0].subject_id == "R-1"
    finally:
        client.close()
        matcher.stop()
        if "matcher" in restarted:
            restarted["matcher"].stop()


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_gives_a_clear_error_and_no_corruption(tmp_path) -> None:
    db = tmp_path / "w.sqlite"
    matcher = start_matcher(db, preexec_fn=_limit_file_size(400_000))
    acked = []
    try:
        with MatcherClient(matcher.address, insecure=True, deadline_s=30) as client:
            with pytest.raises(MatcherError) as info:
                for i in range(5000):
                    client.enroll(f"D-{i}", [random_template(i, finger=2)], CTX)
                    acked.append(f"D-{i}")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "disk space" in info.value.detail
            assert len(acked) > 10
            # Searches are refused too rather than answered without an audit record, or
            # they still work; either way never an unclear INTERNAL error.
            try:
                client.identify([distorted_copy(random_template(3), seed=1)], CTX)
            except MatcherError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                assert "disk space" in exc.detail
    finally:
        log = matcher.stop()
    assert "Traceback" not in log
    # Disk space back: everything acknowledged is there, and the files are sound.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    matcher = start_matcher(db)
    try:
        with MatcherClient(matcher.address, insecure=True, deadline_s=30) as client:
            assert client.stats().subjects >= len(acked)
            for sid in acked[:: max(1, len(acked) // 25)] + acked[-3:]:
                assert client.get_subject(sid).enrolled[0].minutiae == 35
            client.enroll("after", [random_template(99_999)], CTX)
    finally:
        matcher.stop()
    audit = AuditLog(default_audit_path(db))
    assert audit.verify() == []
    audit.close()


def _without_dac_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


def _read_only_preexec():
    """What makes chmod bind the matcher: nothing for a normal user, dropped caps for root."""
    if os.geteuid() != 0:
        return None
    probe = ctypes.CDLL(None, use_errno=True)
    # CAP_SETPCAP is needed to drop from the bounding set; check before relying on it.
    if probe.prctl(23, 8, 0, 0, 0) != 1:  # PR_CAPBSET_READ, CAP_SETPCAP
        pytest.skip("running as root without CAP_SETPCAP: cannot make a folder read-only")
    return _without_dac_override


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the store, its journal and the index snapshot)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_read_only_data_folder_gives_a_clear_error_and_no_corruption(tmp_path) -> None:
    preexec = _read_only_preexec()
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "w.sqlite"
    matcher = start_matcher(db)
    with MatcherClient(matcher.address, insecure=True, deadline_s=30) as client:
        client.enroll("K-1", [random_template(1)], CTX)
    matcher.stop()
    (folder / "w.sqlite.log").unlink()
    before = _contents(folder)
    assert "w.sqlite" in before
    log_folder = tmp_path / "logs"
    log_folder.mkdir()
    read_only_dir = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
    for p in folder.rglob("*"):
        p.chmod(read_only_dir if p.is_dir() else stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(read_only_dir)
    try:
        with pytest.raises(RuntimeError) as info:
            start_matcher(db, preexec_fn=preexec, run_dir=log_folder)
        message = str(info.value)
        assert "exited with 2" in message and "writable" in message
        assert "Traceback" not in message
    finally:
        folder.chmod(stat.S_IRWXU)
        for p in folder.rglob("*"):
            p.chmod(stat.S_IRWXU if p.is_dir() else stat.S_IRUSR | stat.S_IWUSR)
    assert _contents(folder) == before
    matcher = start_matcher(db)
    try:
        with MatcherClient(matcher.address, insecure=True, deadline_s=30) as client:
            assert client.get_subject("K-1").enrolled[0].minutiae == 35
    finally:
        matcher.stop()
