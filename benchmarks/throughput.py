"""Raw 1:N speed of the MCC matcher: one probe at a time against a large gallery.

The gallery repeats the folder's templates until it holds ``--gallery-size`` entries; the
probe is the folder's template whose minutia count is closest to ``--probe-minutiae``
(35 by default, a typical plain impression). Speed depends strongly on the probe's size,
so the report states it, and on the share of candidates that pass the cheap stage: a
gallery repeating one folder holds the probe's own mates (7 of 80 templates for FVC
sets), which all go on to full LSS-R, far more than a real watchlist would.

    python -m benchmarks.throughput --templates ../shared/data/fvc2002-iso/DB1_B \\
        --gallery-size 20480 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--templates", type=Path, required=True, help="folder of ISO/ANSI templates")
    ap.add_argument("--gallery-size", type=int, default=20480)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-minutiae", type=int, default=35, help="pick the probe by size")
    ap.add_argument("--repeats", type=int, default=5, help="searches timed; the median counts")
    ap.add_argument("--no-gate", action="store_true", help="LSS-R for every candidate")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    from benchmarks.fvc import list_templates
    from matcher.formats import decode_template
    from matcher.mcc import MccComparator

    mcc = MccComparator(threads=args.threads)
    templates = [decode_template(p.read_bytes()) for _k, _i, p in list_templates(args.templates)]
    encoded = [mcc.encode(t) for t in templates]
    sizes = np.array([len(t) for t in templates])
    probe_index = int(np.argmin(np.abs(sizes - args.probe_minutiae)))
    rows = [encoded[i % len(encoded)] for i in range(args.gallery_size)]
    gallery = mcc.stack(rows)
    probe = encoded[probe_index]
    gate = 0.0 if args.no_gate else None
    mcc.raw_scores(probe, gallery, gate)  # warm-up: JIT cache load, page faults
    times = []
    cpu = []
    for _ in range(max(1, args.repeats)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        _cheap, lssr = mcc.raw_scores(probe, gallery, gate)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    seconds = float(np.median(times))
    result = {
        "comparisons_per_s": round(args.gallery_size / seconds),
        "threads": mcc.threads,
        "gallery_size": args.gallery_size,
        "mean_minutiae": round(float(np.mean(sizes[np.arange(len(rows)) % len(sizes)])), 2),
        "probe_minutiae": int(sizes[probe_index]),
        "probe_cylinders": len(probe),
        "mean_cylinders": round(float(np.mean(np.diff(gallery.offsets))), 2),
        "share_full_lssr": round(float(np.mean(lssr >= 0)), 4),
        # on a busy machine wall time overstates the cost: CPU seconds of this process
        "cpu_seconds_per_search": round(float(np.median(cpu)), 4),
        # comparisons per second of CPU time summed over threads, i.e. per busy core: the
        # figure to compare across runs when other work shares the machine
        "comparisons_per_cpu_s": round(args.gallery_size / max(float(np.median(cpu)), 1e-9)),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
