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


# ---- the keyed chain (HMAC-SHA256) ----------------------------------------------------------
def _key_file(folder, name="audit.key", mode=0o600):
    import os

    from matcher.audit import new_audit_key

    path = folder / name
    new_audit_key(path)
    os.chmod(path, mode)
    return path


def _keyed_log(tmp_path, n=5):
    from matcher.audit import load_audit_key

    key = load_audit_key(_key_file(tmp_path))
    log = AuditLog(tmp_path / "w.audit.sqlite", key=key)
    for i in range(n):
        log.append("identify", CTX, {"decision": "NO_HIT", "i": i})
    return log, key


def _forge(path, edit_seq, key=None, start_seq=None) -> None:
    """Edit a record and recompute every link from it on, as a forger with write access would.

    ``start_seq`` recomputes from an earlier record; ``key`` stands for the matcher itself.
    """
    import json

    from matcher.audit import GENESIS, _chain_hash

    db = sqlite3.connect(path)
    rows = db.execute("SELECT seq, record, prev_hash FROM audit WHERE seq >= ? ORDER BY seq",
                      (edit_seq if start_seq is None else start_seq,)).fetchall()
    prev = rows[0][2] if rows else GENESIS
    for seq, text, _ in rows:
        if seq == edit_seq:
            record = json.loads(text)
            record["outcome"]["decision"] = "HIT"
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        digest = _chain_hash(prev, seq, text, key)
        db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (text, prev, digest, seq))
        prev = digest
    db.commit()
    db.close()


def test_a_keyed_trail_verifies_and_opens_with_its_key_record(tmp_path) -> None:
    from matcher.audit import KEYED, key_id

    log, key = _keyed_log(tmp_path)
    assert log.verify() == []
    records = log.records()
    assert records[0]["action"] == "audit-key"
    assert records[0]["outcome"] == {"scheme": KEYED, "key_id": key_id(key),
                                     "unkeyed_before": 1}
    assert key.hex() not in str(records) and key.decode() not in str(records)
    assert log.scheme.name == KEYED and log.scheme.keyed_from == 1


def test_an_edit_with_recomputed_plain_hashes_is_caught_with_the_key(tmp_path) -> None:
    log, key = _keyed_log(tmp_path)
    path = tmp_path / "w.audit.sqlite"
    # The attack that beats a plain chain: edit, then recompute SHA-256 links onward.
    _forge(path, edit_seq=3)
    assert log.verify()[0].seq == 3
    assert {p.message for p in log.verify()} == {"content was changed after it was written"}
    # The same forger also rewriting the scheme to plain is told apart as well.
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'sha256' WHERE name = 'scheme'")
    db.commit()
    db.close()
    _forge(path, edit_seq=3, start_seq=1)
    problems = AuditLog(path, key=key).verify()
    assert len(problems) == 1 and "not keyed, although a key was given" in problems[0].message
    # The forged plain chain itself is consistent: only the key reveals the forgery.
    assert AuditLog(path).verify() == []


def test_the_control_case_a_plain_chain_cannot_see_that_attack(tmp_path) -> None:
    log = _log(tmp_path)
    _forge(tmp_path / "a.sqlite", edit_seq=3)
    assert log.verify() == []  # why the key exists
    assert log.records()[2]["outcome"]["decision"] == "HIT"


def test_a_wrong_or_missing_key_is_said_clearly(tmp_path) -> None:
    from matcher.audit import AuditKeyError, load_audit_key

    log, _ = _keyed_log(tmp_path)
    log.close()
    path = tmp_path / "w.audit.sqlite"
    other = load_audit_key(_key_file(tmp_path, "other.key"))
    with pytest.raises(AuditKeyError) as info:
        AuditLog(path, key=other)
    assert "is not the key the audit trail" in str(info.value)
    keyless = AuditLog(path)
    with pytest.raises(AuditKeyError) as info:
        keyless.verify()
    assert "is keyed (HMAC-SHA256" in str(info.value) and "--audit-key FILE" in str(info.value)
    with pytest.raises(AuditKeyError):
        keyless.append("identify", CTX, {"decision": "NO_HIT"})


