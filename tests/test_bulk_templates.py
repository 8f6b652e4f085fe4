"""Bulk enrolment of ISO/ANSI template files over a real gRPC matcher, and its benchmark."""

from __future__ import annotations

import json

import pytest

from benchmarks import enrol_stream
from gateway.bulk_enrol import MAX_RECORD_BYTES, TemplateFolder, template_messages
from gateway.cli import main
from gateway.client import EnrollStreamError, MatcherClient, enroll_request
from matcher.formats import decode_template, encode_ansi, encode_iso
from matcher.store import WatchlistStore
from matcher.template import Finger, TemplateError
from protos.ink.v1 import matcher_pb2 as pb
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="t", device_id="t", reason="t")


def _address(server) -> str:
    return f"127.0.0.1:{server.port}"


def _enroll(folder, server, *extra: str) -> list[str]:
    return ["enroll-templates", str(folder), "--matcher", _address(server), "--insecure",
            "--reason", "migration test", *extra]


def _template(subject: int, finger: int, impression: int, n: int = 35):
    return random_template(1000 * subject + 10 * finger + impression, n=n, finger=finger)


@pytest.fixture
def folder(tmp_path):
    """Four subjects, right and left index, impressions 2 and 10 (the first is 2, though
    10 sorts first as text); ISO for even subjects, ANSI for odd; one malformed file."""
    root = tmp_path / "templates"
    root.mkdir()
    for s in range(4):
        encode, ext = (encode_iso, "iso") if s % 2 == 0 else (encode_ansi, "ist")
        for finger in (2, 7):
            for impression, n in ((2, 35), (10, 28)):
                record = encode(_template(s, finger, impression, n))
                (root / f"P{s}_{finger}_{impression}.{ext}").write_bytes(record)
    (root / "P9_2_1.iso").write_bytes(b"FMR\x00 20\x00" + bytes(30))
    (root / "notes.txt").write_text("not a template")
    return root


def test_enrols_first_impressions_and_they_are_searchable(folder, matcher_server, capsys):
    code = main(_enroll(folder, matcher_server, "--json"))
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["enrolled"] == 4 and summary["failed"] == 0
    assert summary["skipped_files"] == 1 and code == 2  # not everything was enrolled
    assert "skipping P9_2_1.iso:" in err and "record" in err
    assert "Traceback" not in err
    with MatcherClient(_address(matcher_server), insecure=True, deadline_s=30) as client:
        assert client.stats().fingers == 8
        for s in range(4):
            enrolled = client.get_subject(f"P{s}").enrolled
            assert [(f.finger, f.minutiae) for f in enrolled] == [(2, 35), (7, 35)]
        probe = distorted_copy(_template(3, 7, 2), seed=5)
        answer = client.identify([probe], CTX)
    assert answer.decision == pb.DECISION_HIT
    assert answer.candidates[0].subject_id == "P3" and answer.candidates[0].matched_finger == 7


def test_finger_position_comes_from_the_file_name(tmp_path, matcher_server, capsys):
    unlabelled = random_template(1, finger=0)
    (tmp_path / "A_7_1.iso").write_bytes(encode_iso(unlabelled))
    # a record of the right index filed as the left index: refused, not guessed
    (tmp_path / "B_7_1.iso").write_bytes(encode_iso(random_template(2, finger=2)))
    (tmp_path / "C_2_1.ist").write_bytes(encode_ansi(random_template(3, finger=2)))
    code = main(_enroll(tmp_path, matcher_server))
    out, err = capsys.readouterr()
    assert code == 2
    assert "Enrolled 2 subjects; 0 failed; 1 files skipped" in out
    assert "skipping B_7_1.iso:" in err and "no view of finger 7" in err
    with MatcherClient(_address(matcher_server), insecure=True) as client:
        assert [f.finger for f in client.get_subject("A").enrolled] == [7]
        assert [f.finger for f in client.get_subject("C").enrolled] == [2]


