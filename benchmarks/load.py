"""Load run: many concurrent gRPC clients against a real matcher with a synthetic gallery.

    python -m benchmarks.load --clients 64 --seconds 60 --gallery-size 100000 [--json]

Starts ``ink-matcher serve`` as a child process on 127.0.0.1, enrols ``--gallery-size``
fingers (two per subject) with EnrollStream from :mod:`benchmarks.synthetic_templates`,
then drives ``--clients`` concurrent clients, each on its own channel, for ``--seconds``:
Identify with one finger (mates and strangers), and a share of Verify. Prints requests,
errors, p50_ms, p99_ms, rss_mb_start (the matcher's largest resident memory in the first
minute of load, or the first half of a shorter run), rss_mb_end (at the end), and more.
``--db`` keeps the watchlist file, so a second run with the same size skips enrolment.

Deadlines: the clients are closed loops (each waits for its answer before it sends the
next request, as a gateway does), so the matcher's queue holds at most ``--clients``
calls and a call waits about ``clients x search time``: 64 clients in front of 1 s
searches wait a minute. The runner measures what it is asked to measure, that latency,
so by default each call's deadline is ``DEADLINE_MARGIN`` times that expected wait (at
least 60 s), from a search timed alone before the load starts; ``--deadline-s`` sets
it instead, to see what a device with a shorter deadline would get (DEADLINE_EXCEEDED,
which the gateway shows the officer as "did not answer in time"). The matcher does not
shed load with a bounded queue: a device's own rate limit already answers a flood with
RESOURCE_EXHAUSTED and retry-after, gRPC drops a queued call whose deadline has passed
before it costs a search, and turning a wait into a retry loop would not shorten it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.matcher_process import MatcherProcess, start_matcher
from benchmarks.synthetic_templates import another_impression, plausible_template
from gateway.client import MatcherClient, enroll_request
from matcher.messages import template_to_message
from protos.ink.v1 import matcher_pb2 as pb

CTX = pb.Context(operator_id="load", device_id="load-client", reason="load test")
FINGERS = (2, 7)  # right and left index, as a handheld scans them
STREAM_SUBJECTS = 1000  # subjects per EnrollStream call: each call is acknowledged durable
PROBES = 256
# The default deadline is this many times the expected wait in the queue.
DEADLINE_MARGIN = 4.0
MIN_DEADLINE_S = 60.0


def _seed(subject: int, finger: int) -> int:
    return subject * 16 + finger


def enrol_gallery(client: MatcherClient, fingers: int, log=print) -> float:
    """Enrol ``fingers`` fingers (two per subject); returns the seconds it took."""
    have = client.stats().fingers
    if have >= fingers:
        log(f"gallery already holds {have} fingers")
        return 0.0
    subjects = (fingers + len(FINGERS) - 1) // len(FINGERS)
    start = time.perf_counter()
    first = have // len(FINGERS)
    for chunk in range(first, subjects, STREAM_SUBJECTS):
        requests = (
            enroll_request(f"L{s:07d}", [plausible_template(_seed(s, f), f) for f in FINGERS],
                           CTX, replace=True)
            for s in range(chunk, min(chunk + STREAM_SUBJECTS, subjects))
        )
        summary = client.enroll_stream(requests)
        if summary.failed:
            raise RuntimeError(f"enrolment failed: {summary.failures[0]}")
        log(f"enrolled {min(chunk + STREAM_SUBJECTS, subjects)}/{subjects} subjects "
            f"({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start


def make_requests(subjects: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """Serialized requests: 3/4 of the Identify probes are mates, 1/4 strangers."""
    requests = []
    for k in range(PROBES):
        s = rng.randrange(subjects)
        f = rng.choice(FINGERS)
        if k % 4 == 3:
            probe = plausible_template(10_000_000 + k, f)
        else:
            probe = another_impression(plausible_template(_seed(s, f), f), seed=k)
        message = template_to_message(probe)
        if k % 16 == 15:
            request = pb.VerifyRequest(subject_id=f"L{s:07d}", probes=[message], context=CTX)
            requests.append(("Verify", request.SerializeToString()))
        else:
            request = pb.IdentifyRequest(probes=[message], context=CTX)
            requests.append(("Identify", request.SerializeToString()))
    return requests


async def _client(address: str, requests, until: float, seed: int, deadline_s: float,
                  latencies: list[float], errors: dict[str, int], verify_share: float) -> None:
    rng = random.Random(seed)
    identify = [r for m, r in requests if m == "Identify"]
    verify = [r for m, r in requests if m == "Verify"] or identify
    async with grpc.aio.insecure_channel(address) as channel:
        calls = {
            "Identify": channel.unary_unary("/ink.v1.Matcher/Identify"),
            "Verify": channel.unary_unary("/ink.v1.Matcher/Verify"),
        }
        while time.monotonic() < until:
            method = "Verify" if rng.random() < verify_share else "Identify"
            payload = rng.choice(verify if method == "Verify" else identify)
            t0 = time.perf_counter()
            try:
                await calls[method](payload, timeout=deadline_s)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append((time.perf_counter() - t0) * 1e3)


def time_one_search(address: str, requests, tries: int = 3) -> float:
    """Median seconds of one Identify with nothing else running (after a first, untimed)."""
    payloads = [r for m, r in requests if m == "Identify"][:tries + 1]
    with grpc.insecure_channel(address) as channel:
        identify = channel.unary_unary("/ink.v1.Matcher/Identify")
        times = []
        for payload in payloads:
            start = time.perf_counter()
            identify(payload, timeout=600)
            times.append(time.perf_counter() - start)
    return float(np.median(times[1:] or times))


def default_deadline(clients: int, search_s: float) -> float:
    """A deadline that a closed-loop queue of ``clients`` calls does not run into."""
    return max(MIN_DEADLINE_S, DEADLINE_MARGIN * clients * search_s)


def _load_average() -> float:
    """The 1-minute load average of the machine (what else ran beside the matcher)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _sample_rss(matcher: MatcherProcess, stop: threading.Event, samples: list) -> None:
    start = time.monotonic()
    while not stop.wait(1.0):
        try:
            samples.append((time.monotonic() - start, matcher.rss_mb()))
        except (OSError, RuntimeError):
            return


