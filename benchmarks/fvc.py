"""Accuracy by the FVC protocol: EER, FMR100, FMR1000 and ZeroFMR of the MCC matcher.

Genuine pairs are all pairs of impressions of one finger; impostor pairs are the first
impressions of different fingers, each pair once, or with ``--all-impostors`` every pair
of templates of different fingers. Every unordered pair is scored in both directions and
keeps the higher score (the MCC score is symmetric up to ties, so this changes little).

    python -m benchmarks.fvc --templates ../shared/data/fvc2002-iso/DB1_B --all-impostors
    python -m benchmarks.fvc --templates DIR1 DIR2 --pooled --json
    python -m benchmarks.fvc --images ../shared/data/fvc2000/DB1_B --ppi 500 [--extractor NAME]

File names: FVC ``<finger>_<impression>.<ext>``, Neurotechnology
``<subject>_<finger>_<impression>.<ext>`` (finger key = subject + finger). Templates are
``.iso`` (ISO 19794-2) or ``.ist``/``.ansi`` (ANSI 378); images ``.tif``, ``.png``, ``.bmp``.
``--pooled`` puts the folders' scores together (fingers of different folders are
different fingers, but cross-folder pairs are not compared); without it each folder is
reported and the mean EER is printed as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEMPLATE_SUFFIXES = (".iso", ".ist", ".ansi")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")


def _parse_name(path: Path) -> tuple[str, int] | None:
    """(finger key, impression) from an FVC or Neurotechnology file name."""
    parts = path.stem.split("_")
    if len(parts) < 2 or not parts[-1].isdigit():
        return None
    return "_".join(parts[:-1]), int(parts[-1])


def _list(folder: Path, suffixes: Sequence[str]) -> list[tuple[str, int, Path]]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes:
            parsed = _parse_name(p)
            if parsed is not None:
                out.append((parsed[0], parsed[1], p))
    if not out:
        raise SystemExit(f"no {'/'.join(suffixes)} files named <finger>_<impression> in {folder}")
    return sorted(out, key=lambda t: (t[0], t[1]))


def list_templates(folder: Path) -> list[tuple[str, int, Path]]:
    """(finger key, impression, path) of every template file in the folder, sorted."""
    return _list(folder, TEMPLATE_SUFFIXES)


def list_images(folder: Path) -> list[tuple[str, int, Path]]:
    """(finger key, impression, path) of every image file in the folder, sorted."""
    return _list(folder, IMAGE_SUFFIXES)


def fvc_pairs(
    keys: Sequence[str], impressions: Sequence[int], all_impostors: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor pairs (i < j) as (k, 2) index arrays."""
    n = len(keys)
    first: dict[str, int] = {}
    for i in range(n):
        if keys[i] not in first or impressions[i] < impressions[first[keys[i]]]:
            first[keys[i]] = i
    firsts = set(first.values())
    genuine, impostor = [], []
    for i in range(n):
        for j in range(i + 1, n):
            if keys[i] == keys[j]:
                genuine.append((i, j))
            elif all_impostors or (i in firsts and j in firsts):
                impostor.append((i, j))
    return np.array(genuine, np.int64).reshape(-1, 2), np.array(impostor, np.int64).reshape(-1, 2)


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """EER (FVC interpolation), FMR100, FMR1000 and ZeroFMR, in percent."""
    g = np.sort(np.asarray(genuine, np.float64))
    im = np.sort(np.asarray(impostor, np.float64))
    thresholds = np.unique(np.concatenate([g, im, [np.inf]]))
    fmr = (im.size - np.searchsorted(im, thresholds, side="left")) / im.size
    fnmr = np.searchsorted(g, thresholds, side="left") / g.size
    below = np.flatnonzero(fnmr <= fmr)
    above = np.flatnonzero(fnmr >= fmr)
    t1 = below[-1]
    t2 = above[0]
    if fnmr[t1] + fmr[t1] <= fnmr[t2] + fmr[t2]:
        eer = (fnmr[t1] + fmr[t1]) / 2.0
    else:
        eer = (fnmr[t2] + fmr[t2]) / 2.0

    def best_fnmr(limit: float) -> float:
        ok = fmr <= limit
        return float(fnmr[ok].min())

    return {
        "eer": 100.0 * float(eer),
        "fmr100": 100.0 * best_fnmr(0.01),
        "fmr1000": 100.0 * best_fnmr(0.001),
        "zerofmr": 100.0 * best_fnmr(0.0),
    }


