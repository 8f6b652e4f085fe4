"""Roles from client certificates and per-device rate limits, over a real mutual-TLS server."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client import enroll_request
from matcher.access import (
    AccessConfigError,
    ClientIdentity,
    Role,
    certificate_fingerprint,
    load_policy,
    policy_from_dict,
)
from matcher.cli import main as cli_main
from matcher.messages import template_to_message
from matcher.server import TlsFiles, start_server
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="pc-1", device_id="r307-7", reason="stop and search")
CLIENTS = ("device-a", "device-b", "custody-1", "admin-1", "stranger")


def _issue(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and one client certificate per name."""
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn, key, issuer, issuer_key, sans=None, ca=False):
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem: str, certificate, key) -> None:
        paths[stem] = folder / f"{stem}.pem"
        paths[stem].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths[f"{stem}_key"] = folder / f"{stem}.key"
        paths[f"{stem}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    paths: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("INK access test CA", ca_key, name("INK access test CA"), ca_key, ca=True)
    write("ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    write("server", cert("matcher", server_key, ca.subject, ca_key,
                         [x509.DNSName("localhost"),
                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), server_key)
    for cn in CLIENTS:
        key = ec.generate_private_key(ec.SECP256R1())
        write(cn, cert(cn, key, ca.subject, ca_key, [x509.DNSName(f"{cn}.example")]), key)
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return _issue(tmp_path_factory.mktemp("pki"))


def _policy_file(folder: Path, pki) -> Path:
    path = folder / "access.json"
    path.write_text(json.dumps({
        "anonymous_role": "none",
        "unlisted_role": "none",
        "rate_limit": "none",
        "clients": [
            # A limit of one search per 100 s with bursts of 3: the 4th search is refused
            # with a wait of about 100 s, however slow the machine running the test.
            {"cn": "device-a", "role": "device",
             "rate_limit": {"per_second": 0.01, "burst": 3}},
            # The audit names device-b by the device id its context carries, r307-7.
            {"dns": "device-b.example", "role": "device", "device_id": "r307-7"},
            {"cn": "custody-1", "role": "custody"},
            {"sha256": certificate_fingerprint(pki["admin-1"].read_bytes()), "role": "admin"},
        ],
    }))
    return path


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    folder = tmp_path_factory.mktemp("matcher")
    running = start_server(folder / "w.sqlite", "127.0.0.1:0",
                           tls=TlsFiles(pki["server"], pki["server_key"], pki["ca"]),
                           access=load_policy(_policy_file(folder, pki)), workers=4)
    yield running
    running.stop(grace=None)


def _channel(pki, port: int, who: str | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki[f"{who}_key"].read_bytes() if who else None,
        certificate_chain=pki[who].read_bytes() if who else None,
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


@pytest.fixture(scope="module")
def stubs(pki, server):
    channels = {who: _channel(pki, server.port, who) for who in CLIENTS}
    stubs = {who: matcher_pb2_grpc.MatcherStub(ch) for who, ch in channels.items()}
    summary = stubs["admin-1"].EnrollStream(iter(
        [enroll_request(f"S{i}", [random_template(i, finger=2)], CTX) for i in range(5)]))
    assert summary.enrolled == 5
    yield stubs
    for ch in channels.values():
        ch.close()


def _identify(seed: int = 3, context: pb.Context = CTX) -> pb.IdentifyRequest:
    probe = distorted_copy(random_template(seed, finger=2), seed=100 + seed)
    return pb.IdentifyRequest(probes=[template_to_message(probe)], context=context)


def _verify() -> pb.VerifyRequest:
    probe = distorted_copy(random_template(1, finger=2), seed=7)
    return pb.VerifyRequest(subject_id="S1", probes=[template_to_message(probe)], context=CTX)


def _refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def test_a_device_may_identify_and_nothing_else(stubs) -> None:
    device = stubs["device-b"]
    assert device.Identify(_identify()).candidates[0].subject_id == "S3"
    for call, request, needed in [
        (device.Verify, _verify(), "custody"),
        (device.Enroll, enroll_request("X", [random_template(50)], CTX), "custody"),
        (device.GetSubject, pb.GetSubjectRequest(subject_id="S1"), "custody"),
        (device.Remove, pb.RemoveRequest(subject_id="S1", context=CTX), "admin"),
        (device.Stats, pb.StatsRequest(), "admin"),
    ]:
        error = _refusal(call, request)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"needs the {needed} role" in error.details()
        assert "CN=device-b" in error.details() and "access file" in error.details()
    assert _refusal(device.EnrollStream, iter([])).code() == grpc.StatusCode.PERMISSION_DENIED
    assert _refusal(device.EnrollBatchStream, iter([])).code() == \
        grpc.StatusCode.PERMISSION_DENIED


def test_custody_verifies_enrols_and_reads_but_does_not_remove(stubs) -> None:
    custody = stubs["custody-1"]
    assert custody.Identify(_identify()).decision == pb.DECISION_HIT
    assert custody.Verify(_verify()).decision == pb.DECISION_HIT
    assert custody.Enroll(enroll_request("C-1", [random_template(60)], CTX)).fingers == 1
    assert custody.GetSubject(pb.GetSubjectRequest(subject_id="C-1")).subject_id == "C-1"
    for call, request in [(custody.Remove, pb.RemoveRequest(subject_id="C-1", context=CTX)),
                          (custody.Stats, pb.StatsRequest()),
                          (custody.EnrollStream, iter([])),
                          (custody.EnrollBatchStream, iter([pb.EnrollBatch(requests=[
                              enroll_request("C-2", [random_template(61)], CTX)])]))]:
        error = _refusal(call, request)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the admin role" in error.details()
    assert _refusal(custody.GetSubject, pb.GetSubjectRequest(subject_id="C-2")).code() == \
        grpc.StatusCode.NOT_FOUND  # the refused batch enrolled nothing


def test_admin_named_by_fingerprint_may_do_everything(stubs) -> None:
    admin = stubs["admin-1"]
    admin.Enroll(enroll_request("A-1", [random_template(70)], CTX))
    assert admin.Remove(pb.RemoveRequest(subject_id="A-1", context=CTX)).fingers == 1
    summary = admin.EnrollBatchStream(iter([pb.EnrollBatch(requests=[
        enroll_request("A-2", [random_template(71)], CTX)])]))
    assert list(summary.subject_ids) == ["A-2"]
    assert admin.Remove(pb.RemoveRequest(subject_id="A-2", context=CTX)).fingers == 1
    assert admin.Stats(pb.StatsRequest()).subjects >= 5
    assert admin.Verify(_verify()).decision == pb.DECISION_HIT


def test_an_unlisted_certificate_is_refused_but_sees_health_and_reflection(
        pki, server, stubs) -> None:
    error = _refusal(stubs["stranger"].Identify, _identify())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "CN=stranger" in error.details() and "none role" in error.details()
    with _channel(pki, server.port, "stranger") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        assert "ink.v1.Matcher" in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_refusals_and_searches_are_audited_with_the_certificate(server, stubs) -> None:
    stubs["device-b"].Identify(_identify(seed=4))
    _refusal(stubs["device-b"].Remove, pb.RemoveRequest(subject_id="S2", context=CTX))
    records = server.servicer.audit.records()
    search = [r for r in records if r["action"] == "identify"][-1]
    assert search["client"] == "CN=device-b" and search["device"] == "r307-7"
    denied = records[-1]
    assert denied["action"] == "denied" and denied["client"] == "CN=device-b"
    assert denied["outcome"] == {"method": "Remove", "role": "device"}
    assert denied["operator"] == "pc-1"
    assert server.servicer.audit.verify() == []
    assert server.access.denied >= 1


def test_a_device_over_its_rate_is_told_to_wait_and_others_are_not(stubs) -> None:
    device = stubs["device-a"]
    # No device id: the matcher takes it from the certificate (device-a).
    own = pb.Context(operator_id="pc-1", reason="stop and search")
    for _ in range(3):
        device.Identify(_identify(context=own))
    error = _refusal(device.Identify, _identify(context=own))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many searches from this device (CN=device-a); wait" in error.details()
    wait = int(error.details().split("wait ")[1].split(" s")[0])
    assert 90 <= wait <= 100
    assert dict(error.trailing_metadata())["retry-after-s"] == str(wait)
    # The refusal costs the other device nothing.
    assert stubs["device-b"].Identify(_identify()).decision == pb.DECISION_HIT


def test_without_a_client_certificate_the_anonymous_role_applies(pki, tmp_path) -> None:
    access = policy_from_dict({"anonymous_role": "device"}, source="inline")
    running = start_server(tmp_path / "w.sqlite", "127.0.0.1:0",
                           tls=TlsFiles(pki["server"], pki["server_key"]), access=access,
                           workers=2)
    try:
        with _channel(pki, running.port, None) as channel:
            stub = matcher_pb2_grpc.MatcherStub(channel)
            error = _refusal(stub.Stats, pb.StatsRequest())
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "client certificate (mutual TLS)" in error.details()
            # Identify is allowed; the empty watchlist is the next thing it meets.
            error = _refusal(stub.Identify, _identify())
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        running.stop(grace=None)


def test_toml_and_json_files_read_alike(tmp_path) -> None:
    (tmp_path / "a.toml").write_text(
        'anonymous_role = "device"\nrate_limit = { per_second = 2, burst = 4 }\n'
        '[[clients]]\ncn = "desk"\nrole = "custody"\nrate_limit = "none"\n'
        '[[clients]]\ndns = "d1.example"\nrole = "device"\n')
    (tmp_path / "a.json").write_text(json.dumps({
        "anonymous_role": "device", "rate_limit": {"per_second": 2, "burst": 4},
        "clients": [{"cn": "desk", "role": "custody", "rate_limit": "none"},
                    {"dns": "d1.example", "role": "device"}]}))
    toml, js = load_policy(tmp_path / "a.toml"), load_policy(tmp_path / "a.json")
    assert toml.clients == js.clients and toml.rate_limit == js.rate_limit
    desk = ClientIdentity("ipv4:10.0.0.2:4000", "desk", (), "AB" * 32)
    d1 = ClientIdentity("ipv4:10.0.0.3:4000", "x", ("d1.example",), "CD" * 32)
    assert toml.grant(desk).role == Role.CUSTODY and toml.grant(desk).rate_limit is None
    assert toml.grant(d1).role == Role.DEVICE and toml.grant(d1).rate_limit.burst == 4
    anonymous = ClientIdentity("ipv4:10.0.0.4:4000")
    assert toml.grant(anonymous).role == Role.DEVICE
    assert anonymous.key == "peer:ipv4:10.0.0.4"


@pytest.mark.parametrize("raw, fragment", [
    ({"clients": [{"cn": "a"}]}, "needs a role"),
    ({"clients": [{"cn": "a", "dns": "b", "role": "device"}]}, "exactly one of"),
    ({"clients": [{"cn": "a", "role": "superuser"}]}, "unknown role 'superuser'"),
    ({"clients": [{"sha256": "12:34", "role": "admin"}]}, "64 hex digits"),
    ({"rate_limit": {"per_second": 0}}, "per_second must be a positive"),
    ({"rate_limit": 5}, "rate_limit must be"),
    ({"anonymous": "admin"}, "unknown keys ['anonymous']"),
    ([], "top level"),
])
def test_mistakes_in_the_access_file_are_named(raw, fragment) -> None:
    with pytest.raises(AccessConfigError) as info:
        policy_from_dict(raw, source="access.json")
    assert fragment in str(info.value) and "access.json" in str(info.value)


def test_cli_checks_a_file_and_prints_a_fingerprint(pki, tmp_path, capsys) -> None:
    path = _policy_file(tmp_path, pki)
    assert cli_main(["access", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cn = device-a: device, 0.01/s burst 3; device = its certificate's CN\n" in out
    assert "dns = device-b.example: device, no limit; device 'r307-7'\n" in out
    assert "cn = custody-1: custody, no limit; device = its certificate's CN, may name " in out
    assert cli_main(["access", "fingerprint", str(pki["admin-1"])]) == 0
    assert capsys.readouterr().out.strip() == certificate_fingerprint(
        pki["admin-1"].read_bytes())
    (tmp_path / "bad.toml").write_text("clients = 3")
    assert cli_main(["access", "check", str(tmp_path / "bad.toml")]) == 2
    assert "clients must be a list" in capsys.readouterr().err


def test_an_open_or_plain_text_matcher_says_so_loudly(tmp_path, caplog) -> None:
    import logging

    caplog.set_level(logging.WARNING)
    running = start_server(tmp_path / "w.sqlite", "127.0.0.1:0", insecure=True, workers=1)
    running.stop(grace=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SERVING PLAIN TEXT" in w for w in warnings)
    assert any("NO ACCESS FILE" in w and "every client may call every RPC" in w
               for w in warnings)
