"""1:N identification at scale: latency, rank-1 against exhaustive, memory, enrolment rate.

    python -m benchmarks.identify --gallery-size N [--probes P] [--json]

Builds (or reuses, from ``~/.cache/ink/identify-<N>-<seed>/``; ``INK_CACHE_DIR``
overrides) a watchlist of N synthetic fingers (:mod:`benchmarks.synthetic_gallery`),
one finger per subject, enrolled through :meth:`Watchlist.enroll_batches` in batches of
``ENROLL_BATCH`` as EnrollStream does, so ``enrol_per_s`` is the real path (ISO round trip,
cylinders, SQLite with ``synchronous=FULL``, index update; the next batch prepared while
one is written). A reused gallery reports the rate measured
when it was built. Then P probes of unknown finger position, half mates of gallery
fingers and half strangers, are searched; ``rank1_hit_rate`` is over the mates, and
``exhaustive_rank1_hit_rate`` the same probes scored against every finger.
Searches go through the LSH candidate stage (:mod:`matcher.prefilter`) unless
``--exhaustive``; ``penetration`` is the share of the gallery it passed to the comparator,
and
``bytes_per_finger`` every array the index holds divided by the fingers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.synthetic_gallery import (
    VERSION,
    gallery_template,
    mate_template,
    stranger_template,
)
from matcher.allocator import keep_freed_heap
from matcher.enrol_stream import ENROLL_BATCH as BATCH
from matcher.formats import decode_template
from matcher.index import SEGMENT_ROWS, FingerIndex
from matcher.mcc import MccComparator
from matcher.prefilter import LshPrefilter
from matcher.store import SubjectRecord, WatchlistStore
from matcher.watchlist import Watchlist

SYNTHESIS_CHUNK = 128  # batches synthesised ahead of each timed stretch of enrolment


def cache_dir(n: int, seed: int) -> Path:
    root = Path(os.environ.get("INK_CACHE_DIR", Path.home() / ".cache" / "ink"))
    return root / f"identify-v{VERSION}-{n}-{seed}"


def _synthetic_batch(job: tuple[int, int, int]) -> list[SubjectRecord]:
    seed, start, stop = job
    return [SubjectRecord(f"G-{i:08d}", (gallery_template(seed, i),)) for i in range(start, stop)]


def open_gallery(
    n: int, seed: int, log=print, prefilter: LshPrefilter | None = None
) -> tuple[Watchlist, float]:
    """The cached watchlist of n synthetic fingers (built when missing) and its enrol rate."""
    folder = cache_dir(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "build.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    watchlist = Watchlist(WatchlistStore(folder / "watchlist.sqlite"), MccComparator(),
                          prefilter=prefilter)
    have = watchlist.counts()[1]
    if meta and have == n:
        return watchlist, float(meta["enrol_per_s"])
    spent = 0.0
    starts = list(range(have, n, BATCH))
    # synthesis runs first on every core, a chunk of batches at a time; only the
    # enrolment is timed, and it has the machine to itself
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for chunk in range(0, len(starts), SYNTHESIS_CHUNK):
            jobs = [(seed, s, min(n, s + BATCH)) for s in starts[chunk:chunk + SYNTHESIS_CHUNK]]
            batches = list(pool.map(_synthetic_batch, jobs))
            if chunk == 0:
                # as the server does at start: kernels loaded before the first enrolment
                watchlist.prepare(batches[0][:2])
            t0 = time.perf_counter()
            for outcome in watchlist.enroll_batches((b, False) for b in batches):
                if outcome.error is not None:
                    raise outcome.error
            spent += time.perf_counter() - t0
            log(f"enrolled {jobs[-1][2]}/{n}", file=sys.stderr)
    rate = (n - have) / max(spent, 1e-9)
    meta_path.write_text(json.dumps({"enrol_per_s": rate}))
    watchlist.save_snapshot()
    return watchlist, rate


def run(
    n: int, probes: int, seed: int = 0, log=print, share: float | None = None,
    exhaustive: bool = False,
) -> dict:
    """The figures of one run: through the LSH candidate stage (keeping ``share`` of the
    gallery, default its own), or scoring every finger when ``exhaustive``."""
    prefilter = None if exhaustive else (
        LshPrefilter() if share is None else LshPrefilter(share=share)
    )
    watchlist, enrol_rate = open_gallery(n, seed, log, prefilter)
    rng = np.random.default_rng(seed + 7)
    mates = rng.choice(n, size=(probes + 1) // 2, replace=False)
    plan = [(f"G-{int(i):08d}", mate_template(seed, int(i))) for i in mates]
    plan += [(None, stranger_template(seed, k)) for k in range(probes // 2)]
    comparator = watchlist.comparator
    exhaustive = FingerIndex(comparator)  # no candidate stage: every finger scored
    watchlist.identify([plan[-1][1]])  # compiles what the first search would (not timed)
    latencies, hits, exhaustive_hits, scored = [], 0, 0, 0
    for truth, probe in plan:
        t0 = time.perf_counter()
        result = watchlist.identify([probe], max_candidates=10)
        latencies.append((time.perf_counter() - t0) * 1e3)
        view = watchlist.index.view
        rs = watchlist.index.search(comparator.encode(probe), view=view)
        scored += rs.scored
        if truth is None:
            continue
        hits += bool(result.candidates) and result.candidates[0].subject_id == truth
        if watchlist.index.prefilter is None:
            full = rs
        else:
            full = exhaustive.search(comparator.encode(probe), view=view)
        top = int(full.keys[np.argmax(full.scores)])
        exhaustive_hits += watchlist._subject_of.get(top) == truth
    view = watchlist.index.view
    # the subject table: id strings and dict slots, estimated from Python's sizes
    table = sum(sys.getsizeof(s) + 3 * 100 for s in list(watchlist._key_of)[:1000])
    table_per_subject = table / max(1, min(1000, len(watchlist._key_of)))
    subjects, fingers = watchlist.counts()
    out = {
        "gallery_size": fingers,
        "probes": len(plan),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "rank1_hit_rate": round(hits / max(1, len(mates)), 4),
        "exhaustive_rank1_hit_rate": round(exhaustive_hits / max(1, len(mates)), 4),
        "penetration": round(scored / max(1, len(plan) * fingers), 4),
        "bytes_per_finger": round((view.nbytes() + table_per_subject * subjects) / fingers),
        "enrol_per_s": round(enrol_rate, 1),
    }
    watchlist.close()
    return out


def data_dir() -> Path:
    env = os.environ.get("INK_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _impostor_scores(comparator: MccComparator, encoded: list, owners: list) -> np.ndarray:
    """Every cross-finger pair once (probe = the earlier template)."""
    gallery = comparator.stack(encoded)
    out = []
    for i, e in enumerate(encoded):
        s = comparator.scores(e, gallery)
        out.extend(float(s[j]) for j in range(i + 1, len(encoded)) if owners[j] != owners[i])
    return np.asarray(out)


def impostor_comparison(synthetic: int = 240, seed: int = 0) -> dict:
    """Impostor score percentiles: FVC2002 DB1-3 ISO templates against synthetic fingers."""
    comparator = MccComparator()
    encoded, owners = [], []
    for db in ("DB1_B", "DB2_B", "DB3_B"):
        for f in sorted((data_dir() / "fvc2002-iso" / db).glob("*.iso")):
            encoded.append(comparator.encode(decode_template(f.read_bytes())))
            owners.append(f"{db}/{f.stem.split('_')[0]}")
    if not encoded:
        raise SystemExit(f"no FVC2002 ISO templates under {data_dir()}")
    real = np.concatenate([
        _impostor_scores(comparator, [e for e, o in zip(encoded, owners, strict=True)
                                      if o.startswith(db)],
                         [o for o in owners if o.startswith(db)])
        for db in ("DB1_B", "DB2_B", "DB3_B")
    ])
    syn = _impostor_scores(
        comparator, [comparator.encode(gallery_template(seed, i)) for i in range(synthetic)],
        list(range(synthetic)))
    return {
        "real_pairs": int(real.size), "real_p99": round(float(np.percentile(real, 99)), 2),
        "real_p99_9": round(float(np.percentile(real, 99.9)), 2),
        "synthetic_pairs": int(syn.size), "synthetic_p99": round(float(np.percentile(syn, 99)), 2),
        "synthetic_p99_9": round(float(np.percentile(syn, 99.9)), 2),
    }


def _gallery_templates(job: tuple[int, int, int]) -> list:
    seed, start, stop = job
    return [gallery_template(seed, i) for i in range(start, stop)]


def real_mates(
    n: int, seed: int = 0, log=print, prefilter: LshPrefilter | None = None
) -> dict:
    """The candidate stage on real prints: FVC2002 DB1-DB3 fingers hidden in a gallery of
    n synthetic fingers.

    Impression 1 of each of the 30 fingers is placed at random among the n synthetic
    fingers of an in-memory index (segments as a watchlist has them), and impressions
    2-8 are searched as probes of unknown finger position: ``candidate_recall`` is the
    share of probes whose finger is among the candidates the LSH stage passes on, and
    the rank-1 hit rates are with the candidate stage and with every finger scored.
    """
    root = data_dir() / "fvc2002-iso"
    files = [f for db in ("DB1_B", "DB2_B", "DB3_B") for f in sorted((root / db).glob("*.iso"))]
    if not files:
        raise SystemExit(f"no FVC2002 ISO templates under {root}")
    enrolled, probes = {}, []
    for f in files:
        finger, impression = f.stem.split("_")
        name = f"{f.parent.name}/{finger}"
        template = decode_template(f.read_bytes())
        if impression == "1":
            enrolled[name] = template
        else:
            probes.append((name, template))
    names = sorted(enrolled)
    with ProcessPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1)) as pool:
        jobs = [(seed, s, min(n, s + 4096)) for s in range(0, n, 4096)]
        templates = [t for part in pool.map(_gallery_templates, jobs) for t in part]
    places = np.sort(np.random.default_rng(seed + 11).choice(n + len(names), len(names),
                                                             replace=False))
    for place, name in zip(places, names, strict=True):
        templates.insert(int(place), enrolled[name])
    key_of = {name: int(place) for place, name in zip(places, names, strict=True)}
    comparator = MccComparator()
    index = FingerIndex(comparator, prefilter or LshPrefilter())
    for start in range(0, len(templates), SEGMENT_ROWS):
        part = templates[start:start + SEGMENT_ROWS]
        index.add(range(start, start + len(part)), [0] * len(part), comparator.encode_many(part))
        log(f"indexed {start + len(part)}/{len(templates)}", file=sys.stderr)
    exhaustive = FingerIndex(comparator)
    in_candidates = hits = exhaustive_hits = scored = 0
    for name, template in probes:
        probe = comparator.encode(template)
        view = index.view
        rs = index.search(probe, view=view)
        scored += rs.scored
        truth = key_of[name]
        in_candidates += bool(np.any(rs.keys == truth))
        hits += int(rs.keys[np.argmax(rs.scores)]) == truth
        full = exhaustive.search(probe, view=view)
        exhaustive_hits += int(full.keys[np.argmax(full.scores)]) == truth
    return {
        "gallery_size": len(index), "real_fingers": len(names), "probes": len(probes),
        "penetration": round(scored / (len(probes) * len(index)), 4),
        "candidate_recall": round(in_candidates / len(probes), 4),
        "rank1_hit_rate": round(hits / len(probes), 4),
        "exhaustive_rank1_hit_rate": round(exhaustive_hits / len(probes), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery-size", type=int)
    parser.add_argument("--impostors", action="store_true",
                        help="compare synthetic and FVC2002 impostor scores instead")
    parser.add_argument("--real-mates", action="store_true",
                        help="hide FVC2002 DB1-3 fingers in the gallery and search their "
                             "other impressions instead (candidate recall on real prints)")
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lsh-share", type=float, default=None,
                        help="share of the gallery the LSH candidate stage keeps "
                             f"(default {LshPrefilter().share})")
    parser.add_argument("--exhaustive", action="store_true",
                        help="no candidate stage: every finger is scored")
    args = parser.parse_args(argv)
    keep_freed_heap()  # as ink-matcher serve does
    if args.impostors:
        print(json.dumps(impostor_comparison(seed=args.seed)))
        return 0
    if args.gallery_size is None:
        parser.error("--gallery-size is required")
    if args.real_mates:
        print(json.dumps(real_mates(args.gallery_size, args.seed)))
        return 0
    result = run(args.gallery_size, args.probes, args.seed, share=args.lsh_share,
                 exhaustive=args.exhaustive)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
