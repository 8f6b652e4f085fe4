"""Bulk enrolment over gRPC: fingers per second through EnrollStream, end to end.

    python -m benchmarks.enrol_stream --fingers N [--json] [--db PATH] [--seed S]

Starts a real matcher (:func:`matcher.server.start_server`, plain text on 127.0.0.1, a
fresh SQLite watchlist in a temporary folder or at ``--db``) and streams N one-finger
subjects to it through :meth:`gateway.client.MatcherClient.enroll_stream`, as
``ink-gateway enroll-templates`` does: ISO 19794-2 records
(:func:`benchmarks.synthetic_gallery.gallery_template` encoded by
:func:`matcher.formats.encode_iso`). The records and the request messages are made
before the clock starts (synthesis in a process pool), so only the stream is timed:
the client sending, the matcher decoding, building cylinders, writing SQLite with
``synchronous=FULL``, auditing each batch and updating the index. Client and matcher
share this process and its cores, as on a one-box deployment. The client sends the
stream as consecutive EnrollStream calls of a few thousand subjects, each small enough
for the matcher's one summary message (:data:`gateway.client.SUMMARY_BUDGET_BYTES`).
Afterwards the matcher's Stats must count N fingers, or the run fails.

With ``--json`` it prints exactly ``{"fingers", "seconds", "enrol_per_s", "batch"}``
(``batch`` is the matcher's durable batch, :data:`matcher.service.ENROLL_BATCH`).
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

from benchmarks.synthetic_gallery import gallery_template
from gateway.client import MatcherClient
from matcher.formats import encode_iso
from matcher.server import start_server
from matcher.service import ENROLL_BATCH
from protos.ink.v1 import matcher_pb2 as pb

SYNTHESIS_JOB = 2048  # records per process-pool job
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


def run(fingers: int, *, seed: int = 0, db: Path | None = None) -> dict:
    """Stream ``fingers`` subjects into a fresh matcher; the figures of the run."""
    if db is not None and db.exists():
        raise FileExistsError(f"{db} exists: --db names a new watchlist file")
    requests = enroll_requests(synthesise(fingers, seed))
    with tempfile.TemporaryDirectory(prefix="ink-enrol-stream-") as tmp:
        server = start_server(db or Path(tmp) / "watchlist.sqlite", "127.0.0.1:0",
                              insecure=True)
        try:
            with MatcherClient(f"127.0.0.1:{server.port}", insecure=True,
                               deadline_s=60.0) as client:
                client.wait_until_serving()
                start = time.perf_counter()
                summary = client.enroll_stream(requests)
                seconds = time.perf_counter() - start
                stats = client.stats()
        finally:
            server.stop(grace=None)
    if summary.failed or summary.enrolled != fingers or stats.fingers != fingers:
        first = summary.failures[0].message if summary.failures else "none"
        raise StatsMismatch(
            f"streamed {fingers} fingers: {summary.enrolled} acknowledged, {summary.failed} "
            f"failed (first failure: {first}), Stats counts {stats.fingers}"
        )
    return {"fingers": fingers, "seconds": round(seconds, 3),
            "enrol_per_s": round(fingers / seconds, 1), "batch": ENROLL_BATCH}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingers", type=int, required=True,
                        help="one-finger subjects to stream")
    parser.add_argument("--seed", type=int, default=0, help="synthetic gallery seed")
    parser.add_argument("--db", type=Path, default=None,
                        help="new watchlist file to create (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.fingers < 1:
        parser.error("--fingers must be at least 1")
    try:
        result = run(args.fingers, seed=args.seed, db=args.db)
    except (StatsMismatch, FileExistsError) as exc:
        print(f"enrol_stream: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['fingers']} fingers in {result['seconds']:.2f} s: "
              f"{result['enrol_per_s']:.0f} fingers/s (matcher batches of {result['batch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