def drive(matcher: MatcherProcess, requests, clients: int, seconds: float,
          deadline_s: float = 60.0, verify_share: float = 0.05) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(matcher, stop, samples), daemon=True)
    rss_before = matcher.rss_mb()
    sampler.start()
    until = time.monotonic() + seconds

    async def all_clients() -> None:
        await asyncio.gather(*(
            _client(matcher.address, requests, until, seed, deadline_s, latencies, errors,
                    verify_share)
            for seed in range(clients)))

    load_start = _load_average()
    started = time.perf_counter()
    asyncio.run(all_clients())
    elapsed = time.perf_counter() - started
    load_end = _load_average()
    stop.set()
    sampler.join()
    samples.append((elapsed, matcher.rss_mb()))
    first = min(60.0, seconds / 2)
    early = [rss for t, rss in samples if t <= first] or [samples[0][1]]
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "requests": len(latencies) + sum(errors.values()),
        "errors": sum(errors.values()),
        "errors_by_code": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "max_ms": round(float(np.max(lat)), 1),
        "searches_per_s": round(len(latencies) / elapsed, 2),
        "elapsed_s": round(elapsed, 1),
        "deadline_s": round(deadline_s, 1),
        "rss_mb_loaded": round(rss_before, 1),
        "rss_mb_start": round(max(early), 1),
        "rss_mb_end": round(samples[-1][1], 1),
        "rss_mb_max": round(max(rss for _, rss in samples), 1),
        "rss_end_vs_start": round(samples[-1][1] / max(early) - 1.0, 3),
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": load_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gallery-size", type=int, default=10_000, help="enrolled fingers")
    parser.add_argument("--workers", type=int, default=8, help="matcher worker threads")
    parser.add_argument("--verify-share", type=float, default=0.05)
    parser.add_argument("--deadline-s", type=float,
                        help="per-call deadline (default: from a search timed alone, "
                             f"{DEADLINE_MARGIN:g} x clients x its time, at least "
                             f"{MIN_DEADLINE_S:g} s)")
    parser.add_argument("--db", type=Path, help="keep the watchlist here (default: temporary)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ink-load-") as tmp:
        db = args.db or Path(tmp) / "watchlist.sqlite"
        matcher = start_matcher(db, "--workers", str(args.workers))
        try:
            with MatcherClient(matcher.address, insecure=True, deadline_s=60) as client:
                client.wait_until_serving(60)
                enrol_s = enrol_gallery(client, args.gallery_size, log)
                stats = client.stats()
            requests = make_requests(stats.subjects, random.Random(1))
            search_s = time_one_search(matcher.address, requests)
            deadline_s = args.deadline_s or default_deadline(args.clients, search_s)
            log(f"one search alone: {search_s * 1e3:.0f} ms; driving {args.clients} clients "
                f"for {args.seconds:g} s against {stats.fingers} fingers, deadline "
                f"{deadline_s:.0f} s per call")
            report = drive(matcher, requests, args.clients, args.seconds, deadline_s,
                           args.verify_share)
            report["search_ms_alone"] = round(search_s * 1e3, 1)
        finally:
            matcher.stop()
    report = {"clients": args.clients, "seconds": args.seconds, "gallery_fingers": stats.fingers,
              "gallery_subjects": stats.subjects, "enrol_s": round(enrol_s, 1),
              "workers": args.workers, **report}
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
