"""Every RPC over a real gRPC server: answers, and the status code for each bad input."""

from __future__ import annotations

import grpc
import pytest

from gateway.client import MatcherClient, MatcherError, enroll_request
from matcher.formats import encode_iso
from matcher.messages import template_to_message
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="pc-1", device_id="test-device", reason="test")
N_SUBJECTS = 20


@pytest.fixture
def stub(matcher_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{matcher_server.port}")
    yield matcher_pb2_grpc.MatcherStub(channel)
    channel.close()


@pytest.fixture
def enrolled(stub):
    """A watchlist of N_SUBJECTS subjects with right and left index fingers."""
    requests = [
        enroll_request(f"S{i:03d}", [random_template(2 * i, finger=2),
                                     random_template(2 * i + 1, finger=7)], CTX)
        for i in range(N_SUBJECTS)
    ]
    summary = stub.EnrollStream(iter(requests))
    assert summary.enrolled == N_SUBJECTS and summary.failed == 0
    return stub


def _code(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code()


def _identify(probes, context=CTX):
    return pb.IdentifyRequest(probes=[template_to_message(t) for t in probes], context=context)


def test_identify_finds_the_enrolled_finger_and_not_a_stranger(enrolled) -> None:
    mate = distorted_copy(random_template(2 * 7, finger=2), seed=99)
    r = enrolled.Identify(_identify([mate]))
    assert r.decision == pb.DECISION_HIT
    assert r.candidates[0].subject_id == "S007"
    assert r.candidates[0].matched_finger == pb.RIGHT_INDEX
    assert r.candidates[0].score >= r.threshold
    assert r.gallery_subjects == N_SUBJECTS and r.gallery_fingers == 2 * N_SUBJECTS
    assert r.comparisons == N_SUBJECTS  # right index probe: right index fingers only
    assert r.search_id

    stranger = random_template(10_000, finger=2)
    r = enrolled.Identify(_identify([stranger]))
    assert r.decision == pb.DECISION_NO_HIT
    assert 0 < r.expected_fpir <= 0.01


def test_two_finger_identify_fuses_both(enrolled) -> None:
    probes = [distorted_copy(random_template(2 * 3, finger=2), seed=5),
              distorted_copy(random_template(2 * 3 + 1, finger=7), seed=6)]
    r = enrolled.Identify(_identify(probes))
    assert r.decision == pb.DECISION_HIT and r.candidates[0].subject_id == "S003"
    assert {f.probe_index for f in r.candidates[0].fingers} == {0, 1}
    single = enrolled.Identify(_identify(probes[:1])).candidates[0].score
    assert r.candidates[0].score > single


def test_identify_accepts_iso_records(enrolled) -> None:
    mate = distorted_copy(random_template(2 * 4, finger=2), seed=3)
    request = pb.IdentifyRequest(probes=[pb.Template(record=encode_iso(mate))], context=CTX)
    r = enrolled.Identify(request)
    assert r.decision == pb.DECISION_HIT and r.candidates[0].subject_id == "S004"


def test_identify_bad_inputs(matcher_server, stub) -> None:
    probe = random_template(1)
    assert _code(stub.Identify, _identify([probe])) == grpc.StatusCode.FAILED_PRECONDITION
    stub.Enroll(pb.EnrollRequest(subject=pb.Subject(
        subject_id="A", fingers=[template_to_message(probe)]), context=CTX))
    garbage = pb.IdentifyRequest(probes=[pb.Template(record=b"FMR\x00 20\x00junk")],
                                 context=CTX)
    assert _code(stub.Identify, garbage) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.Identify, _identify([probe], pb.Context())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.Identify, pb.IdentifyRequest(context=CTX)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    outside = template_to_message(probe)
    outside.minutiae[0].x = 5000
    assert _code(stub.Identify, pb.IdentifyRequest(probes=[outside], context=CTX)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    few = template_to_message(random_template(2, n=3))
    assert _code(stub.Identify, pb.IdentifyRequest(probes=[few], context=CTX)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    no_size = pb.Template(minutiae=template_to_message(probe).minutiae)
    assert _code(stub.Identify, pb.IdentifyRequest(probes=[no_size], context=CTX)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_error_messages_say_what_to_do_and_never_quote_the_probe(matcher_server, stub) -> None:
    stub.Enroll(pb.EnrollRequest(subject=pb.Subject(
        subject_id="A", fingers=[template_to_message(random_template(1))]), context=CTX))
    few = template_to_message(random_template(2, n=3))
    with pytest.raises(grpc.RpcError) as info:
        stub.Identify(pb.IdentifyRequest(probes=[few], context=CTX))
    message = info.value.details()
    assert "scan the finger again" in message
    for m in few.minutiae:
        assert f"{m.x:.1f}" not in message


def test_oversized_message_is_refused(matcher_server, stub) -> None:
    big = pb.IdentifyRequest(probes=[pb.Template(record=b"x" * (2 << 20))], context=CTX)
    assert _code(stub.Identify, big) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_verify(enrolled) -> None:
    mate = distorted_copy(random_template(2 * 5 + 1, finger=7), seed=8)
    request = pb.VerifyRequest(subject_id="S005", probes=[template_to_message(mate)],
                               context=CTX)
    r = enrolled.Verify(request)
    assert r.decision == pb.DECISION_HIT and r.matched_finger == pb.LEFT_INDEX
    wrong = pb.VerifyRequest(subject_id="S006", probes=[template_to_message(mate)],
                             context=CTX)
    assert enrolled.Verify(wrong).decision == pb.DECISION_NO_HIT
    unknown = pb.VerifyRequest(subject_id="nobody", probes=[template_to_message(mate)],
                               context=CTX)
    assert _code(enrolled.Verify, unknown) == grpc.StatusCode.NOT_FOUND
    no_context = pb.VerifyRequest(subject_id="S005", probes=[template_to_message(mate)])
    assert _code(enrolled.Verify, no_context) == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.VerifyRequest(subject_id="S005", probes=[pb.Template(record=b"\x00" * 30)],
                           context=CTX)
    assert _code(enrolled.Verify, bad) == grpc.StatusCode.INVALID_ARGUMENT


def test_enroll_remove_get_subject_and_stats(stub) -> None:
    t = template_to_message(random_template(1, finger=2))
    subject = pb.Subject(subject_id="P-1", fingers=[t], labels={"name": "Doe"})
    r = stub.Enroll(pb.EnrollRequest(subject=subject, context=CTX))
    assert r.fingers == 1 and not r.replaced
    assert _code(stub.Enroll, pb.EnrollRequest(subject=subject, context=CTX)) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert stub.Enroll(pb.EnrollRequest(subject=subject, context=CTX, replace=True)).replaced
    got = stub.GetSubject(pb.GetSubjectRequest(subject_id="P-1"))
    assert got.labels["name"] == "Doe" and got.enrolled[0].finger == pb.RIGHT_INDEX
    assert got.enrolled[0].minutiae == 35
    stats = stub.Stats(pb.StatsRequest())
    assert (stats.subjects, stats.fingers, stats.comparator) == (1, 1, "mcc")
    assert stub.Remove(pb.RemoveRequest(subject_id="P-1", context=CTX)).fingers == 1
    for call, request in [
        (stub.Remove, pb.RemoveRequest(subject_id="P-1", context=CTX)),
        (stub.GetSubject, pb.GetSubjectRequest(subject_id="P-1")),
    ]:
        assert _code(call, request) == grpc.StatusCode.NOT_FOUND
    assert _code(stub.Remove, pb.RemoveRequest(subject_id="P-1")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    for bad in [
        pb.Subject(subject_id="", fingers=[t]),
        pb.Subject(subject_id="Q", fingers=[]),
        pb.Subject(subject_id="Q", fingers=[pb.Template(record=b"FMR\x00 20\x00")]),
        pb.Subject(subject_id="Q", fingers=[t, t]),
    ]:
        assert _code(stub.Enroll, pb.EnrollRequest(subject=bad, context=CTX)) == \
            grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.Enroll, pb.EnrollRequest(subject=subject)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_enroll_stream_reports_each_failure_and_keeps_the_rest(stub) -> None:
    good = [enroll_request(f"G{i}", [random_template(i)], CTX) for i in range(5)]
    bad = pb.EnrollRequest(subject=pb.Subject(subject_id="BAD", fingers=[
        pb.Template(record=b"nonsense")]), context=CTX)
    summary = stub.EnrollStream(iter([good[0], bad, *good[1:], good[2]]))
    assert summary.enrolled == 5 and summary.failed == 2
    assert {(f.index, f.code) for f in summary.failures} == {
        (1, "INVALID_ARGUMENT"), (6, "ALREADY_EXISTS")}
    assert stub.Stats(pb.StatsRequest()).subjects == 5


def test_every_search_and_change_is_audited_without_biometrics(matcher_server, enrolled):
    mate = distorted_copy(random_template(2 * 7, finger=2), seed=99)
    enrolled.Identify(_identify([mate]))
    records = matcher_server.servicer.audit.records()
    assert [r["action"] for r in records].count("enroll") == N_SUBJECTS
    last = records[-1]
    assert last["action"] == "identify" and last["outcome"]["decision"] == "HIT"
    assert last["operator"] == "pc-1" and last["device"] == "test-device"
    text = str(last)
    assert "minutiae" not in text and f"{mate.x[0]:.1f}" not in text
    assert matcher_server.servicer.audit.verify() == []


def test_health_and_reflection_are_served(matcher_server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(f"127.0.0.1:{matcher_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ink.v1.Matcher"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(channel)
    assert "ink.v1.Matcher" in set(db.get_services())
    desc = db.FindFileContainingSymbol("ink.v1.Matcher")
    assert desc.package == "ink.v1"
    channel.close()


def test_client_gives_a_clear_message_when_the_matcher_is_down() -> None:
    slept = []
    client = MatcherClient("127.0.0.1:1", insecure=True, deadline_s=2.0, sleep=slept.append)
    with pytest.raises(MatcherError) as info:
        client.identify([random_template(1)], CTX)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot be reached" in info.value.officer_message
    assert slept, "an unreachable matcher is retried with back-off"
    client.close()


def test_a_stream_longer_than_a_batch_is_enrolled_batch_by_batch(
    stub, matcher_server, monkeypatch
) -> None:
    monkeypatch.setattr(matcher_server.servicer.bulk, "batch", 4)
    requests = [enroll_request(f"B{i:02d}", [random_template(100 + i)], CTX) for i in range(11)]
    requests[6] = enroll_request("B02", [random_template(300)], CTX)  # already in batch 1
    summary = stub.EnrollStream(iter(requests))
    assert summary.enrolled == 10 and summary.failed == 1
    assert [(f.index, f.code) for f in summary.failures] == [(6, "ALREADY_EXISTS")]
    assert list(summary.subject_ids) == [f"B{i:02d}" for i in range(11) if i != 6]
    enrolled = [r for r in matcher_server.servicer.audit.records() if r["action"] == "enroll"]
    assert [r["outcome"]["subject"] for r in enrolled] == list(summary.subject_ids)
    assert stub.Stats(pb.StatsRequest()).subjects == 10


def test_a_stream_too_long_to_list_keeps_whole_counts_and_answers(
    stub, monkeypatch
) -> None:
    from matcher import enrol_stream

    monkeypatch.setattr(enrol_stream, "SUMMARY_LIST_BYTES", 60)  # about five ids of 8 bytes
    requests = [enroll_request(f"L{i:07d}", [random_template(400 + i)], CTX) for i in range(12)]
    requests.append(pb.EnrollRequest(subject=pb.Subject(subject_id="BAD", fingers=[
        pb.Template(record=b"nonsense")]), context=CTX))
    summary = stub.EnrollStream(iter(requests))
    assert summary.enrolled == 12 and summary.failed == 1
    assert list(summary.subject_ids) == [f"L{i:07d}" for i in range(len(summary.subject_ids))]
    assert 3 <= len(summary.subject_ids) < 12 and len(summary.failures) == 0
    assert stub.Stats(pb.StatsRequest()).subjects == 12
