"""Property-based fuzzing (hypothesis) of every parser that reads outside input, and every RPC.

Targets: ``formats`` (ISO/ANSI minutiae records, :func:`matcher.formats.decode_template`),
``zfm`` (ZFM/R30x frame parser), ``gt521`` (GT-521F packet parser), ``image`` (image
decoding, :func:`gateway.extraction.decode.load_image`) and ``rpc`` (raw, garbled and
structured-but-absurd messages to every ``ink.v1.Matcher`` RPC of a real server on
127.0.0.1, through the access interceptor). Inputs are valid seeds mutated (bytes
flipped, inserted, deleted, truncated), structured nonsense, and plain random bytes.

A *crash* is any exception other than the documented "bad input" error of the target
(or, for RPCs, a status other than the documented ones: INTERNAL, UNKNOWN, a hang);
a *hang* is one input taking longer than ``--hang-s``. The CI tests
(``tests/test_fuzz_*.py``) run a few hundred inputs per target; the long run is::

    python -m benchmarks.fuzz --target formats --examples 100000 [--seed N] [--json]
    python -m benchmarks.fuzz --target image --examples 100000 --isolate
    python -m benchmarks.fuzz --target all --examples 100000

(``--isolate`` runs the inputs in child processes, so that a decoder in C that takes the
process down is counted as a crash, with the input that did it, and the run goes on.)

and prints inputs run, distinct crashes (with the smallest input that raised each),
hangs and the slowest input.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

HANG_S = 5.0


@dataclass
class Crash:
    signature: str  # exception type and where it was raised
    message: str
    example: bytes | str  # the smallest input seen that raised it
    count: int = 1


@dataclass
class FuzzResult:
    target: str
    examples: int = 0
    crashes: dict[str, Crash] = field(default_factory=dict)
    hangs: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "examples": self.examples,
            "crashes": len(self.crashes),
            "hangs": self.hangs,
            "slowest_ms": round(self.slowest_s * 1e3, 2),
            "seconds": round(self.seconds, 1),
            "crash_details": [
                {"signature": c.signature, "message": c.message[:300], "count": c.count,
                 "reproducer": c.example.hex() if isinstance(c.example, bytes)
                 else c.example}
                for c in self.crashes.values()
            ],
        }


# ---- mutation of seeds ----------------------------------------------------------------
def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, pos, blob in edits:
        at = pos % (len(data) + 1)
        if op == 0 and data:  # overwrite bytes
            at = min(at, len(data) - 1)
            data[at:at + len(blob)] = blob[: len(data) - at] or b"\xff"
        elif op == 1:  # insert
            data[at:at] = blob
        elif op == 2:  # delete
            del data[at:at + 1 + len(blob)]
        elif op == 3:  # truncate
            del data[at:]
        elif op == 4 and data:  # set a byte to an extreme
            data[min(at, len(data) - 1)] = (0x00, 0x7F, 0x80, 0xFF)[len(blob) % 4]
    return bytes(data)


def mutated(seeds: list[bytes], max_edits: int = 6) -> st.SearchStrategy[bytes]:
    """Valid seeds with a few random edits, plus plain random bytes."""
    edit = st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.binary(max_size=8))
    return st.one_of(
        st.tuples(st.sampled_from(seeds), st.lists(edit, max_size=max_edits))
        .map(lambda pair: _mutate(*pair)),
        st.binary(max_size=512),
    )


# ---- targets ----------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    # Given an environment (made by ``setup``), the strategy and the check of one input.
    strategy: Callable[[object], st.SearchStrategy]
    check: Callable[[object, object], None]
    setup: Callable[[], contextmanager] | None = None


def _template_seeds() -> list:
    from matcher.template import make_template

    rng = np.random.default_rng(7)
    seeds = []
    for n in (1, 12, 40):
        seeds.append(make_template(rng.uniform(0, 299, n), rng.uniform(0, 399, n),
                                   rng.uniform(0, 2 * np.pi, n), rng.integers(0, 3, n),
                                   rng.integers(0, 101, n), width=300, height=400,
                                   ppi=500, finger=int(rng.integers(0, 11))))
    return seeds


def _formats_strategy(_env) -> st.SearchStrategy:
    from matcher.formats import encode_ansi, encode_iso

    seeds = []
    for t in _template_seeds():
        seeds += [encode_iso(t), encode_ansi(t)]
    # A two-view record and one with extended data, so those paths are reached too.
    iso = encode_iso(_template_seeds()[1])
    view = iso[24:]
    second = view[:1] + bytes([view[1] | 0x10]) + view[2:]
    seeds.append(iso[:8] + struct.pack(">I", len(iso) + len(second)) + iso[12:22] + b"\x02"
                 + iso[23:24] + view + second)
    seeds.append(iso[:-2] + b"\x00\x06\x01\x02\x00\x02\xaa\xbb")
    return st.tuples(mutated(seeds), st.one_of(st.none(), st.integers(-3, 12)))


def _formats_check(_env, example) -> None:
    from matcher.formats import decode_template
    from matcher.template import MAX_MINUTIAE, TemplateError

    data, finger = example
    try:
        t = decode_template(data, finger=finger)
    except TemplateError:
        return
    # What decodes must satisfy the template contract.
    assert len(t) <= MAX_MINUTIAE
    assert np.all((t.x >= 0) & (t.x < t.width) & (t.y >= 0) & (t.y < t.height))
    assert np.all((t.angle >= 0) & (t.angle < 2 * np.pi))


def _chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def _zfm_strategy(_env) -> st.SearchStrategy:
    from gateway.devices import zfm_protocol as z

    seeds = [z.encode_command(0x01), z.encode_ack(0x00, b"\x01\x02"),
             z.encode_packet(z.Pid.DATA, bytes(range(128))),
             z.encode_packet(z.Pid.END, b"\x55" * 32),
             z.encode_ack(0x00) + z.encode_packet(z.Pid.DATA, b"\x00" * 64)]
    return st.tuples(mutated([s * 2 for s in seeds] + seeds, max_edits=8),
                     st.lists(st.integers(0, 1 << 16), max_size=6))


def _zfm_check(_env, example) -> None:
    from gateway.devices.zfm_protocol import MAX_PAYLOAD, FrameError, FrameParser

    data, cuts = example
    parser = FrameParser()
    for chunk in _chunks(data, cuts):
        parser.feed(chunk)
        for _ in range(len(data) + 2):  # each packet consumes bytes: no more rounds needed
            try:
                packet = parser.next_packet()
            except FrameError:
                continue
            if packet is None:
                break
            assert len(packet.payload) <= MAX_PAYLOAD
            assert packet.to_bytes() in data
        else:
            raise AssertionError("the parser returned packets without consuming input")
        assert parser.wanted() >= 1
    assert parser.buffered <= len(data)


def _gt521_strategy(_env) -> st.SearchStrategy:
    from gateway.devices import gt521_protocol as g

    seeds = [g.encode_packet(0x01, 1), g.encode_packet(0x30, 0xFFFFFFFF),
             g.encode_data(bytes(range(64))),
             g.encode_packet(0x30, 0) + g.encode_data(b"\x07" * 24)]
    return st.tuples(mutated([s * 2 for s in seeds] + seeds, max_edits=8),
                     st.lists(st.integers(0, 1 << 16), max_size=6),
                     st.one_of(st.none(), st.integers(0, 200)),
                     st.booleans())


def _gt521_check(_env, example) -> None:
    from gateway.devices import gt521_protocol as g

    data, cuts, data_length, responses_only = example
    codes = frozenset(int(r) for r in g.Reply) if responses_only else None
    parser = g.PacketParser(codes)
    for chunk in _chunks(data, cuts):
        parser.feed(chunk)
        for _ in range(len(data) + 2):
            try:
                got = parser.next_packet() if data_length is None else parser.next_data(
                    data_length)
            except g.FrameError:
                continue
            if got is None:
                break
            if data_length is not None:
                assert len(got) == data_length
            elif codes is not None:
                assert got.code in codes
        else:
            raise AssertionError("the parser returned packets without consuming input")
        assert parser.wanted(data_length) >= 1
        assert parser.data_progress() >= 0
    assert parser.buffered <= len(data)


def _image_seeds() -> list[bytes]:
    import wsq  # noqa: F401  (registers WSQ with Pillow)
    from PIL import Image

    rng = np.random.default_rng(3)
    seeds = []
    for mode, size in (("L", (24, 20)), ("RGB", (9, 7)), ("I;16", (8, 8)), ("1", (16, 5)),
                       ("P", (6, 6))):
        arr = rng.integers(0, 255, size[::-1]).astype(np.uint8)
        im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(
            arr.astype(np.uint16) * 257)
        for fmt in ("PNG", "TIFF", "BMP"):
            if fmt == "BMP" and mode == "I;16":
                continue
            buf = io.BytesIO()
            im.save(buf, format=fmt, dpi=(500, 500))
            seeds.append(buf.getvalue())
    # The other formats load_image accepts (JPEG and JPEG 2000 in ANSI/NIST records).
    gray = Image.fromarray(rng.integers(0, 255, (20, 16)).astype(np.uint8))
    for fmt in ("JPEG", "JPEG2000", "PPM"):
        buf = io.BytesIO()
        gray.save(buf, format=fmt)
        seeds.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 32)).astype(np.uint8)).save(buf, format="WSQ")
    seeds.append(buf.getvalue())
    return seeds


def _image_strategy(_env) -> st.SearchStrategy:
    return st.tuples(mutated(_image_seeds()), st.one_of(st.none(), st.sampled_from(
        [500.0, 1000.0, 0.0, -1.0, float("nan")])))


def _image_check(_env, example) -> None:
    from gateway.extraction.decode import ImageDecodeError, load_image

    data, ppi = example
    try:
        loaded = load_image(data, ppi)
    except ImageDecodeError:
        return
    assert loaded.image.dtype == np.uint8 and loaded.image.ndim == 2


# ---- RPCs through a real server --------------------------------------------------------
RPC_ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
                         "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"})
UNARY_RPCS = ("Identify", "Verify", "Enroll", "Remove", "GetSubject", "Stats")


@contextmanager
def rpc_environment(workers: int = 4):
    """A real matcher on 127.0.0.1 with a small watchlist, and a raw channel to it."""
    import grpc

    from matcher.access import policy_from_dict
    from matcher.server import start_server

    folder = Path(tempfile.mkdtemp(prefix="ink-fuzz-"))
    running = start_server(folder / "w.sqlite", "127.0.0.1:0", insecure=True, workers=workers,
                           access=policy_from_dict({"anonymous_role": "admin"}))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        from gateway.client import enroll_request
        from protos.ink.v1 import matcher_pb2 as pb
        from protos.ink.v1 import matcher_pb2_grpc

        ctx = pb.Context(operator_id="fuzz", device_id="fuzz", reason="fuzz")
        seeds = _template_seeds()
        stub = matcher_pb2_grpc.MatcherStub(channel)
        stub.EnrollStream(iter([enroll_request(f"F{i}", [t.with_finger(2)], ctx)
                                for i, t in enumerate(seeds[1:])]))
        yield {"channel": channel, "server": running, "folder": folder}
    finally:
        channel.close()
        running.stop(grace=None)
        shutil.rmtree(folder, ignore_errors=True)  # the store, its journal, the index snapshot


def _rpc_seeds() -> dict[str, list[bytes]]:
    from gateway.client import enroll_request
    from matcher.formats import encode_iso
    from matcher.messages import template_to_message
    from protos.ink.v1 import matcher_pb2 as pb

    ctx = pb.Context(operator_id="fuzz", device_id="fuzz", reason="fuzz", case_reference="c")
    t = _template_seeds()[2].with_finger(2)
    probe = template_to_message(t)
    record = pb.Template(record=encode_iso(t))
    return {
        "Identify": [pb.IdentifyRequest(probes=[probe], context=ctx).SerializeToString(),
                     pb.IdentifyRequest(probes=[record, probe], context=ctx, max_candidates=3,
                                        target_fpir=0.01).SerializeToString()],
        "Verify": [pb.VerifyRequest(subject_id="F1", probes=[probe],
                                    context=ctx).SerializeToString()],
        "Enroll": [enroll_request("Z", [t], ctx, labels={"k": "v"}).SerializeToString(),
                   enroll_request("Z", [t], ctx, replace=True).SerializeToString()],
        "EnrollStream": [enroll_request("Y", [t], ctx, replace=True).SerializeToString()],
        "Remove": [pb.RemoveRequest(subject_id="Z", context=ctx).SerializeToString()],
        "GetSubject": [pb.GetSubjectRequest(subject_id="F0").SerializeToString()],
        "Stats": [b""],
    }


def _absurd_template() -> st.SearchStrategy:
    from protos.ink.v1 import matcher_pb2 as pb

    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    minutia = st.builds(pb.Minutia, x=floats, y=floats, angle=floats,
                        kind=st.integers(0, 2), quality=st.integers(0, (1 << 32) - 1))
    return st.builds(
        pb.Template, finger=st.integers(0, 10), width=st.integers(0, 1 << 20),
        height=st.integers(0, 1 << 20), ppi=floats, image_quality=st.integers(0, 200),
        minutiae=st.lists(minutia, max_size=300), record=st.binary(max_size=64))


def _absurd_messages() -> st.SearchStrategy[tuple[str, bytes]]:
    from protos.ink.v1 import matcher_pb2 as pb

    text = st.text(max_size=300)
    ctx = st.builds(pb.Context, operator_id=text, device_id=text, reason=text,
                    case_reference=text)
    templates = st.lists(_absurd_template(), max_size=12)
    subject = st.builds(pb.Subject, subject_id=text, fingers=templates,
                        labels=st.dictionaries(text, text, max_size=40))
    messages = st.one_of(
        st.builds(pb.IdentifyRequest, probes=templates, context=ctx,
                  max_candidates=st.integers(0, (1 << 32) - 1),
                  target_fpir=st.floats(allow_nan=True)).map(lambda m: ("Identify", m)),
        st.builds(pb.VerifyRequest, subject_id=text, probes=templates, context=ctx,
                  target_fmr=st.floats(allow_nan=True)).map(lambda m: ("Verify", m)),
        st.builds(pb.EnrollRequest, subject=subject, replace=st.booleans(), context=ctx)
        .map(lambda m: ("Enroll", m)),
        st.builds(pb.RemoveRequest, subject_id=text, context=ctx).map(lambda m: ("Remove", m)),
        st.builds(pb.GetSubjectRequest, subject_id=text).map(lambda m: ("GetSubject", m)),
    )
    return messages.map(lambda pair: (pair[0], pair[1].SerializeToString()))


def _rpc_strategy(_env) -> st.SearchStrategy:
    seeds = _rpc_seeds()
    garbled = st.sampled_from(sorted(seeds)).flatmap(
        lambda m: st.tuples(st.just(m), mutated(seeds[m], max_edits=8)))
    return st.one_of(garbled, _absurd_messages())


def _rpc_check(env, example) -> None:
    import grpc

    method, payload = example
    channel = env["channel"]
    path = f"/ink.v1.Matcher/{method}"
    try:
        if method == "EnrollStream":
            channel.stream_unary(path)(iter([payload, payload]), timeout=HANG_S * 4)
        else:
            channel.unary_unary(path)(payload, timeout=HANG_S * 4)
    except grpc.RpcError as exc:
        code = exc.code().name
        if code not in RPC_ALLOWED:
            raise AssertionError(f"{method} answered {code}: {exc.details()}") from None


TARGETS = {
    "formats": Target("formats", _formats_strategy, _formats_check),
    "zfm": Target("zfm", _zfm_strategy, _zfm_check),
    "gt521": Target("gt521", _gt521_strategy, _gt521_check),
    "image": Target("image", _image_strategy, _image_check),
    "rpc": Target("rpc", _rpc_strategy, _rpc_check, rpc_environment),
}


def run(name: str, examples: int, *, seed: int | None = None, derandomize: bool = False,
        hang_s: float = HANG_S, last_input: Path | None = None) -> FuzzResult:
    """Feed ``examples`` generated inputs to a target; crashes are collected, not raised.

    With ``last_input``, each input is written there (with the count so far) before it
    is tried, so that when native code takes the whole process down the culprit is known.
    """
    target = TARGETS[name]
    result = FuzzResult(name)
    start = time.perf_counter()
    with warnings.catch_warnings(), (target.setup() if target.setup else _nothing()) as env:
        # Decoders warn about every odd file; the findings are exceptions, not warnings.
        warnings.simplefilter("ignore")
        strategy = target.strategy(env)

        @settings(max_examples=examples, database=None, deadline=None,
                  derandomize=derandomize, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def feed(example) -> None:
            result.examples += 1
            if last_input is not None:
                last_input.write_bytes(pickle.dumps((result.examples, example)))
            t0 = time.perf_counter()
            try:
                target.check(env, example)
            except Exception as exc:  # noqa: BLE001  (every escape is a finding)
                _record(result, exc, example)
            took = time.perf_counter() - t0
            result.slowest_s = max(result.slowest_s, took)
            if took > hang_s:
                result.hangs += 1

        if seed is not None:
            feed = hypothesis_seed(seed)(feed)
        feed()
    result.seconds = time.perf_counter() - start
    return result


@contextmanager
def _nothing():
    yield None


def _record(result: FuzzResult, exc: Exception, example) -> None:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    signature = f"{type(exc).__name__} at {where}"
    if isinstance(exc, AssertionError):  # our own checks: tell them apart by what failed
        signature += f" ({str(exc)[:60]})"
    as_input = example if isinstance(example, bytes) else repr(example)
    known = result.crashes.get(signature)
    if known is None:
        result.crashes[signature] = Crash(signature, str(exc), as_input)
        return
    known.count += 1
    if len(as_input) < len(known.example):
        known.example = as_input


def run_isolated(name: str, examples: int, seed: int, hang_s: float, log=print) -> FuzzResult:
    """Run in child processes; a child killed by native code counts as a crash, and a new
    child (with the next seed) carries on with the inputs still to do."""
    total = FuzzResult(name)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ink-fuzz-") as tmp:
        last = Path(tmp) / "last-input"
        attempt = 0
        while total.examples < examples:
            remaining = examples - total.examples
            last.unlink(missing_ok=True)
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.fuzz", "--target", name, "--examples",
                 str(remaining), "--seed", str(seed + attempt), "--hang-s", str(hang_s),
                 "--json", "--last-input", str(last)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            attempt += 1
            if child.returncode in (0, 1) and child.stdout.strip():
                _merge(total, json.loads(child.stdout.strip().splitlines()[-1]))
                break
            done, example = pickle.loads(last.read_bytes()) if last.exists() else (0, b"")
            total.examples += done
            signature = f"process killed (exit {child.returncode})"
            log(f"{name}: child died after {done} inputs ({signature}); carrying on")
            known = total.crashes.get(signature)
            as_input = example if isinstance(example, bytes) else repr(example)
            if known is None:
                total.crashes[signature] = Crash(signature, "native crash", as_input)
            else:
                known.count += 1
                if len(as_input) < len(known.example):
                    known.example = as_input
    total.seconds = time.perf_counter() - start
    return total


def _merge(total: FuzzResult, report: dict) -> None:
    total.examples += report["examples"]
    total.hangs += report["hangs"]
    total.slowest_s = max(total.slowest_s, report["slowest_ms"] / 1e3)
    for crash in report["crash_details"]:
        total.crashes[crash["signature"]] = Crash(crash["signature"], crash["message"],
                                                  crash["reproducer"], crash["count"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*TARGETS, "all"], required=True)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    parser.add_argument("--hang-s", type=float, default=HANG_S,
                        help="an input slower than this counts as a hang")
    parser.add_argument("--isolate", action="store_true",
                        help="run in child processes, so a native crash is counted and the "
                             "run goes on (use for targets that reach C code: image)")
    parser.add_argument("--last-input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.target == "all" else [args.target]
    failed = False
    for name in names:
        if args.isolate:
            result = run_isolated(name, args.examples, args.seed or 0, args.hang_s,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
        else:
            result = run(name, args.examples, seed=args.seed, hang_s=args.hang_s,
                         last_input=args.last_input)
        report = result.as_dict()
        failed |= bool(result.crashes or result.hangs)
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            print(f"{name}: {report['examples']} inputs in {report['seconds']} s, "
                  f"{report['crashes']} crashes, {report['hangs']} hangs, slowest "
                  f"{report['slowest_ms']} ms", flush=True)
            for crash in report["crash_details"]:
                print(f"  {crash['signature']} (x{crash['count']}): {crash['message']}\n"
                      f"    reproducer: {crash['reproducer'][:400]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
