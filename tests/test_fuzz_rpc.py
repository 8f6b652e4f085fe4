"""Fuzzing every RPC of a real server with garbled and absurd messages (hypothesis).

Every answer must be a documented status (never INTERNAL, UNKNOWN or a hang), and the
server must still answer properly afterwards. The long run is
``python -m benchmarks.fuzz --target rpc --examples 100000``.
"""

from __future__ import annotations

import grpc

from benchmarks import fuzz
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc


def test_every_rpc_answers_garbage_with_a_documented_status() -> None:
    result = fuzz.run("rpc", 300, derandomize=True)
    assert result.examples == 300
    assert result.crashes == {}, result.as_dict()["crash_details"]
    assert result.hangs == 0


def test_undecodable_bytes_are_invalid_argument_not_internal() -> None:
    with fuzz.rpc_environment(workers=2) as env:
        channel = env["channel"]
        for method in fuzz.UNARY_RPCS:
            try:
                channel.unary_unary(f"/ink.v1.Matcher/{method}")(b"\xff\xff\xff", timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert f"not a valid ink.v1 {method} message" in exc.details()
            else:
                raise AssertionError(f"{method} accepted garbage")
        for method in ("EnrollStream", "EnrollBatchStream"):
            try:
                channel.stream_unary(f"/ink.v1.Matcher/{method}")(iter([b"\xff"]), timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert f"not a valid ink.v1 {method} message" in exc.details()
            else:
                raise AssertionError(f"{method} accepted garbage")
        # Still serving properly after all that.
        stats = matcher_pb2_grpc.MatcherStub(channel).Stats(pb.StatsRequest(), timeout=20)
        assert stats.subjects == 2


def test_documented_limits_are_enforced_without_quoting_the_input() -> None:
    """Label, subject id and context lengths: INVALID_ARGUMENT that says the limit."""
    from gateway.client import enroll_request
    from matcher.messages import (
        MAX_LABEL_KEY,
        MAX_LABEL_VALUE,
        MAX_LABELS,
        MAX_SUBJECT_ID,
        template_to_message,
    )
    from tests.factories import random_template

    ctx = pb.Context(operator_id="o", device_id="d", reason="r")
    long_id = "Q" * (MAX_SUBJECT_ID + 1)
    with fuzz.rpc_environment(workers=2) as env:
        stub = matcher_pb2_grpc.MatcherStub(env["channel"])
        t = [random_template(5)]
        cases = [
            (stub.Enroll, enroll_request("L", t, ctx, labels={"k" * (MAX_LABEL_KEY + 1): "v"}),
             f"label names must be 1..{MAX_LABEL_KEY}"),
            (stub.Enroll, enroll_request("L", t, ctx, labels={"k": "v" * (MAX_LABEL_VALUE + 1)}),
             f"at most {MAX_LABEL_VALUE}"),
            (stub.Enroll, enroll_request("L", t, ctx, labels={"k": "tab\there"}), "printable"),
            (stub.Enroll, enroll_request("L", t, ctx,
                                         labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
             f"at most {MAX_LABELS} labels"),
            (stub.Enroll, enroll_request(long_id, t, ctx), f"1..{MAX_SUBJECT_ID} printable"),
            (stub.GetSubject, pb.GetSubjectRequest(subject_id=long_id), "subject id must be"),
            (stub.Remove, pb.RemoveRequest(subject_id=long_id, context=ctx), "subject id must"),
            (stub.Verify, pb.VerifyRequest(subject_id=long_id, context=ctx, probes=[
                template_to_message(t[0])]), "subject id must be"),
            (stub.Identify, pb.IdentifyRequest(context=pb.Context(
                operator_id="o" * 300, device_id="d", reason="r")), "at most 256"),
        ]
        for call, request, fragment in cases:
            try:
                call(request, timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (fragment, exc)
                assert fragment in exc.details(), exc.details()
                assert "QQQQQQQQ" not in exc.details() and "vvvvvvvv" not in exc.details()
            else:
                raise AssertionError(f"accepted: {fragment}")
        assert stub.Enroll(enroll_request("L", t, ctx, labels={"case": "2024/117"}),
                           timeout=20).fingers == 1
