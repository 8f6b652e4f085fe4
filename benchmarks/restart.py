"""Restart time: how long a matcher over a large watchlist takes to serve again.

    python -m benchmarks.restart --gallery-size N [--json]     # the identify runner's cache
    python -m benchmarks.restart --db PATH [--json]             # any watchlist file

Starts ``ink-matcher serve`` as a child process on an existing watchlist (the store plus
the snapshot of derived arrays beside it, which the server checks against the store and
uses when they agree) and measures the seconds until it listens, then the first search
through gRPC. Build the watchlist first with ``python -m benchmarks.identify
--gallery-size N``; this runner never enrols, so it measures a restart, not a build.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.identify import cache_dir
from benchmarks.matcher_process import start_matcher
from benchmarks.synthetic_gallery import mate_template
from gateway.client import MatcherClient
from protos.ink.v1 import matcher_pb2 as pb

CTX = pb.Context(operator_id="bench", device_id="restart", reason="restart benchmark")


def measure(db: Path, probe_index: int = 0, seed: int = 0) -> dict:
    """Start a matcher on ``db``, time it to listening and to its first answer; stop it."""
    t0 = time.perf_counter()
    matcher = start_matcher(db, timeout_s=900.0)
    listening = time.perf_counter() - t0
    try:
        with MatcherClient(matcher.address, insecure=True, deadline_s=600.0) as client:
            stats = client.stats()
            t1 = time.perf_counter()
            client.identify([mate_template(seed, probe_index)], CTX)
            first_ms = (time.perf_counter() - t1) * 1e3
        rss = matcher.rss_mb()
    finally:
        matcher.stop()
    return {
        "fingers": int(stats.fingers),
        "seconds_to_listen": round(listening, 1),
        "first_search_ms": round(first_ms, 1),
        "rss_mb": round(rss),
        "snapshot_present": db.with_name(db.name + ".index").is_dir(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart",
                                     description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gallery-size", type=int, help="the identify runner's cached watchlist")
    where.add_argument("--db", type=Path, help="a watchlist file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    db = args.db or cache_dir(args.gallery_size, args.seed) / "watchlist.sqlite"
    if not db.exists():
        raise SystemExit(f"no watchlist at {db}: build it with python -m benchmarks.identify "
                         f"--gallery-size {args.gallery_size or 'N'}")
    result = measure(db, seed=args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:20s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