def test_replace_and_a_second_run(folder, matcher_server, capsys):
    (folder / "P9_2_1.iso").unlink()
    assert main(_enroll(folder, matcher_server)) == 0
    capsys.readouterr()
    assert main(_enroll(folder, matcher_server)) == 2
    out, _ = capsys.readouterr()
    assert "Enrolled 0 subjects; 4 failed" in out and "already enrolled" in out
    assert main(_enroll(folder, matcher_server, "--replace", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["enrolled"] == 4


def test_a_folder_without_templates_says_what_names_it_expects(tmp_path, capsys):
    (tmp_path / "scan.png").write_bytes(b"")
    (tmp_path / "odd-name.iso").write_bytes(b"")
    code = main(["enroll-templates", str(tmp_path), "--matcher", "127.0.0.1:1",
                 "--insecure", "--reason", "t"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "skipping odd-name.iso" in err
    assert "<subject>_<finger>_<impression>.iso" in err and ".ist" in err
    assert main(["enroll-templates", str(tmp_path / "missing"), "--matcher", "127.0.0.1:1",
                 "--insecure", "--reason", "t"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_folder_listing_orders_subjects_and_impressions(tmp_path) -> None:
    for name in ("ab_2_10.iso", "ab_2_9.iso", "ab_c_2_1.iso", "ab_7_3.IST", "ab_1_1.iso",
                 "x_11_1.iso", "ab_7_03.iso"):
        (tmp_path / name).write_bytes(b"")
    warnings: list[str] = []
    listing = TemplateFolder(tmp_path, warnings.append)
    subjects = [(s, [(int(f), p.name) for f, p in files]) for s, files in listing.subjects()]
    # "ab_c" is its own subject; impression 3 of "ab_7" has two files: the first by name
    assert subjects == [("ab", [(1, "ab_1_1.iso"), (2, "ab_2_9.iso"), (7, "ab_7_03.iso")]),
                        ("ab_c", [(2, "ab_c_2_1.iso")])]
    assert len(listing) == 4
    assert warnings == ["skipping x_11_1.iso: finger 11 is not an FGP code 0..10"]


def test_long_streams_go_as_several_calls_with_one_summary(matcher_server) -> None:
    """A budget of 10 ids (9 bytes each as listed) per call: 25 subjects, three calls."""
    with MatcherClient(_address(matcher_server), insecure=True) as client:
        client.enroll("S-0017", [random_template(99)], CTX)

        def requests():
            for i in range(25):
                yield enroll_request(f"S-{i:04d}", [random_template(i)], CTX)

        summary = client.enroll_stream(requests(), summary_budget_bytes=90)
        assert summary.enrolled == 24 and summary.failed == 1
        assert summary.failures[0].index == 17 and summary.failures[0].subject_id == "S-0017"
        assert list(summary.subject_ids) == [f"S-{i:04d}" for i in range(25) if i != 17]
        assert client.stats().subjects == 25


def test_enrol_stream_benchmark_counts_what_it_streamed(tmp_path, capsys) -> None:
    assert enrol_stream.main(["--fingers", "300", "--json", "--db",
                              str(tmp_path / "w.sqlite")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"fingers", "seconds", "enrol_per_s", "batch", "matcher_cpu_us",
                           "client_cpu_us", "load_1m"}
    assert result["fingers"] == 300 and result["seconds"] > 0
    # both processes did work during the stream (the matcher is another process)
    assert result["matcher_cpu_us"] > 0 and result["client_cpu_us"] > 0
    assert result["enrol_per_s"] == pytest.approx(300 / result["seconds"], rel=0.01)
    store = WatchlistStore(tmp_path / "w.sqlite")
    try:
        assert store.counts() == (300, 300)
    finally:
        store.close()
    # a second run refuses to reuse the watchlist: its count would not be its own
    assert enrol_stream.main(["--fingers", "300", "--db", str(tmp_path / "w.sqlite")]) == 1
    assert "exists" in capsys.readouterr().err


def test_enrol_stream_benchmark_from_files_enrols_the_folder_it_wrote(capsys) -> None:
    assert enrol_stream.main(["--fingers", "40", "--from-files", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fingers"] == 40 and result["client_cpu_us"] > 0


def test_a_stream_cut_off_part_way_says_what_stays_enrolled(matcher_server) -> None:
    with MatcherClient(_address(matcher_server), insecure=True, deadline_s=5) as client:

        def requests():
            for i in range(25):
                if i == 12:  # the first call (10 subjects) is acknowledged by now
                    matcher_server.server.stop(None)
                yield enroll_request(f"S-{i:04d}", [random_template(i)], CTX)

        with pytest.raises(EnrollStreamError) as caught:
            client.enroll_stream(requests(), summary_budget_bytes=90)
    acknowledged = caught.value.summary.enrolled
    assert 0 < acknowledged < 12
    assert f"The {acknowledged} subjects acknowledged before it stay enrolled" in \
        caught.value.officer_message
    assert matcher_server.servicer.watchlist.counts()[0] >= acknowledged


def test_template_files_decoded_together_give_what_each_gives_alone(tmp_path) -> None:
    """Plain ISO, ANSI, a two-view record (only the named finger's view is sent), an
    unlabelled record, a mislabelled one, a damaged one, one too large, one missing."""
    one, two = encode_iso(_template(1, 2, 1)), encode_iso(_template(2, 7, 1))
    header, views = two[:24], one[24:] + two[24:]
    two_views = (header[:8] + (24 + len(views)).to_bytes(4, "big") + header[12:22]
                 + bytes([2, 0]) + views)
    files = {
        "iso": (2, one), "ansi": (6, encode_ansi(_template(3, 6, 1))),
        "two-views": (7, two_views), "unlabelled": (4, encode_iso(_template(4, 0, 1))),
        "mislabelled": (3, encode_iso(_template(5, 2, 1))), "damaged": (2, one[:-5]),
        "too-large": (2, bytes(MAX_RECORD_BYTES + 1)), "missing": (2, None),
    }
    paths = []
    for name, (finger, data) in files.items():
        path = tmp_path / f"{name}.iso"
        if data is not None:
            path.write_bytes(data)
        paths.append((Finger(finger), path))
    got = dict(zip(files, template_messages(paths), strict=True))

    assert got["iso"] == pb.Template(finger=2, record=one)
    assert got["ansi"].record == files["ansi"][1] and got["unlabelled"].finger == 4
    sent = decode_template(got["two-views"].record)
    assert sent.metadata["views"] == 1 and sent.finger == 7
    assert sent.x.tolist() == decode_template(two).x.tolist()
    assert "no view of finger 3" in str(got["mislabelled"])
    assert isinstance(got["damaged"], TemplateError)
    assert "larger than 512 kB" in str(got["too-large"])
    assert isinstance(got["missing"], FileNotFoundError)


def test_template_folders_are_sent_in_order_across_decoding_chunks(
    folder, matcher_server, capsys, monkeypatch
) -> None:
    from gateway import bulk_enrol

    monkeypatch.setattr(bulk_enrol, "TEMPLATE_CHUNK", 3)  # chunks end mid-subject
    seen = []
    with MatcherClient(_address(matcher_server), insecure=True, deadline_s=30) as client:
        summary = bulk_enrol.enrol_templates(client, folder, CTX, warn=seen.append,
                                             progress=lambda done, total: seen.append(done))
    assert list(summary.subject_ids) == ["P0", "P1", "P2", "P3"]
    # progress per file, and the malformed P9 (last by name) warned about where reached
    assert seen[:8] == list(range(1, 9)) and seen[9:] == [9]
    assert seen[8].startswith("skipping P9_2_1.iso: ")
