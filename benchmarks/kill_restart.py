"""Crash run: SIGKILL the matcher during bulk enrolment, restart, count lost acknowledgements.

    python -m benchmarks.kill_restart --cycles 20 [--json]

Each cycle starts ``ink-matcher serve`` on the same watchlist, enrols subjects from a
client thread (EnrollStream calls of a few subjects each, and single Enroll calls; a
subject counts as acknowledged once its call returned it), kills the matcher with
SIGKILL at a random moment, and starts it again. After every restart each subject ever
acknowledged must be enrolled with all its fingers; at the end SQLite's integrity check
and the audit chain must pass. Prints cycles, acknowledged, lost (0 expected), partial
(subjects found with some fingers missing; 0 expected), restart_s (median) and whether
the files are intact.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.matcher_process import start_matcher
from benchmarks.synthetic_templates import plausible_template
from gateway.client import MatcherClient, MatcherError, RetryPolicy, enroll_request
from matcher.audit import AuditLog
from matcher.server import default_audit_path
from protos.ink.v1 import matcher_pb2 as pb

CTX = pb.Context(operator_id="crash-run", device_id="bulk", reason="kill and restart")
FINGERS = (2, 7)


@dataclass
class CrashReport:
    cycles: int = 0
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    integrity: str = ""
    audit_problems: int = 0

    def as_dict(self) -> dict:
        return {
            "cycles": self.cycles,
            "acknowledged": self.acknowledged,
            "lost": len(self.lost),
            "partial": len(self.partial),
            "restart_s": round(statistics.median(self.restart_s), 2) if self.restart_s else None,
            "sqlite_integrity": self.integrity,
            "audit_problems": self.audit_problems,
            "lost_ids": self.lost[:20],
        }


def _enrol_until_killed(address: str, cycle: int, acked: dict[str, int],
                        stop: threading.Event) -> None:
    """Enrol until the matcher goes away; record what each returned call acknowledged."""
    client = MatcherClient(address, insecure=True, deadline_s=30,
                           retry=RetryPolicy(attempts=1))
    k = 0
    try:
        while not stop.is_set():
            k += 1
            ids = [f"C{cycle:03d}-{k:05d}-{i}" for i in range(8)]
            requests = [enroll_request(sid, [plausible_template(zlib.crc32(f"{sid}/{f}".encode()),
                                                                f) for f in FINGERS], CTX)
                        for sid in ids]
            try:
                if k % 4 == 0:
                    client.enroll(ids[0], [plausible_template(k, 2)], CTX)
                    acked[ids[0]] = 1
                else:
                    summary = client.enroll_stream(requests)
                    acked.update(dict.fromkeys(summary.subject_ids, len(FINGERS)))
            except MatcherError:
                return  # killed mid-call: that call acknowledged nothing
    finally:
        client.close()


def run_cycles(folder: Path, cycles: int, *, seed: int = 0, kill_after_s=(0.5, 2.5),
               log=print) -> CrashReport:
    rng = random.Random(seed)
    db = folder / "watchlist.sqlite"
    report = CrashReport()
    acked: dict[str, int] = {}  # subject id -> fingers, once acknowledged
    matcher = start_matcher(db)
    try:
        for cycle in range(cycles):
            stop = threading.Event()
            worker = threading.Thread(target=_enrol_until_killed,
                                      args=(matcher.address, cycle, acked, stop))
            worker.start()
            time.sleep(rng.uniform(*kill_after_s))
            matcher.kill()
            stop.set()
            worker.join(timeout=60)
            t0 = time.perf_counter()
            matcher = start_matcher(db)
            with MatcherClient(matcher.address, insecure=True, deadline_s=30) as client:
                client.wait_until_serving(60)
                report.restart_s.append(time.perf_counter() - t0)
                _check(client, acked, report)
            report.cycles += 1
            log(f"cycle {cycle + 1}/{cycles}: {len(acked)} acknowledged so far, "
                f"{len(report.lost)} lost, {len(report.partial)} partial")
    finally:
        matcher.stop()
    report.acknowledged = len(acked)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as check:
        report.integrity = check.execute("PRAGMA integrity_check").fetchone()[0]
    audit = AuditLog(default_audit_path(db))
    report.audit_problems = len(audit.verify())
    audit.close()
    return report


def _check(client: MatcherClient, acked: dict[str, int], report: CrashReport) -> None:
    known_bad = set(report.lost) | set(report.partial)
    for sid, expected in list(acked.items()):
        if sid in known_bad:
            continue
        try:
            subject = client.get_subject(sid)
        except MatcherError:
            report.lost.append(sid)
            continue
        if len(subject.enrolled) != expected:
            report.partial.append(sid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kill_restart",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ink-crash-") as tmp:
        report = run_cycles(Path(tmp), args.cycles, seed=args.seed,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    result = report.as_dict()
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    ok = not report.lost and not report.partial and report.integrity == "ok" \
        and not report.audit_problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
