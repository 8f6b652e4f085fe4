"""Probe privacy: after many searches no trace of any probe is left anywhere we can look.

Many identifications and verifications (good probes, mates and strangers, minutiae and
ISO records, and malformed probes that fail) go through a real server; then the data
folder (watchlist and audit SQLite files with their -wal/-shm), the server's log output
at DEBUG, the audit records and every error message returned are searched for any byte
sequence of the probes: windows of their ISO and ANSI records, of their float32 x/y
arrays, and of their minutiae as text. None may be found. Positive controls show that
the same search does find enrolled templates (which the store must keep) and a probe
planted on purpose, so the test can fail.
"""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest

from gateway.client import enroll_request
from matcher.formats import encode_ansi, encode_iso
from matcher.messages import template_to_message
from matcher.server import start_server
from matcher.template import Template
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc
from tests.factories import distorted_copy, random_template

CTX = pb.Context(operator_id="pc-7", device_id="r503-2", reason="stop and search")
N_SUBJECTS = 15
ISO_HEADER = 28  # record header (24) + finger view header (4)
ANSI_HEADER = 32
MINUTIA_BYTES = 6
WINDOW = 3  # consecutive minutiae per needle


def _minutiae_needles(record: bytes, header: int) -> set[bytes]:
    body = record[header:]
    n = len(body) // MINUTIA_BYTES
    step = MINUTIA_BYTES
    return {body[i * step:(i + WINDOW) * step] for i in range(n - WINDOW + 1)}


def _needles(t: Template) -> set[bytes]:
    """Byte sequences any copy of this template's content would contain."""
    needles = {encode_iso(t), encode_ansi(t)}
    needles |= _minutiae_needles(encode_iso(t), ISO_HEADER)
    needles |= _minutiae_needles(encode_ansi(t), ANSI_HEADER)
    for dtype in (np.float32, np.float64):
        for values in (t.x, t.y, np.column_stack([t.x, t.y]).ravel()):
            raw = np.asarray(values, dtype=dtype).tobytes()
            width = WINDOW * np.dtype(dtype).itemsize
            needles |= {raw[i:i + width] for i in range(0, len(raw) - width + 1,
                                                         np.dtype(dtype).itemsize)}
    for i in range(len(t) - 1):
        for fmt in ("{:.1f}", "{:.0f}", "{}"):
            xs = [fmt.format(float(v)) for v in t.x[i:i + 2]]
            ys = [fmt.format(float(v)) for v in t.y[i:i + 2]]
            for sep in (", ", ","):
                needles.add(f"{xs[0]}{sep}{ys[0]}{sep}".encode())
                needles.add(f"({xs[0]}{sep}{ys[0]}){sep}({xs[1]}{sep}{ys[1]})".encode())
    return needles


def _hash_columns(columns: np.ndarray) -> np.ndarray:
    """A polynomial hash over the columns of a 2-D uint8 array: one per row (wrapping)."""
    h = np.zeros(columns.shape[0], np.uint64)
    with np.errstate(over="ignore"):
        for k in range(columns.shape[1]):
            h = h * np.uint64(1_000_003) + columns[:, k].astype(np.uint64)
    return h


def _found(needles: set[bytes], haystacks: dict[str, bytes]) -> list[str]:
    """Which needles occur in which haystack: hashes of every window find the candidates
    (tens of thousands of needles times megabytes would be slow one by one), then an
    exact search confirms them."""
    by_length: dict[int, list[bytes]] = {}
    for needle in needles:
        by_length.setdefault(len(needle), []).append(needle)
    wanted = {length: _hash_columns(np.frombuffer(b"".join(group), np.uint8)
                                    .reshape(len(group), length))
              for length, group in by_length.items()}
    found = []
    for name, hay in haystacks.items():
        data = np.frombuffer(hay, np.uint8)
        for length, group in by_length.items():
            if data.size < length:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(data, length)
            for i in np.flatnonzero(np.isin(wanted[length], _hash_columns(windows))):
                if group[i] in hay:
                    found.append(f"{name}: {group[i][:24]!r}")
    return found


def _files(tmp_path, prefix: str) -> dict[str, bytes]:
    return {prefix + str(p.relative_to(tmp_path)): p.read_bytes()
            for p in (tmp_path / "data").rglob("*") if p.is_file()}


