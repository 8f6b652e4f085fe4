"""The audit trail detects deleted, edited and reordered records."""

import sqlite3

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
