"""`ink-matcher serve` as a user runs it: a real process, TLS by default, health."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client import ClientTls, MatcherClient, MatcherError
from tests.factories import random_template
from tests.tls_certs import make_pki


def _serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "matcher.cli", "serve", "--db", str(tmp_path / "w.sqlite"),
         "--listen", "127.0.0.1:0", "--port-file", str(port_file), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"matcher did not start: {proc.stdout.read()}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


def test_plain_text_needs_an_explicit_flag(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "matcher.cli", "serve", "--db", str(tmp_path / "w.sqlite")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "--insecure" in result.stderr and "--cert" in result.stderr


def test_tls_server_answers_health_and_refuses_plain_text(tmp_path) -> None:
    pki = make_pki(tmp_path)
    proc, port = _serve(tmp_path, "--cert", str(pki["server"]), "--key", str(pki["server_key"]))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with MatcherClient(f"localhost:{port}", tls=ClientTls(ca=pki["ca"])) as client:
            assert client.stats().comparator == "mcc"
        with MatcherClient(f"127.0.0.1:{port}", insecure=True, deadline_s=2) as client, \
                pytest.raises(MatcherError):
            client.stats()
    finally:
        out = _stop(proc)
    assert "(TLS)" in out


def test_mutual_tls_requires_a_client_certificate(tmp_path) -> None:
    pki = make_pki(tmp_path)
    proc, port = _serve(tmp_path, "--cert", str(pki["server"]), "--key", str(pki["server_key"]),
                        "--client-ca", str(pki["ca"]))
    try:
        device = ClientTls(ca=pki["ca"], cert=pki["client"], key=pki["client_key"])
        with MatcherClient(f"localhost:{port}", tls=device) as client:
            assert client.stats().subjects == 0
        with MatcherClient(f"localhost:{port}", tls=ClientTls(ca=pki["ca"]),
                           deadline_s=2) as client, pytest.raises(MatcherError):
            client.stats()
    finally:
        _stop(proc)


def test_enrolment_survives_a_restart(tmp_path) -> None:
    from protos.ink.v1 import matcher_pb2 as pb

    ctx = pb.Context(operator_id="desk", device_id="d", reason="arrest")
    proc, port = _serve(tmp_path, "--insecure")
    try:
        with MatcherClient(f"127.0.0.1:{port}", insecure=True) as client:
            client.enroll("P-1", [random_template(3, finger=2)], ctx)
    finally:
        proc.kill()  # no clean shutdown: the enrolment was acknowledged, so it is durable
        proc.wait()
    proc, port = _serve(tmp_path, "--insecure")
    try:
        with MatcherClient(f"127.0.0.1:{port}", insecure=True) as client:
            assert client.get_subject("P-1").enrolled[0].minutiae == 35
    finally:
        _stop(proc)