def test_an_old_plain_trail_stays_verifiable_and_is_keyed_from_its_next_record(tmp_path) -> None:
    from matcher.audit import load_audit_key

    _log(tmp_path, n=3).close()
    path = tmp_path / "a.sqlite"
    db = sqlite3.connect(path)
    db.execute("DROP TABLE meta")  # as a trail written before keys existed
    db.commit()
    db.close()
    assert AuditLog(path).verify() == [] and AuditLog(path).scheme.name == "sha256"
    key = load_audit_key(_key_file(tmp_path))
    log = AuditLog(path, key=key)
    log.append("identify", CTX, {"decision": "HIT"})
    assert [r["action"] for r in log.records()] == ["identify"] * 3 + ["audit-key", "identify"]
    assert log.scheme.keyed_from == 4 and log.verify() == []
    # Moving the start of the keyed part, to pass records off as old plain ones, is seen.
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '5' WHERE name = 'keyed_from'")
    db.commit()
    db.close()
    _forge(path, edit_seq=4, start_seq=4)  # recompute 4 as a plain link
    messages = [p.message for p in log.verify()]
    assert any("the scheme was tampered with" in m for m in messages)


def test_purging_a_keyed_trail_keeps_it_verifiable(tmp_path) -> None:
    import json
    import time as _time

    from matcher.audit import AuditKeyError

    log, key = _keyed_log(tmp_path)
    path = tmp_path / "w.audit.sqlite"
    now = _time.time()
    db = sqlite3.connect(path)
    for seq in (1, 2, 3):  # make the first three records old, then re-sign as the matcher
        record = json.loads(db.execute("SELECT record FROM audit WHERE seq = ?",
                                       (seq,)).fetchone()[0])
        record["time"] = now - 30 * DAY
        db.execute("UPDATE audit SET record = ? WHERE seq = ?",
                   (json.dumps(record, sort_keys=True, separators=(",", ":")), seq))
    db.commit()
    db.close()
    _forge(path, edit_seq=0, key=key, start_seq=1)
    assert log.verify() == []
    with pytest.raises(AuditKeyError):
        AuditLog(path).purge(7 * DAY, {"operator_id": "dpo"})
    result = log.purge(7 * DAY, {"operator_id": "dpo"}, now=now)
    assert result.purged == 3 and result.anchor_seq == 3
    assert log.verify() == []  # the audit-key record is gone, the keyed chain stands
    _forge(path, edit_seq=5, start_seq=4)
    assert any(p.seq == 5 for p in log.verify())


def test_key_files_are_checked_as_ssh_checks_private_keys(tmp_path) -> None:
    from matcher.audit import AuditKeyError, load_audit_key

    for mode in (0o644, 0o640, 0o604, 0o660):
        path = _key_file(tmp_path, f"k{mode:o}.key", mode)
        with pytest.raises(AuditKeyError) as info:
            load_audit_key(path)
        assert f"permissions {mode:04o}" in str(info.value)
        assert "too open" in str(info.value) and f"chmod 600 {path}" in str(info.value)
    short = tmp_path / "short.key"
    short.write_bytes(b"secret\n")
    short.chmod(0o600)
    with pytest.raises(AuditKeyError) as info:
        load_audit_key(short)
    assert "at least 32 random bytes" in str(info.value)
    with pytest.raises(AuditKeyError) as info:
        load_audit_key(tmp_path / "absent.key")
    assert "cannot read the audit key" in str(info.value)
    assert len(load_audit_key(_key_file(tmp_path, "ok.key"))) == 64


