"""Developer command line: extract minutiae from image files, time it, draw overlays.

    python -m gateway.extraction IMAGE... [--ppi N] [--extractor NAME] [--repeat K]
                                 [--overlay-dir DIR]

Prints one line per image (minutiae, raw candidates, image quality, median CPU time of
this process over ``--repeat`` runs, with the wall time beside it; run with
OMP_NUM_THREADS=1 so that every library stays on one core, as the budget is stated)
and, with ``--overlay-dir``, writes the overlay picture of each image there (the mask
tinted, endings red, bifurcations blue, direction ticks).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from gateway.extraction import DEFAULT_EXTRACTOR, EXTRACTORS, extract
from gateway.extraction.decode import ImageDecodeError, load_image
from gateway.extraction.overlay import draw_overlay
from gateway.extraction.pipeline import run_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(prog="python -m gateway.extraction", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--ppi", type=float, default=None, help="resolution when the file has none")
    ap.add_argument("--extractor", default=DEFAULT_EXTRACTOR, choices=EXTRACTORS)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per image")
    ap.add_argument("--overlay-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # time one core, as the gateway budget is stated
    times: list[float] = []  # CPU seconds: other processes on the machine do not count
    for path in args.images:
        try:
            loaded = load_image(path, args.ppi)
        except ImageDecodeError as exc:
            print(f"{path}: {exc}")
            return 2
        template = extract(loaded.image, loaded.ppi, args.extractor)  # warm-up (JIT, caches)
        runs, walls = [], []
        for _ in range(max(1, args.repeat)):
            c0, t0 = time.process_time(), time.perf_counter()
            template = extract(loaded.image, loaded.ppi, args.extractor)
            runs.append(time.process_time() - c0)
            walls.append(time.perf_counter() - t0)
        times.append(statistics.median(runs))
        raw = template.metadata.get("raw_minutiae", "?")
        print(f"{path.name}: {len(template)} minutiae (raw {raw}), quality "
              f"{template.image_quality}, {loaded.ppi:g} ppi ({loaded.ppi_source}), "
              f"{times[-1] * 1000:.0f} ms CPU ({statistics.median(walls) * 1000:.0f} ms wall)")
        if args.overlay_dir is not None:
            _, stages = run_pipeline(loaded.image, loaded.ppi, debug=True)
            args.overlay_dir.mkdir(parents=True, exist_ok=True)
            picture = draw_overlay(loaded.image, template, stages.mask_input_frame)
            cv2.imwrite(str(args.overlay_dir / f"{path.stem}_{args.extractor}.png"), picture)
    if len(times) > 1:
        print(f"median {statistics.median(times) * 1000:.0f} ms CPU per image over {len(times)}"
              f" (max {max(times) * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
