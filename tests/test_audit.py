"""The audit trail detects deleted, edited and reordered records."""

import sqlite3

import pytest

from matcher.audit import AuditLog

CTX = {"operator_id": "pc123", "device_id": "r307-1", "reason": "stop and search"}


def _log(tmp_path, n=5) -> AuditLog:
    log = AuditLog(tmp_path / "a.sqlite")
    for i in range(n):
        log.append("identify", CTX, {"decision": "NO_HIT", "i": i})
    return log


def test_intact_chain_verifies(tmp_path) -> None:
    log = _log(tmp_path)
    assert log.verify() == []
    assert [r["outcome"]["i"] for r in log.records()] == [0, 1, 2, 3, 4]
    assert log.records()[0]["operator"] == "pc123"


def test_deleted_record_is_detected(tmp_path) -> None:
    log = _log(tmp_path)
    db = sqlite3.connect(tmp_path / "a.sqlite")
    db.execute("DELETE FROM audit WHERE seq = 3")
    db.commit()
    assert any(p.seq == 4 for p in log.verify())


def test_edited_record_is_detected(tmp_path) -> None:
    log = _log(tmp_path)
    db = sqlite3.connect(tmp_path / "a.sqlite")
    text = db.execute("SELECT record FROM audit WHERE seq = 2").fetchone()[0]
    db.execute("UPDATE audit SET record = ? WHERE seq = 2", (text.replace("NO_HIT", "HIT"),))
    db.commit()
    assert [p.seq for p in log.verify()] == [2]


def test_reordered_records_are_detected(tmp_path) -> None:
    log = _log(tmp_path)
    db = sqlite3.connect(tmp_path / "a.sqlite")
    rows = db.execute("SELECT seq, record, prev_hash, hash FROM audit "
                      "WHERE seq IN (2, 3)").fetchall()
    db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = 2",
               rows[1][1:])
    db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = 3",
               rows[0][1:])
    db.commit()
    assert log.verify()


# ---- retention ------------------------------------------------------------------------
DAY = 86_400.0


def _aged_log(tmp_path, ages_days=(30, 20, 10, 5, 1)):
    """A trail at <tmp>/w.audit.sqlite (next to w.sqlite) with records of the given ages."""
    import time as _time

    log = AuditLog(tmp_path / "w.audit.sqlite")
    now = _time.time()
    for i in range(len(ages_days)):
        log.append("identify", CTX, {"decision": "NO_HIT", "i": i})
    _backdate(tmp_path / "w.audit.sqlite", [now - a * DAY for a in ages_days])
    return log


def _backdate(path, times) -> None:
    """Give records 1..n the given times and rebuild the chain (test set-up only)."""
    import json

    from matcher.audit import GENESIS, _chain_hash

    db = sqlite3.connect(path)
    prev = GENESIS
    for seq, when in enumerate(times, start=1):
        record = json.loads(db.execute("SELECT record FROM audit WHERE seq = ?",
                                       (seq,)).fetchone()[0])
        record["time"] = when
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        digest = _chain_hash(prev, seq, text)
        db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (text, prev, digest, seq))
        prev = digest
    db.commit()
    db.close()


def test_purge_keeps_the_chain_verifiable_and_is_recorded(tmp_path) -> None:
    log = _aged_log(tmp_path)
    assert log.verify() == []
    result = log.purge(7 * DAY, {"operator_id": "dpo", "device_id": "cli", "reason": "policy"})
    assert result.purged == 3 and result.anchor_seq == 3
    records = log.records()
    assert [r["outcome"].get("i") for r in records[:-1]] == [3, 4]
    purge = records[-1]
    assert purge["action"] == "purge" and purge["operator"] == "dpo"
    assert purge["outcome"]["purged"] == 3 and purge["outcome"]["anchor_seq"] == 3
    assert log.verify() == []
    # The chain goes on after a purge, and a second purge anchors further on.
    log.append("identify", CTX, {"decision": "HIT"})
    assert log.purge(3 * DAY, {"operator_id": "dpo"}).anchor_seq == 4
    assert log.verify() == []


def test_purged_records_are_gone_from_the_files(tmp_path) -> None:
    import time as _time

    log = AuditLog(tmp_path / "w.audit.sqlite")
    for i in range(300):  # many pages, so whole pages are freed, not just cells
        log.append("identify", {**CTX, "case_reference": f"CASE-SECRET-{i:04d}"}, {"i": i})
    for i in range(20):
        log.append("identify", {**CTX, "case_reference": f"CASE-KEPT-{i:04d}"}, {"i": i})
    now = _time.time()
    _backdate(tmp_path / "w.audit.sqlite", [now - 30 * DAY] * 300 + [now] * 20)
    assert log.purge(7 * DAY, {"operator_id": "dpo"}).purged == 300
    log.close()
    files = {p.name: p.read_bytes() for p in tmp_path.glob("w.audit.sqlite*")}
    assert any(b"CASE-KEPT-0019" in data for data in files.values())
    for name, data in files.items():
        assert b"CASE-SECRET-" not in data, name


