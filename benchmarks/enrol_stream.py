"""Bulk enrolment over gRPC: fingers per second through EnrollBatchStream, end to end.

    python -m benchmarks.enrol_stream --fingers N [--from-files] [--per-message] [--json]
                                      [--db PATH] [--seed S]

Starts a real matcher as a user starts it, in its own process (``ink-matcher serve
--insecure`` on 127.0.0.1, :func:`benchmarks.matcher_process.start_matcher`, a fresh
SQLite watchlist in a temporary folder or at ``--db``), and streams N one-finger subjects
to it from this process through :meth:`gateway.client.MatcherClient.enroll_stream`, as
``ink-gateway enroll-templates`` does: ISO 19794-2 records
(:func:`benchmarks.synthetic_gallery.gallery_template` encoded by
:func:`matcher.formats.encode_iso`), sent in EnrollBatch messages of up to
:data:`gateway.client.ENROLL_BATCH_SUBJECTS` subjects (EnrollBatchStream). The records and
the request messages are made before the clock starts (synthesis in a process pool), and
two warm-up subjects are enrolled and removed first, so only the stream is timed: the
client batching and sending, the matcher receiving and decoding, building cylinders,
writing SQLite with ``synchronous=FULL``, auditing each batch and updating the index. The
client sends the stream as consecutive calls (some 30,000 subjects each with these ids),
each small enough for the matcher's one summary message
(:data:`gateway.client.SUMMARY_BUDGET_BYTES`). Afterwards the matcher's Stats must count
N fingers, or the run fails. With ``--from-files`` the records are written to a folder
of ``.iso`` files first and the client is :func:`gateway.bulk_enrol.enrol_templates`,
exactly as ``ink-gateway enroll-templates`` runs it: listing, reading and checking the
files are timed too. With ``--per-message`` the client sends one subject per message
(EnrollStream), as it does to a matcher that does not serve batches: the comparison.

Client and matcher share this machine's cores, so on a busy machine the wall-clock rate
says as much about the neighbours as about the code: the CPU time each process spent per
finger during the stream is reported too, with the load average at its end.

With ``--json`` it prints exactly ``{"fingers", "seconds", "enrol_per_s", "batch",
"matcher_cpu_us", "client_cpu_us", "load_1m"}``: ``batch`` is the matcher's durable batch
(:data:`matcher.enrol_stream.ENROLL_BATCH`), ``*_cpu_us`` CPU microseconds per finger of
the matcher process and of this (client) process, ``load_1m`` the one-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.matcher_process import start_matcher
from benchmarks.synthetic_gallery import gallery_template
from gateway.bulk_enrol import enrol_templates
from gateway.client import MatcherClient
from matcher.enrol_stream import ENROLL_BATCH
from matcher.formats import encode_iso
from protos.ink.v1 import matcher_pb2 as pb

SYNTHESIS_JOB = 2048  # records per process-pool job
WARM_UP_SUBJECTS = 2
CONTEXT = pb.Context(operator_id="benchmark", device_id="enrol-stream",
                     reason="enrolment throughput benchmark")


class StatsMismatch(RuntimeError):
    """The matcher does not count the fingers the stream acknowledged."""


def _iso_records(job: tuple[int, int, int]) -> list[bytes]:
    seed, start, stop = job
    return [encode_iso(gallery_template(seed, i)) for i in range(start, stop)]


def synthesise(fingers: int, seed: int = 0) -> list[bytes]:
    """ISO records of gallery fingers 0..fingers-1, made on every core."""
    jobs = [(seed, s, min(fingers, s + SYNTHESIS_JOB)) for s in range(0, fingers, SYNTHESIS_JOB)]
    if len(jobs) <= 1:  # a pool costs more than it saves
        return [r for job in jobs for r in _iso_records(job)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [r for part in pool.map(_iso_records, jobs) for r in part]


def enroll_requests(records: list[bytes]) -> list[pb.EnrollRequest]:
    """One request per record: subject ``E-<i>``, its one finger as the ISO record."""
    return [
        pb.EnrollRequest(subject=pb.Subject(subject_id=f"E-{i:08d}",
                                            fingers=[pb.Template(record=record)]),
                         context=CONTEXT)
        for i, record in enumerate(records)
    ]


def _warm_up(client: MatcherClient, requests: list[pb.EnrollRequest]) -> None:
    """Enrol and remove a few subjects, so that the matcher has compiled (or loaded from
    Numba's cache) every kernel of enrolment before the clock starts, as the store's
    runner (:mod:`benchmarks.identify`) has; the watchlist is empty again afterwards."""
    warm = []
    for i, request in enumerate(requests[:WARM_UP_SUBJECTS]):
        copy = pb.EnrollRequest()
        copy.CopyFrom(request)
        copy.subject.subject_id = f"warm-up-{i}"
        warm.append(copy)
    summary = client.enroll_stream(warm)
    for subject_id in summary.subject_ids:
        client.remove(subject_id, CONTEXT)


def run(fingers: int, *, seed: int = 0, db: Path | None = None,
        from_files: bool = False, per_message: bool = False) -> dict:
    """Stream ``fingers`` subjects into a fresh matcher process; the figures of the run.

    ``from_files``: the records are written to a folder first, one ``.iso`` file per
    subject, and the client is :func:`gateway.bulk_enrol.enrol_templates`, as
    ``ink-gateway enroll-templates`` runs it (listing, reading and checking the files is
    then timed too). ``per_message``: one subject per message (EnrollStream).
    """
    if db is not None and db.exists():
        raise FileExistsError(f"{db} exists: --db names a new watchlist file")
    records = synthesise(fingers, seed)
    requests = enroll_requests(records)
    with tempfile.TemporaryDirectory(prefix="ink-enrol-stream-") as tmp:
        folder = Path(tmp) / "templates"
        if from_files:
            folder.mkdir()
            for request, record in zip(requests, records, strict=True):
                # finger 0 in the name: the record's own finger is enrolled
                (folder / f"{request.subject.subject_id}_0_1.iso").write_bytes(record)
        matcher = start_matcher(db or Path(tmp) / "watchlist.sqlite")
        try:
            with MatcherClient(matcher.address, insecure=True, deadline_s=60.0,
                               batch_enrolment=not per_message) as client:
                client.wait_until_serving()
                _warm_up(client, requests)
                matcher_cpu = matcher.cpu_seconds()
                client_cpu = time.process_time()
                start = time.perf_counter()
                if from_files:
                    summary = enrol_templates(client, folder, CONTEXT, warn=_refused)
                else:
                    summary = client.enroll_stream(requests)
                seconds = time.perf_counter() - start
                client_cpu = time.process_time() - client_cpu
                matcher_cpu = matcher.cpu_seconds() - matcher_cpu
                load = os.getloadavg()[0]
                stats = client.stats()
        finally:
            matcher.stop()
    if summary.failed or summary.enrolled != fingers or stats.fingers != fingers:
        first = summary.failures[0].message if summary.failures else "none"
        raise StatsMismatch(
            f"streamed {fingers} fingers: {summary.enrolled} acknowledged, {summary.failed} "
            f"failed (first failure: {first}), Stats counts {stats.fingers}"
        )
    return {"fingers": fingers, "seconds": round(seconds, 3),
            "enrol_per_s": round(fingers / seconds, 1), "batch": ENROLL_BATCH,
            "matcher_cpu_us": round(matcher_cpu / fingers * 1e6, 1),
            "client_cpu_us": round(client_cpu / fingers * 1e6, 1),
            "load_1m": round(load, 2)}


def _refused(message: str) -> None:
    raise StatsMismatch(f"the client refused a file it wrote itself: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingers", type=int, required=True,
                        help="one-finger subjects to stream")
    parser.add_argument("--seed", type=int, default=0, help="synthetic gallery seed")
    parser.add_argument("--db", type=Path, default=None,
                        help="new watchlist file to create (default: a temporary one)")
    parser.add_argument("--from-files", action="store_true",
                        help="write the records as .iso files and enrol the folder as "
                             "ink-gateway enroll-templates does")
    parser.add_argument("--per-message", action="store_true",
                        help="one subject per message (EnrollStream), for comparison")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.fingers < 1:
        parser.error("--fingers must be at least 1")
    try:
        result = run(args.fingers, seed=args.seed, db=args.db, from_files=args.from_files,
                     per_message=args.per_message)
    except (StatsMismatch, FileExistsError) as exc:
        print(f"enrol_stream: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['fingers']} fingers in {result['seconds']:.2f} s: "
              f"{result['enrol_per_s']:.0f} fingers/s (matcher batches of {result['batch']}); "
              f"CPU per finger: matcher {result['matcher_cpu_us']:.0f} us, client "
              f"{result['client_cpu_us']:.0f} us; load average {result['load_1m']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
