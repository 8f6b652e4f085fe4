"""The officer's loop: place a finger, capture, check quality, extract, search, answer.

Each step tells the person what is happening through a ``say`` callback (the CLI prints
it), asks for a re-scan when the image is too poor to search, and turns every device or
matcher failure into a sentence. The probe exists only in memory, for one search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.client import MatcherClient, MatcherError
from gateway.devices.base import Device, DeviceError, Scan
from gateway.extraction import extract
from gateway.extraction.quality import image_quality
from matcher.template import Finger, Template
from matcher.watchlist import MIN_PROBE_MINUTIAE
from protos.ink.v1 import matcher_pb2 as pb

Say = Callable[[str], None]


class CaptureFailed(Exception):
    """No usable scan after the allowed attempts; ``officer_message`` says why."""

    def __init__(self, officer_message: str) -> None:
        super().__init__(officer_message)
        self.officer_message = officer_message


@dataclass(frozen=True)
class CaptureSettings:
    timeout_s: float = 15.0  # to wait for a finger
    attempts: int = 3  # scans per finger before giving up
    min_quality: int | None = None  # None: the quality module's default gate
    extractor: str | None = None


@dataclass(frozen=True)
class CapturedFinger:
    template: Template
    quality: int
    upload_seconds: float
    extract_seconds: float
    device: str


def capture_finger(
    device: Device,
    finger: Finger,
    settings: CaptureSettings,
    say: Say,
    progress: Callable[[int, int], None] | None = None,
) -> CapturedFinger:
    """One finger's template, re-scanning when the device or the image quality asks for it."""
    from gateway.extraction.quality import QUALITY_GATE_THRESHOLD

    gate = QUALITY_GATE_THRESHOLD if settings.min_quality is None else settings.min_quality
    problem = ""
    for attempt in range(1, settings.attempts + 1):
        say(f"Place the {finger.label} on the scanner"
            + (f" (attempt {attempt} of {settings.attempts})" if attempt > 1 else ""))
        try:
            scan: Scan = device.capture(timeout=settings.timeout_s, progress=progress)
        except DeviceError as exc:
            problem = exc.officer_message
            say(problem)
            if not exc.retryable:
                raise CaptureFailed(problem) from None
            continue
        quality = image_quality(scan.image, scan.ppi)
        if quality < gate:
            problem = (f"Scan quality {quality} is below {gate}: lift the finger, wipe it and "
                       "the sensor, and place it flat again")
            say(problem)
            continue
        t0 = time.perf_counter()
        template = extract(scan.image, scan.ppi, settings.extractor).with_finger(int(finger))
        extract_s = time.perf_counter() - t0
        if len(template) < MIN_PROBE_MINUTIAE:
            problem = (f"Only {len(template)} minutiae found: place more of the finger on the "
                       "sensor, flat and centred")
            say(problem)
            continue
        return CapturedFinger(template, quality, scan.upload_seconds, extract_s,
                              scan.device.url)
    raise CaptureFailed(f"No usable scan after {settings.attempts} attempts. {problem}")


@dataclass(frozen=True)
class SearchOutcome:
    response: pb.IdentifyResponse
    fingers: tuple[CapturedFinger, ...]
    seconds: float  # from the first placement prompt to the answer


def identify_person(
    device: Device,
    client: MatcherClient,
    fingers: Sequence[Finger],
    context: pb.Context,
    settings: CaptureSettings,
    say: Say,
    progress_factory: Callable[[str], Callable[[int, int], None]] | None = None,
) -> SearchOutcome:
    """Capture one or two fingers of one person and search the watchlist with them."""
    start = time.perf_counter()
    captured = []
    for finger in fingers:
        progress = progress_factory(f"Reading {finger.label}") if progress_factory else None
        captured.append(capture_finger(device, finger, settings, say, progress))
    say("Searching the watchlist...")
    response = client.identify([c.template for c in captured], context)
    return SearchOutcome(response, tuple(captured), time.perf_counter() - start)


def describe_identify(outcome: SearchOutcome) -> str:
    """The answer as an officer reads it."""
    r = outcome.response
    upload = sum(c.upload_seconds for c in outcome.fingers)
    timing = (f"in {outcome.seconds:.1f} s (scan upload {upload:.1f} s, "
              f"matching {r.elapsed_ms:.0f} ms)")
    if r.decision == pb.DECISION_HIT:
        top = r.candidates[0]
        finger = Finger(top.matched_finger).label
        return (f"HIT: {top.subject_id} ({finger}, score {top.score:.1f}, needed "
                f"{r.threshold:.1f}) {timing}")
    return (f"NO HIT: nobody on the watchlist matches ({r.gallery_subjects} subjects, "
            f"{r.gallery_fingers} fingers searched) {timing}")


def identify_json(outcome: SearchOutcome) -> dict:
    r = outcome.response
    return {
        "decision": "HIT" if r.decision == pb.DECISION_HIT else "NO_HIT",
        "subject_id": r.candidates[0].subject_id if r.decision == pb.DECISION_HIT else None,
        "matched_finger": int(r.candidates[0].matched_finger)
        if r.decision == pb.DECISION_HIT else None,
        "score": r.candidates[0].score if r.candidates else None,
        "threshold": r.threshold,
        "expected_fpir": r.expected_fpir,
        "candidates": [
            {"subject_id": c.subject_id, "score": round(c.score, 3),
             "matched_finger": int(c.matched_finger)}
            for c in r.candidates
        ],
        "gallery_subjects": r.gallery_subjects,
        "gallery_fingers": r.gallery_fingers,
        "seconds": round(outcome.seconds, 3),
        "upload_seconds": round(sum(c.upload_seconds for c in outcome.fingers), 3),
        "extract_seconds": round(sum(c.extract_seconds for c in outcome.fingers), 3),
        "matcher_ms": round(r.elapsed_ms, 2),
        "search_id": r.search_id,
    }


__all__ = [
    "CaptureFailed", "CaptureSettings", "CapturedFinger", "MatcherError", "SearchOutcome",
    "capture_finger", "describe_identify", "identify_json", "identify_person",
]