@pytest.fixture
def server(tmp_path):
    running = start_server(tmp_path / "data" / "watchlist.sqlite", "127.0.0.1:0",
                           insecure=True, workers=4)
    yield running
    running.stop(grace=None)


def test_no_trace_of_any_probe_is_kept(server, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = matcher_pb2_grpc.MatcherStub(channel)
    gallery = {i: (random_template(2 * i, finger=2), random_template(2 * i + 1, finger=7))
               for i in range(N_SUBJECTS)}
    summary = stub.EnrollStream(iter(
        enroll_request(f"S{i:03d}", list(fingers), CTX) for i, fingers in gallery.items()))
    assert summary.enrolled == N_SUBJECTS

    probes: list[Template] = []
    errors: list[str] = []
    hits = 0
    for k in range(40):
        if k % 4 == 3:
            probe = random_template(50_000 + k, finger=2)  # a stranger
        else:
            probe = distorted_copy(gallery[k % N_SUBJECTS][0], seed=1000 + k)
        probes.append(probe)
        message = (pb.Template(record=encode_iso(probe)) if k % 5 == 0
                   else template_to_message(probe))
        reply = stub.Identify(pb.IdentifyRequest(probes=[message], context=CTX))
        hits += reply.decision == pb.DECISION_HIT
    for k in range(10):
        probe = distorted_copy(gallery[k][1], seed=2000 + k)
        probes.append(probe)
        stub.Verify(pb.VerifyRequest(subject_id=f"S{k:03d}", context=CTX,
                                     probes=[template_to_message(probe)]))
    assert hits >= 20  # the searches were real searches

    # Probes that fail, each in its own way.
    bad_probes = []
    for k in range(8):
        probe = distorted_copy(gallery[k][0], seed=3000 + k)
        probes.append(probe)
        outside = template_to_message(probe)
        outside.minutiae[k].x = 9000.0
        nan = template_to_message(probe)
        nan.minutiae[k].y = float("nan")
        bad_kind = template_to_message(probe)
        bad_kind.minutiae[k].quality = 500
        few = template_to_message(probe)
        del few.minutiae[4:]
        truncated = pb.Template(record=encode_iso(probe)[:-7])
        ansi_bad_finger = pb.Template(record=encode_ansi(probe), finger=9)
        bad_probes += [outside, nan, bad_kind, few, truncated, ansi_bad_finger]
    for message in bad_probes:
        for call, request in [
            (stub.Identify, pb.IdentifyRequest(probes=[message], context=CTX)),
            (stub.Verify, pb.VerifyRequest(subject_id="S001", probes=[message], context=CTX)),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.NOT_FOUND)
            errors.append(info.value.details())
    channel.close()
    audit_records = server.servicer.audit.records()
    assert sum(r["action"] == "identify" for r in audit_records) == 40
    # The files as they are while serving (with -wal and -shm), then after shutdown.
    live = _files(tmp_path, "serving ")
    assert any(name.endswith("-wal") for name in live)
    server.stop(grace=None)
    files = _files(tmp_path, "")
    assert {"data/watchlist.sqlite", "data/watchlist.audit.sqlite"} <= set(files)
    haystacks = {**live, **files}
    haystacks["log"] = "\n".join(
        [caplog.text] + [r.getMessage() for r in caplog.records]).encode()
    haystacks["audit records"] = json.dumps(audit_records).encode()
    haystacks["error messages"] = "\n".join(errors).encode()

    needles = set().union(*(_needles(p) for p in probes))
    assert len(needles) > 5000
    assert _found(needles, haystacks) == []

    # Controls: the same search finds what must be there, and a planted probe.
    enrolled = _minutiae_needles(encode_iso(gallery[3][0]), ISO_HEADER)
    assert _found(enrolled, {"watchlist": files["data/watchlist.sqlite"]})
    planted = {"planted": str([(float(x), float(y)) for x, y in
                               zip(probes[0].x, probes[0].y, strict=True)]).encode()}
    assert _found(_needles(probes[0]), planted)
    planted = {"planted": probes[1].x.astype(np.float32).tobytes()}
    assert _found(_needles(probes[1]), planted)
