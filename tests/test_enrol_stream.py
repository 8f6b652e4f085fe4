"""Bulk enrolment's receiving side: subjects decoded many at once, the stream's receiving
thread (stream order, contexts that change mid-stream, streams that break), batches of
subjects per message (EnrollBatchStream) and the client's fallback for an older matcher,
and the warm-up that spares a fresh matcher's first enrolment the compiler."""

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
    monkeypatch.setattr(matcher_server.servicer.bulk, "batch", 4)
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
    monkeypatch.setattr(matcher_server.servicer.bulk, "batch", 3)
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


# ---- EnrollBatchStream: many subjects per message -------------------------------------
def _batch(*requests: pb.EnrollRequest) -> pb.EnrollBatch:
    return pb.EnrollBatch(requests=list(requests))


def test_batched_requests_form_one_stream_indexed_from_its_start(
    stub, matcher_server, monkeypatch
) -> None:
    """Messages of 3, 1 and 5 requests cut into durable batches of 4: a bad record and an
    ALREADY_EXISTS fail alone with their index in the stream, the rest is enrolled and
    audited in stream order."""
    monkeypatch.setattr(matcher_server.servicer.bulk, "batch", 4)
    broken = pb.EnrollRequest(subject=pb.Subject(subject_id="broken", fingers=[
        pb.Template(record=b"FMR\0 20\0")]), context=CTX)
    requests = [_iso_request(f"M{i}", 200 + i) for i in range(9)]
    requests[2] = broken  # in the first message
    requests[6] = _iso_request("M1", 300)  # M1 was enrolled from the first message
    summary = stub.EnrollBatchStream(iter([_batch(*requests[:3]), _batch(requests[3]),
                                           _batch(*requests[4:])]), timeout=60)
    assert [(f.index, f.subject_id, f.code) for f in summary.failures] == [
        (2, "broken", "INVALID_ARGUMENT"), (6, "M1", "ALREADY_EXISTS")]
    assert summary.failures[0].message.startswith("finger 0 of subject 'broken': FMR")
    expected = [f"M{i}" for i in (0, 1, 3, 4, 5, 7, 8)]
    assert list(summary.subject_ids) == expected
    assert (summary.enrolled, summary.failed) == (7, 2)
    enrolled = [r for r in matcher_server.servicer.audit.records() if r["action"] == "enroll"]
    assert [r["outcome"]["subject"] for r in enrolled] == expected
    assert stub.Stats(pb.StatsRequest()).subjects == 7
    # an empty stream, and a stream of empty messages, enrol and audit nothing
    assert stub.EnrollBatchStream(iter([]), timeout=30) == pb.EnrollSummary()
    assert stub.EnrollBatchStream(iter([_batch(), _batch()]), timeout=30) == pb.EnrollSummary()
    assert len(matcher_server.servicer.audit.records()) == len(enrolled)