@dataclass
class FolderScores:
    """Genuine and impostor scores of one folder."""

    name: str
    genuine: np.ndarray
    impostor: np.ndarray
    seconds: float


class TemplateCache:
    """Extracted templates on disk, so re-runs of a benchmark skip extraction.

    Keyed by the extractor's fingerprint (name, parameters and the source of the modules
    it runs, so any change invalidates it), the image file's SHA-256 and the ppi. Lives
    under ``$INK_CACHE_DIR`` or ``~/.cache/ink/templates``; ``INK_NO_CACHE=1`` turns it off.
    Only benchmark images pass through here, never a search's probe.
    """

    def __init__(self, extractor: str | None) -> None:
        from gateway.extraction.extractors import extractor_fingerprint

        root = Path(os.environ.get("INK_CACHE_DIR") or Path.home() / ".cache" / "ink")
        self.enabled = os.environ.get("INK_NO_CACHE", "") in ("", "0")
        self.folder = root / "templates" / extractor_fingerprint(extractor)

    def _path(self, data: bytes, ppi: float) -> Path:
        return self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}_{ppi:g}.npz"

    def get(self, data: bytes, ppi: float):
        """The cached template of these image bytes, or None."""
        from matcher.template import make_template

        path = self._path(data, ppi)
        if not self.enabled or not path.exists():
            return None
        try:
            with np.load(path) as z:
                return make_template(
                    z["x"], z["y"], z["angle"], z["kind"], z["quality"],
                    width=int(z["size"][0]), height=int(z["size"][1]),
                    ppi=float(z["ppi"]), image_quality=int(z["image_quality"]),
                )
        except (OSError, ValueError, KeyError):
            return None  # a torn or stale entry: extract again

    def put(self, data: bytes, ppi: float, template) -> None:
        """Store a template; a write failure only costs the next run some time."""
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(data, ppi).with_suffix(".tmp.npz")
            np.savez(tmp, x=template.x, y=template.y, angle=template.angle,
                     kind=template.kind, quality=template.quality,
                     size=np.array([template.width, template.height]),
                     ppi=np.float64(template.ppi),
                     image_quality=np.int64(template.image_quality))
            os.replace(tmp, self._path(data, ppi))
        except OSError:
            pass


def _load_templates(folder: Path, images: bool, ppi: float, extractor: str | None):
    if not images:
        from matcher.formats import decode_template

        items = list_templates(folder)
        return items, [decode_template(p.read_bytes()) for _k, _i, p in items]
    items = list_images(folder)
    cache = TemplateCache(extractor)
    return items, [image_template(p, ppi, extractor, cache) for _k, _i, p in items]


def image_template(path: Path, ppi: float, extractor: str | None,
                   cache: TemplateCache | None = None):
    """The template the gateway extracts from one image file, through the cache."""
    from gateway.extraction import extract
    from gateway.extraction.decode import ImageDecodeError, load_image

    cache = cache or TemplateCache(extractor)
    data = path.read_bytes()
    cached = cache.get(data, ppi)
    if cached is not None:
        return cached
    try:
        # --ppi wins over the file: FVC TIFF headers carry placeholder resolutions.
        image = load_image(data, ppi).image
    except ImageDecodeError as exc:
        raise SystemExit(f"cannot decode image {path}: {exc}") from None
    template = extract(image, ppi, extractor)
    cache.put(data, ppi, template)
    return template