def test_tampering_after_a_purge_is_still_detected(tmp_path) -> None:
    log = _aged_log(tmp_path)
    log.purge(7 * DAY, {"operator_id": "dpo"})
    db = sqlite3.connect(tmp_path / "w.audit.sqlite")
    db.execute("DELETE FROM audit WHERE seq = 4")
    db.commit()
    assert [p.seq for p in log.verify()] == [5, 5]  # missing, and the link is broken


def test_records_deleted_without_a_recorded_purge_are_detected(tmp_path) -> None:
    log = _aged_log(tmp_path)
    db = sqlite3.connect(tmp_path / "w.audit.sqlite")
    # Someone deletes the oldest records and forges an anchor, but records no purge.
    digest = db.execute("SELECT hash FROM audit WHERE seq = 2").fetchone()[0]
    db.execute("DELETE FROM audit WHERE seq <= 2")
    db.execute("INSERT INTO anchor (id, seq, hash) VALUES (1, 2, ?)", (digest,))
    db.commit()
    problems = log.verify()
    assert len(problems) == 1 and "no recorded purge" in problems[0].message


def test_an_edited_purge_record_is_detected(tmp_path) -> None:
    log = _aged_log(tmp_path)
    log.purge(7 * DAY, {"operator_id": "dpo"})
    db = sqlite3.connect(tmp_path / "w.audit.sqlite")
    seq, text = db.execute("SELECT seq, record FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("UPDATE audit SET record = ? WHERE seq = ?",
               (text.replace('"operator":"dpo"', '"operator":"someone"'), seq))
    db.commit()
    assert any(p.seq == seq for p in log.verify())


def test_an_unwritable_trail_raises_a_clear_error(tmp_path) -> None:
    from matcher.audit import AuditError

    log = _log(tmp_path)
    log._db.execute("PRAGMA query_only = ON")  # stands in for a read-only or full disk
    with pytest.raises(AuditError) as info:
        log.append("identify", CTX, {"decision": "NO_HIT"})
    assert "nothing was recorded" in str(info.value)
    assert "disk space" in str(info.value)


# ---- the command line -------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from matcher.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.mark.parametrize("tamper", ["delete", "edit", "reorder"])
def test_cli_verify_detects_tampering(tmp_path, tamper) -> None:
    _aged_log(tmp_path).close()
    db_arg = str(tmp_path / "w.sqlite")
    code, out = _cli("audit", "verify", "--db", db_arg)
    assert code == 0 and "audit trail intact: 5 records" in out
    db = sqlite3.connect(tmp_path / "w.audit.sqlite")
    if tamper == "delete":
        db.execute("DELETE FROM audit WHERE seq = 2")
    elif tamper == "edit":
        db.execute("UPDATE audit SET record = replace(record, 'NO_HIT', 'HIT') WHERE seq = 4")
    else:
        rows = db.execute("SELECT record, prev_hash, hash FROM audit WHERE seq IN (2, 3) "
                          "ORDER BY seq").fetchall()
        db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = 2", rows[1])
        db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = 3", rows[0])
    db.commit()
    db.close()
    code, out = _cli("audit", "verify", "--db", db_arg, "--json")
    import json

    report = json.loads(out)
    assert code == 1 and report["intact"] is False and report["problems"]


def test_cli_purge_then_verify(tmp_path) -> None:
    import json

    _aged_log(tmp_path).close()
    db_arg = str(tmp_path / "w.sqlite")
    code, out = _cli("audit", "purge", "--db", db_arg, "--older-than", "7",
                     "--operator", "dpo", "--json")
    assert code == 0 and json.loads(out)["purged"] == 3
    code, out = _cli("audit", "verify", "--db", db_arg)
    assert code == 0 and "intact: 3 records" in out  # 2 kept + the purge's own record
    log = AuditLog(tmp_path / "w.audit.sqlite")
    assert log.records()[-1]["operator"] == "dpo"
    code, out = _cli("audit", "purge", "--db", db_arg, "--older-than", "-1")
    assert code == 2
    code, out = _cli("audit", "verify", "--db", str(tmp_path / "none.sqlite"))
    assert code == 2 and "no audit trail" in out


def test_serve_option_purges_at_start(tmp_path) -> None:
    from matcher.server import start_server

    _aged_log(tmp_path).close()
    running = start_server(tmp_path / "w.sqlite", "127.0.0.1:0", insecure=True, workers=1,
                           audit_retention_days=15)
    try:
        records = running.servicer.audit.records()
        assert [r["action"] for r in records] == ["identify"] * 3 + ["purge"]
        assert records[-1]["outcome"]["purged"] == 2
        assert records[-1]["reason"] == "audit retention"
        assert running.servicer.audit.verify() == []
    finally:
        running.stop(grace=None)
