"""Bulk enrolment's receiving side: subjects decoded many at once, and EnrollStream's
receiving thread (stream order, contexts that change mid-stream, streams that break)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from gateway.client import enroll_request
from matcher.formats import decode_template, encode_ansi, encode_iso
from matcher.messages import subjects_from_messages, template_from_message
from matcher.store import SubjectRecord
from matcher.template import Template, TemplateError
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import random_template

CTX = pb.Context(operator_id="bulk", device_id="migration", reason="test")


def _record_finger(seed: int, finger: int = 2, *, asked: int | None = None,
                   ansi: bool = False) -> pb.Template:
    encode = encode_ansi if ansi else encode_iso
    return pb.Template(record=encode(random_template(seed, finger=finger)),
                       finger=finger if asked is None else asked)


def _same(a: Template, b: Template) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("x", "y", "angle", "kind", "quality")) and all(
        getattr(a, f) == getattr(b, f)
        for f in ("width", "height", "ppi", "finger", "impression", "image_quality", "metadata"))


def test_subjects_decoded_together_equal_each_finger_decoded_alone() -> None:
    minutiae = enroll_request("C", [random_template(3, finger=7)], CTX).subject.fingers[0]
    both = pb.Template(record=encode_iso(random_template(4)), width=300, height=400, ppi=500)
    expiring = pb.Subject(subject_id="J", fingers=[_record_finger(10, 1)],
                          labels={"case": "42"})
    expiring.expires_at.seconds = 2_000_000_000
    messages = [
        pb.Subject(subject_id="A", fingers=[_record_finger(1, 2)]),
        pb.Subject(subject_id="B", fingers=[_record_finger(2, 6, ansi=True)]),
        pb.Subject(subject_id="C", fingers=[minutiae]),
        pb.Subject(subject_id="D", fingers=[pb.Template(record=b"nonsense")]),
        pb.Subject(subject_id="E", fingers=[_record_finger(5, 2), pb.Template(
            record=encode_iso(random_template(6))[:-3], finger=7)]),
        pb.Subject(subject_id="F", fingers=[both]),
        pb.Subject(subject_id=" G", fingers=[_record_finger(7)]),
        pb.Subject(subject_id="H", fingers=[_record_finger(8)], labels={"k": "tab\there"}),
        pb.Subject(subject_id="I", fingers=[_record_finger(9, 3, asked=5)]),
        expiring,
        pb.Subject(subject_id="K", fingers=[_record_finger(11, 0, asked=4),
                                            _record_finger(12, 0)]),
    ]
    got = dict(zip("ABCDEFGHIJK", subjects_from_messages(messages), strict=True))

    for key, msg in (("A", messages[0]), ("B", messages[1]), ("J", expiring)):
        assert isinstance(got[key], SubjectRecord) and got[key].subject_id == key
        (finger,) = got[key].fingers
        assert _same(finger, decode_template(msg.fingers[0].record,
                                             finger=msg.fingers[0].finger))
    assert _same(got["C"].fingers[0], template_from_message(minutiae))
    assert (got["J"].labels, got["J"].expires_at) == ({"case": "42"}, 2_000_000_000.0)
    assert got["A"].labels == {} and got["A"].expires_at is None
    # an unlabelled record takes the finger the message names, or stays unknown
    assert [int(t.finger) for t in got["K"].fingers] == [4, 0]

    def error_of(key: str) -> str:
        assert isinstance(got[key], TemplateError), key
        return str(got[key])

    with pytest.raises(TemplateError) as alone:
        decode_template(b"nonsense")
    assert error_of("D") == f"finger 0 of subject 'D': {alone.value}"
    assert error_of("E").startswith("finger 1 of subject 'E': ISO minutiae record, byte ")
    assert error_of("F").startswith("finger 0 of subject 'F': send either a standard record")
    assert error_of("G").startswith("subject id must be")
    assert error_of("H").startswith("label values must be")
    assert error_of("I") == "finger 0 of subject 'I': ISO record holds no view of finger 5 " \
                            "(it holds [3])"


@pytest.fixture
def stub(matcher_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{matcher_server.port}")
    yield matcher_pb2_grpc.MatcherStub(channel)
    channel.close()


def _iso_request(subject_id: str, seed: int, context: pb.Context = CTX) -> pb.EnrollRequest:
    return pb.EnrollRequest(subject=pb.Subject(subject_id=subject_id,
                                               fingers=[_record_finger(seed)]),
                            context=context)


def test_failures_and_enrolments_come_back_in_stream_order_across_batches(
    stub, matcher_server, monkeypatch
) -> None:
    """Batches of 4: a bad record in the first, a batch that fails whole, a subject that
    exists already, a bad context; contexts change mid-stream and each is audited."""
    from matcher import service

    monkeypatch.setattr(service, "ENROLL_BATCH", 4)
    other = pb.Context(operator_id="other", device_id="migration", reason="test")
    bad_context = pb.Context(operator_id="x" * 300, device_id="d", reason="r")
    broken = pb.EnrollRequest(subject=pb.Subject(subject_id="broken", fingers=[
        pb.Template(record=b"FMR\0 20\0")]), context=CTX)
    requests = [_iso_request(f"S{i:02d}", i, other if i % 3 == 0 else CTX) for i in range(14)]
    requests[1] = broken
    requests[4:8] = [broken] * 4
    requests[9] = _iso_request("S02", 99)
    requests[12] = _iso_request("S12", 12, bad_context)
    summary = stub.EnrollStream(iter(requests))

    assert [(f.index, f.code) for f in summary.failures] == [
        (1, "INVALID_ARGUMENT"), (4, "INVALID_ARGUMENT"), (5, "INVALID_ARGUMENT"),
        (6, "INVALID_ARGUMENT"), (7, "INVALID_ARGUMENT"), (9, "ALREADY_EXISTS"),
        (12, "INVALID_ARGUMENT")]
    assert "context operator_id must be at most 256" in summary.failures[-1].message
    assert summary.failures[0].message.startswith("finger 0 of subject 'broken': FMR minutiae")
    expected = [f"S{i:02d}" for i in (0, 2, 3, 8, 10, 11, 13)]
    assert list(summary.subject_ids) == expected and summary.enrolled == len(expected)
    enrolled = [r for r in matcher_server.servicer.audit.records() if r["action"] == "enroll"]
    assert [(r["outcome"]["subject"], r["operator"]) for r in enrolled] == [
        (sid, "other" if int(sid[1:]) % 3 == 0 else "bulk") for sid in expected]
    assert stub.Stats(pb.StatsRequest()).subjects == len(expected)


def _receiving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "enrol-receive"]


def _until_no_receiving_thread(seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while _receiving_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _receiving_threads(), "a stream's receiving thread outlived its call"


def test_a_message_that_is_no_request_mid_stream_ends_the_call_and_its_thread(
    matcher_server, monkeypatch
) -> None:
    from matcher import service

    monkeypatch.setattr(service, "ENROLL_BATCH", 3)
    channel = grpc.insecure_channel(f"127.0.0.1:{matcher_server.port}")
    with channel:
        raw = [_iso_request(f"R{i}", i).SerializeToString() for i in range(7)] + [b"\xff"]
        with pytest.raises(grpc.RpcError) as caught:
            channel.stream_unary("/ink.v1.Matcher/EnrollStream")(iter(raw), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ink.v1 EnrollStream message" in caught.value.details()
        _until_no_receiving_thread()
        # and the matcher goes on serving streams
        summary = matcher_pb2_grpc.MatcherStub(channel).EnrollStream(
            iter([_iso_request("after", 50)]), timeout=30)
        assert list(summary.subject_ids) == ["after"]
    _until_no_receiving_thread()


def test_a_cancelled_stream_ends_its_receiving_thread(stub, matcher_server) -> None:
    sent = threading.Event()
    hold = threading.Event()

    def requests():
        yield _iso_request("C0", 1)
        sent.set()
        hold.wait(30)  # the client goes quiet mid-stream

    call = stub.EnrollStream.future(requests(), timeout=60)
    try:
        assert sent.wait(30)
        deadline = time.monotonic() + 20
        while not _receiving_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _receiving_threads(), "the stream is being received on its own thread"
        call.cancel()
        _until_no_receiving_thread()
    finally:
        hold.set()
    # (whether the one subject sent was enrolled depends on which gRPC noticed first,
    # the end of the messages or the cancellation; either way it was not acknowledged)
    assert stub.Stats(pb.StatsRequest(), timeout=30).subjects in (0, 1)