def test_cli_keyed_trail_new_key_verify_and_purge(tmp_path) -> None:
    import json
    import stat

    key_path = tmp_path / "audit.key"
    code, out = _cli("audit", "new-key", str(key_path))
    assert code == 0 and "key id" in out
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    code, out = _cli("audit", "new-key", str(key_path))
    assert code == 2 and "never overwritten" in out
    from matcher.audit import load_audit_key

    log = AuditLog(tmp_path / "w.audit.sqlite", key=load_audit_key(key_path))
    log.append("identify", CTX, {"decision": "NO_HIT"})
    log.close()
    db_arg = str(tmp_path / "w.sqlite")
    code, out = _cli("audit", "verify", "--db", db_arg, "--audit-key", str(key_path))
    assert code == 0 and "intact: 2 records, keyed (HMAC-SHA256" in out
    code, out = _cli("audit", "verify", "--db", db_arg)
    assert code == 2 and "give its key (--audit-key FILE)" in out
    other = _key_file(tmp_path, "other.key")
    code, out = _cli("audit", "verify", "--db", db_arg, "--audit-key", str(other))
    assert code == 2 and "is not the key" in out
    key_path.chmod(0o644)
    code, out = _cli("audit", "verify", "--db", db_arg, "--audit-key", str(key_path))
    assert code == 2 and "too open" in out
    key_path.chmod(0o600)
    _forge(tmp_path / "w.audit.sqlite", edit_seq=2)
    code, out = _cli("audit", "verify", "--db", db_arg, "--audit-key", str(key_path), "--json")
    assert code == 1 and json.loads(out)["problems"][0]["seq"] == 2
    code, out = _cli("audit", "purge", "--db", db_arg, "--older-than", "0", "--json")
    assert code == 1 and "--audit-key" in out


def test_serve_keys_the_trail_and_refuses_to_start_without_its_key(tmp_path) -> None:
    from matcher.audit import AuditKeyError, load_audit_key
    from matcher.server import start_server

    key = load_audit_key(_key_file(tmp_path))
    running = start_server(tmp_path / "w.sqlite", "127.0.0.1:0", insecure=True, workers=1,
                           audit_key=key)
    try:
        assert running.servicer.audit.records()[0]["action"] == "audit-key"
        assert running.servicer.audit.verify() == []
    finally:
        running.stop(grace=None)
    with pytest.raises(AuditKeyError) as info:
        start_server(tmp_path / "w.sqlite", "127.0.0.1:0", insecure=True, workers=1)
    assert "start the matcher with --audit-key FILE" in str(info.value)


def test_a_batch_of_records_is_one_chain_in_order(tmp_path) -> None:
    log = _log(tmp_path, n=2)
    ids = log.append_many([("enroll", CTX, {"subject": f"S{i}"}) for i in range(4)],
                          client="custody-1")
    log.append("identify", CTX, {"decision": "HIT"})
    records = log.records()
    assert [r["id"] for r in records[2:6]] == ids and len(set(ids)) == 4
    assert [r["outcome"].get("subject") for r in records[2:6]] == ["S0", "S1", "S2", "S3"]
    assert records[-1]["action"] == "identify"
    assert log.verify() == []
    assert log.append_many([]) == []


def test_batches_key_a_plain_trail_chain_after_a_purge_and_heed_a_key_set_elsewhere(
    tmp_path,
) -> None:
    """append_many reads the scheme and the chain's head once per batch: they must still
    be those of the file at that moment (keyed meanwhile by another process, purged)."""
    from matcher.audit import KEYED, AuditKeyError, load_audit_key

    path = tmp_path / "a.sqlite"
    _log(tmp_path, n=3).close()
    keyless = AuditLog(path)
    key = load_audit_key(_key_file(tmp_path))
    keyed = AuditLog(path, key=key)  # another matcher process, say, given the key
    keyed.append_many([("enroll", CTX, {"subject": f"K{i}"}) for i in range(3)])
    assert [r["action"] for r in keyed.records()] == ["identify"] * 3 + ["audit-key"] + \
        ["enroll"] * 3
    assert keyed.scheme.name == KEYED and keyed.scheme.keyed_from == 4
    with pytest.raises(AuditKeyError):
        keyless.append_many([("enroll", CTX, {"subject": "X"})])
    assert len(keyed.records()) == 7  # nothing of the refused batch was written
    keyed.purge(0.0, CTX, now=keyed.records()[-1]["time"] + 1)
    keyed.append_many([("enroll", CTX, {"subject": f"P{i}"}) for i in range(2)])
    assert [r["action"] for r in keyed.records()] == ["purge", "enroll", "enroll"]
    assert keyed.verify() == []
    # and a batch's links are the keyed ones: recomputing them as plain links is seen
    _forge(path, edit_seq=keyed.head()[0])
    assert [p.message for p in keyed.verify()] == ["content was changed after it was written"]