def test_a_batch_over_the_message_limit_is_refused_and_enrols_nothing(
    stub, matcher_server
) -> None:
    from gateway.client import EnrollStreamError, MatcherClient
    from matcher.server import MAX_MESSAGE_BYTES

    padding = pb.Template(record=b"x" * 20_000)
    big = _batch(*[pb.EnrollRequest(subject=pb.Subject(subject_id=f"Z{i}", fingers=[padding]),
                                    context=CTX) for i in range(60)])
    assert big.ByteSize() > MAX_MESSAGE_BYTES
    with pytest.raises(grpc.RpcError) as caught:
        stub.EnrollBatchStream(iter([_batch(_iso_request("before", 1)), big]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    # the client cuts batches well under the limit; one subject over it alone is refused
    # with a message that says so (not "overloaded"), and at once, not retried
    huge = pb.EnrollRequest(subject=pb.Subject(subject_id="huge", fingers=[
        pb.Template(record=b"x" * MAX_MESSAGE_BYTES)]), context=CTX)
    with MatcherClient(f"127.0.0.1:{matcher_server.port}", insecure=True) as client, \
            pytest.raises(EnrollStreamError) as refused:
        client.enroll_stream([huge])
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the matcher accepts" in refused.value.officer_message
    assert stub.Stats(pb.StatsRequest(), timeout=30).subjects == 0
    _until_no_receiving_thread()


def test_the_client_batches_within_its_limits_and_keeps_the_order() -> None:
    from gateway.client import enroll_batches

    requests = [_iso_request(f"O{i:03d}", i) for i in range(150)]
    batches = list(enroll_batches(requests))
    assert [len(b.requests) for b in batches] == [64, 64, 22]
    assert [r.subject.subject_id for b in batches for r in b.requests] == \
        [r.subject.subject_id for r in requests]
    size = requests[0].ByteSize()
    small = list(enroll_batches(requests[:10], max_bytes=3 * (size + 4)))
    assert [len(b.requests) for b in small] == [3, 3, 3, 1]
    # a request larger than a batch on its own still goes, alone
    assert [len(b.requests) for b in enroll_batches(requests[:2], max_bytes=10)] == [1, 1]


class _OlderMatcher:
    """A matcher from before EnrollBatchStream: its server knows only the older methods
    (gRPC itself answers UNIMPLEMENTED for the new one), served by the real servicer."""

    OLD_METHODS = {
        "EnrollStream": (grpc.stream_unary_rpc_method_handler, pb.EnrollRequest),
        "Enroll": (grpc.unary_unary_rpc_method_handler, pb.EnrollRequest),
        "Stats": (grpc.unary_unary_rpc_method_handler, pb.StatsRequest),
    }

    def __init__(self, servicer) -> None:
        from concurrent import futures

        from matcher.interceptors import AccessInterceptor

        handlers = {
            name: kind(getattr(servicer, name), request_deserializer=request.FromString,
                       response_serializer=lambda m: m.SerializeToString())
            for name, (kind, request) in self.OLD_METHODS.items()
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  interceptors=[AccessInterceptor(None)])
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("ink.v1.Matcher", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_the_client_falls_back_to_one_subject_per_message_for_an_older_matcher(
    matcher_server,
) -> None:
    from gateway.client import MatcherClient

    older = _OlderMatcher(matcher_server.servicer)
    try:
        address = f"127.0.0.1:{older.port}"
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            matcher_pb2_grpc.MatcherStub(channel).EnrollBatchStream(
                iter([_batch(_iso_request("never", 1))]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        bad = pb.EnrollRequest(subject=pb.Subject(subject_id="bad", fingers=[
            pb.Template(record=b"nonsense")]), context=CTX)
        requests = [_iso_request(f"F{i}", 500 + i) for i in range(5)]
        with MatcherClient(address, insecure=True) as client:
            summary = client.enroll_stream([*requests[:2], bad, *requests[2:]])
            again = client.enroll_stream([_iso_request("F9", 509)])  # decided once
    finally:
        older.server.stop(None)
    assert list(summary.subject_ids) == [f"F{i}" for i in range(5)]
    assert [(f.index, f.code) for f in summary.failures] == [(2, "INVALID_ARGUMENT")]
    assert list(again.subject_ids) == ["F9"]
    enrolled = [r["outcome"]["subject"] for r in matcher_server.servicer.audit.records()
                if r["action"] == "enroll"]
    assert enrolled == [f"F{i}" for i in (0, 1, 2, 3, 4, 9)]


WARM_UP_CHECK = r"""
import sys, tempfile
from pathlib import Path

import numba.core.registry

import matcher.cylinders, matcher.mcc, matcher.prefilter, matcher.similarity
from gateway.client import MatcherClient, enroll_request
from matcher.index import MERGE_FANOUT
from matcher.server import start_server
from protos.ink.v1 import matcher_pb2 as pb
from tests.factories import random_template

def compiled():
    found = {}
    for module in (matcher.cylinders, matcher.mcc, matcher.prefilter, matcher.similarity):
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                found[f"{module.__name__}.{name}"] = len(value.signatures)
    return found

with tempfile.TemporaryDirectory() as folder:
    running = start_server(Path(folder) / "w.sqlite", "127.0.0.1:0", insecure=True,
                           workers=2)
    try:
        before = compiled()
        ctx = pb.Context(operator_id="o", device_id="d", reason="r")
        with MatcherClient(f"127.0.0.1:{running.port}", insecure=True) as client:
            summary = client.enroll_stream(
                [enroll_request(f"W{i}", [random_template(i, finger=2)], ctx)
                 for i in range(5)])
            assert summary.enrolled == 5, summary
            client.identify([random_template(3, finger=2)], ctx)
        # the candidate stage's work on a watchlist of 50,000 fingers and more
        watchlist = running.servicer.watchlist
        prefilter = watchlist.index.prefilter
        gallery = watchlist.comparator.encode_many(
            [random_template(i, finger=2) for i in range(7)])
        codes = prefilter.codes(gallery)
        lists = prefilter.lists(codes, gallery.offsets)
        for parts in range(1, MERGE_FANOUT + 1):
            prefilter.merged([(lists, np.arange(k * 7, k * 7 + 7)) for k in range(parts)])
        prefilter.candidates(codes[:30], lists, np.ones(7, bool), 3)
        after = compiled()
    finally:
        running.stop(grace=None)
grew = {k: (before.get(k, 0), n) for k, n in after.items() if n > before.get(k, 0)}
print("compiled after warm-up:", grew)
sys.exit(1 if grew or not before else 0)
""".replace("import sys, tempfile", "import sys, tempfile\nimport numpy as np")


def test_a_fresh_matcher_compiles_nothing_on_its_first_enrolment() -> None:
    """In a fresh interpreter (a test session has compiled everything long before): after
    the server's warm-up, enrolling, searching and the candidate stage's kernels find
    every Numba kernel they call compiled already."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", WARM_UP_CHECK], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
