"""A device's id in the audit trail comes from its certificate, over real mutual TLS.

The client certificate of :func:`tests.tls_certs.make_pki` has CN ``client`` and the DNS
name ``device-1``; each test serves one access file that names it in a different way.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from gateway.client import ClientTls, MatcherClient, MatcherError, enroll_request
from matcher.access import AccessConfigError, load_policy, policy_from_dict
from matcher.messages import template_to_message
from matcher.server import RunningServer, TlsFiles, start_server
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import distorted_copy, random_template
from tests.tls_certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def serve(pki, tmp_path):
    """Start a mutual-TLS matcher with an access file made from the given rule for the client."""
    running: list[RunningServer] = []

    def start(rule: dict, **policy) -> RunningServer:
        path = tmp_path / "access.json"
        path.write_text(json.dumps({**policy, "clients": [rule]}))
        server = start_server(tmp_path / "w.sqlite", "127.0.0.1:0",
                              tls=TlsFiles(pki["server"], pki["server_key"], pki["ca"]),
                              access=load_policy(path), workers=2)
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop(grace=None)


def _stub(pki, port: int) -> tuple[grpc.Channel, matcher_pb2_grpc.MatcherStub]:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes(),
                                         private_key=pki["client_key"].read_bytes(),
                                         certificate_chain=pki["client"].read_bytes())
    channel = grpc.secure_channel(f"localhost:{port}", creds)
    return channel, matcher_pb2_grpc.MatcherStub(channel)


def _ctx(device_id: str) -> pb.Context:
    return pb.Context(operator_id="pc-7", device_id=device_id, reason="stop and search")


def _identify(device_id: str) -> pb.IdentifyRequest:
    probe = distorted_copy(random_template(1, finger=2), seed=5)
    return pb.IdentifyRequest(probes=[template_to_message(probe)], context=_ctx(device_id))


def _enrol_one(server: RunningServer) -> None:
    server.servicer.watchlist.enroll([_subject("S1", 1)])


def _subject(subject_id: str, seed: int):
    from matcher.messages import subject_from_message

    return subject_from_message(enroll_request(subject_id, [random_template(seed, finger=2)],
                                               _ctx("desk")).subject)


def _refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return info.value


def test_a_device_searches_under_its_certificate_and_cannot_claim_another_id(
        pki, serve) -> None:
    server = serve({"cn": "client", "role": "device"})
    _enrol_one(server)
    channel, stub = _stub(pki, server.port)
    with channel:
        assert stub.Identify(_identify("")).decision == pb.DECISION_HIT
        assert stub.Identify(_identify("client")).decision == pb.DECISION_HIT
        error = _refused(stub.Identify, _identify("r307-other"))
    assert "certificate is device 'client'" in error.details()
    assert "names device 'r307-other'" in error.details()
    assert "Leave the device id empty or set it to 'client'" in error.details()
    records = server.servicer.audit.records()
    searches = [r for r in records if r["action"] == "identify"]
    assert [(r["device"], r["device_source"], r["client"]) for r in searches] == [
        ("client", "certificate", "CN=client")] * 2
    denied = records[-1]
    assert denied["action"] == "denied" and denied["client"] == "CN=client"
    assert denied["device"] == "r307-other"  # what was claimed, beside the certificate
    assert denied["outcome"]["certified_device"] == "client"
    assert denied["outcome"]["method"] == "Identify"
    assert server.servicer.searches == 2  # the refused search never ran
    assert server.servicer.audit.verify() == []


def test_the_access_file_names_the_device_a_certificate_stands_for(pki, serve) -> None:
    server = serve({"dns": "device-1", "role": "device", "device_id": "r307-7"})
    _enrol_one(server)
    channel, stub = _stub(pki, server.port)
    with channel:
        stub.Identify(_identify("r307-7"))
        stub.Identify(_identify(""))
        # The certificate's own CN is not its device id once the access file names one.
        assert "certificate is device 'r307-7'" in _refused(
            stub.Identify, _identify("client")).details()
    devices = [r["device"] for r in server.servicer.audit.records() if r["action"] == "identify"]
    assert devices == ["r307-7", "r307-7"]


def test_the_gateway_client_tells_the_officer_it_is_not_allowed(pki, serve) -> None:
    server = serve({"cn": "client", "role": "device"})
    _enrol_one(server)
    tls = ClientTls(ca=pki["ca"], cert=pki["client"], key=pki["client_key"])
    probe = distorted_copy(random_template(1, finger=2), seed=5)
    with MatcherClient(f"localhost:{server.port}", tls=tls) as client:
        assert client.identify([probe], _ctx("")).decision == pb.DECISION_HIT
        with pytest.raises(MatcherError) as info:
            client.identify([probe], _ctx("someone-elses-scanner"))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "not allowed" in info.value.officer_message


def test_a_custody_desk_may_act_for_several_scanners_and_both_ids_are_kept(
        pki, serve) -> None:
    server = serve({"cn": "client", "role": "custody"})
    _enrol_one(server)
    channel, stub = _stub(pki, server.port)
    with channel:
        stub.Identify(_identify("r307-9"))
        stub.Identify(_identify(""))
        stub.Enroll(enroll_request("S2", [random_template(2, finger=2)], _ctx("r307-9")))
    records = [r for r in server.servicer.audit.records() if r["action"] != "denied"]
    assert [(r["action"], r["device"], r["device_source"], r["client"]) for r in records] == [
        ("identify", "r307-9", "request", "CN=client"),
        ("identify", "client", "certificate", "CN=client"),
        ("enroll", "r307-9", "request", "CN=client"),
    ]


def test_name_devices_overrides_what_the_role_allows(pki, serve) -> None:
    desk = serve({"cn": "client", "role": "custody", "name_devices": False})
    _enrol_one(desk)
    channel, stub = _stub(pki, desk.port)
    with channel:
        _refused(stub.Identify, _identify("r307-9"))
        _refused(stub.Enroll, enroll_request("S3", [random_template(3)], _ctx("r307-9")))
        assert stub.Enroll(enroll_request("S3", [random_template(3)], _ctx(""))).fingers == 1
    desk.stop(grace=None)

    hub = serve({"cn": "client", "role": "device", "name_devices": True})
    channel, stub = _stub(pki, hub.port)
    with channel:
        stub.Identify(_identify("r307-11"))
    last = hub.servicer.audit.records()[-1]
    assert (last["device"], last["device_source"]) == ("r307-11", "request")


def test_an_admin_stream_in_another_name_fails_per_subject_when_bound(pki, serve) -> None:
    server = serve({"cn": "client", "role": "admin", "name_devices": False})
    channel, stub = _stub(pki, server.port)
    with channel:
        summary = stub.EnrollStream(iter([
            enroll_request("A1", [random_template(11)], _ctx("")),
            enroll_request("A2", [random_template(12)], _ctx("elsewhere")),
        ]))
    assert summary.enrolled == 1 and list(summary.subject_ids) == ["A1"]
    assert summary.failures[0].code == "PERMISSION_DENIED"
    assert "names device 'elsewhere'" in summary.failures[0].message


def test_without_an_access_file_the_claimed_device_is_recorded_as_claimed(
        pki, tmp_path) -> None:
    server = start_server(tmp_path / "w.sqlite", "127.0.0.1:0",
                          tls=TlsFiles(pki["server"], pki["server_key"], pki["ca"]), workers=2)
    try:
        _enrol_one(server)
        channel, stub = _stub(pki, server.port)
        with channel:
            stub.Identify(_identify("r307-3"))
        last = server.servicer.audit.records()[-1]
        assert (last["device"], last["device_source"]) == ("r307-3", "request")
        # the gateway with --cert and no --device-id leaves the id to the certificate
        from gateway.cli import build_parser, context_from_args

        args = build_parser().parse_args([
            "identify", "--device", "zfm:/dev/null", "--reason", "stop and search",
            "--cert", str(pki["client"]), "--key", str(pki["client_key"])])
        request = _identify("")
        request.context.CopyFrom(context_from_args(args, "zfm:/dev/null"))
        channel, stub = _stub(pki, server.port)
        with channel:
            stub.Identify(request)
        last = server.servicer.audit.records()[-1]
        assert (last["device"], last["device_source"]) == ("client", "certificate")
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("rule, fragment", [
    ({"cn": "a", "role": "device", "device_id": " padded"}, "device_id must be"),
    ({"cn": "a", "role": "device", "device_id": 7}, "device_id must be"),
    ({"cn": "a", "role": "device", "name_devices": "yes"}, "name_devices must be true or false"),
])
def test_mistakes_in_device_rules_are_named(rule, fragment) -> None:
    with pytest.raises(AccessConfigError) as info:
        policy_from_dict({"clients": [rule]}, source="access.toml")
    assert fragment in str(info.value) and "clients[0]" in str(info.value)
