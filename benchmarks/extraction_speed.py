"""Extraction speed: CPU time per image of one extractor, on one core.

    python -m benchmarks.extraction_speed --images DIR [DIR ...] [--extractor NAME]
        [--limit N] [--full-frame] [--json]

Each image is decoded once, then the extractor runs on it alone while its thread's CPU
time is measured (``time.thread_time``: what the image cost, not what other processes on
the machine took; the extractors run on one thread, and OpenCV's pool is set to one
thread so that none of the work escapes the count). ``--full-frame`` is the budget's
worst case: each print is cropped to its finger and resized to 500 x 500, so that the
finger fills the whole frame. With ``--json`` one object per folder: ``folder``, ``extractor``,
``images``, ``median_ms``, ``p95_ms``, ``max_ms``, ``wall_median_ms``,
``load_average_1min``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from gateway.extraction import DEFAULT_EXTRACTOR, EXTRACTORS, extract
from gateway.extraction.decode import load_image
from gateway.extraction.detector_extraction import front_stages
from gateway.extraction.params import DEFAULT_PARAMS
from matcher.allocator import keep_freed_heap

SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".wsq", ".pgm", ".jpg")
PPI = 500.0


def images(folder: Path, limit: int, full_frame: bool) -> Iterator[np.ndarray]:
    """Up to ``limit`` images of the folder, spread over it (every k-th by name)."""
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES)
    for f in files[:: max(1, len(files) // limit)][:limit]:
        image = load_image(f.read_bytes(), PPI).image
        if full_frame:
            mask = front_stages(image, PPI, DEFAULT_PARAMS).mask
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if rows.size and cols.size:
                image = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            image = cv2.resize(image, (500, 500), interpolation=cv2.INTER_LINEAR)
        yield image


def measure(folder: Path, extractor: str, limit: int, full_frame: bool) -> dict:
    """The CPU time per image of ``extractor`` over (up to ``limit``) images of a folder."""
    cpu, wall = [], []
    # OpenCV's own worker threads would take work off the thread being timed: one core.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for image in images(folder, limit, full_frame):
            t0, c0 = time.perf_counter(), time.thread_time()
            extract(image, PPI, extractor)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
    finally:
        cv2.setNumThreads(threads)
    if not cpu:
        raise SystemExit(f"no images ({', '.join(SUFFIXES)}) in {folder}")
    ms = np.asarray(cpu) * 1e3
    return {
        "folder": str(folder) + (" (full frame)" if full_frame else ""),
        "extractor": extractor, "images": len(cpu),
        "median_ms": round(float(np.median(ms)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
        "wall_median_ms": round(float(np.median(wall)) * 1e3, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR, choices=EXTRACTORS)
    parser.add_argument("--limit", type=int, default=50, help="images per folder")
    parser.add_argument("--full-frame", action="store_true",
                        help="crop each print to its finger and resize it to 500 x 500")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the gateway's command line does (gateway.cli.main)
    warm = next(images(args.images[0], 1, False))
    extract(warm, PPI, args.extractor)  # sessions and JIT built, not timed
    for folder in args.images:
        result = measure(folder, args.extractor, args.limit, args.full_frame)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{result['folder']}: {result['extractor']} median {result['median_ms']} ms, "
                  f"p95 {result['p95_ms']} ms, max {result['max_ms']} ms of CPU per image "
                  f"({result['images']} images, load {result['load_average_1min']})",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