def score_matrix(templates: Sequence, gate: float | None = None, comparator=None
                 ) -> np.ndarray:
    """Calibrated MCC scores of every pair, (n, n): the higher of the two directions."""
    from matcher.mcc import MccComparator

    mcc = comparator or MccComparator()
    encoded = [mcc.encode(t) for t in templates]
    gallery = mcc.stack(encoded)
    matrix = np.empty((len(encoded), len(encoded)), np.float32)
    for i, probe in enumerate(encoded):
        matrix[i] = mcc.calibrate(*mcc.raw_scores(probe, gallery, gate))
    return np.maximum(matrix, matrix.T)


def score_folder(
    folder: Path,
    all_impostors: bool,
    gate: float | None = None,
    images: bool = False,
    ppi: float = 500.0,
    extractor: str | None = None,
    comparator=None,
) -> FolderScores:
    """Score a folder by the FVC protocol with the MCC comparator (calibrated scores)."""
    items, templates = _load_templates(folder, images, ppi, extractor)
    t0 = time.perf_counter()
    sym = score_matrix(templates, gate, comparator)
    keys = [k for k, _i, _p in items]
    imps = [i for _k, i, _p in items]
    gen_pairs, imp_pairs = fvc_pairs(keys, imps, all_impostors)
    return FolderScores(
        name=str(folder),
        genuine=sym[gen_pairs[:, 0], gen_pairs[:, 1]],
        impostor=sym[imp_pairs[:, 0], imp_pairs[:, 1]],
        seconds=time.perf_counter() - t0,
    )


def report(scores: FolderScores) -> dict:
    """The --json object: exactly eer, fmr100, fmr1000, zerofmr, genuine, impostor, seconds."""
    out: dict = error_rates(scores.genuine, scores.impostor)
    out["genuine"] = int(scores.genuine.size)
    out["impostor"] = int(scores.impostor.size)
    out["seconds"] = round(scores.seconds, 3)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.fvc", description=__doc__.split("\n")[0]
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--templates", nargs="+", type=Path, help="folder(s) of ISO/ANSI templates")
    src.add_argument("--images", nargs="+", type=Path, help="folder(s) of fingerprint images")
    ap.add_argument("--ppi", type=float, default=None, help="image resolution (with --images)")
    ap.add_argument("--extractor", default=None, help="gateway extractor name (with --images)")
    ap.add_argument("--all-impostors", action="store_true", help="every cross-finger pair")
    ap.add_argument("--pooled", action="store_true", help="one figure over all folders")
    ap.add_argument("--no-gate", action="store_true", help="LSS-R for every pair (no cheap stage)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.images and args.ppi is None:
        ap.error("--images needs --ppi (FVC TIFF headers carry no real resolution)")
    folders = args.templates or args.images
    gate = 0.0 if args.no_gate else None
    results = [
        score_folder(f, args.all_impostors, gate, bool(args.images), args.ppi or 500.0,
                     args.extractor)
        for f in folders
    ]
    if args.pooled or len(results) == 1:
        pooled = FolderScores(
            name="pooled",
            genuine=np.concatenate([r.genuine for r in results]),
            impostor=np.concatenate([r.impostor for r in results]),
            seconds=sum(r.seconds for r in results),
        )
        final = report(pooled)
        if args.json:
            print(json.dumps(final))
            return 0
        if len(results) > 1:
            for r in results:
                print(f"{r.name}: {report(r)}")
        print(f"{pooled.name if len(results) > 1 else results[0].name}: {final}")
        return 0
    reports = [report(r) for r in results]
    if args.json:
        print(json.dumps(reports))
        return 0
    for r, rep in zip(results, reports, strict=True):
        print(f"{r.name}: {rep}")
    print(f"mean EER {np.mean([r['eer'] for r in reports]):.3f} %", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
