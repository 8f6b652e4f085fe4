"""Watchlist entries with an expiry date stop matching, then are purged and audited."""

from __future__ import annotations

import time

import grpc
import pytest

from matcher.messages import template_to_message
from matcher.server import start_server
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="desk", device_id="d", reason="test")


def test_expired_subject_stops_matching_and_is_purged(tmp_path) -> None:
    running = start_server(tmp_path / "w.sqlite", "127.0.0.1:0", insecure=True,
                           retention_check_s=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = matcher_pb2_grpc.MatcherStub(channel)
    try:
        for sid, seed in (("KEEP", 1), ("GONE", 2)):
            subject = pb.Subject(subject_id=sid,
                                 fingers=[template_to_message(random_template(seed))])
            if sid == "GONE":
                subject.expires_at.FromSeconds(int(time.time()) + 2)
            stub.Enroll(pb.EnrollRequest(subject=subject, context=CTX))
        probe = distorted_copy(random_template(2), seed=7)
        request = pb.IdentifyRequest(probes=[template_to_message(probe)], context=CTX)
        assert stub.Identify(request).candidates[0].subject_id == "GONE"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                stub.GetSubject(pb.GetSubjectRequest(subject_id="GONE"))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                break
            time.sleep(0.2)
        else:
            pytest.fail("the expired subject was never purged")
        answer = stub.Identify(request)
        assert all(c.subject_id != "GONE" for c in answer.candidates)
        assert answer.decision == pb.DECISION_NO_HIT
        actions = [r["action"] for r in running.servicer.audit.records()]
        assert "purge-expired" in actions
    finally:
        channel.close()
        running.stop(grace=None)
