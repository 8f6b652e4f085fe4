"""Bulk enrolment from image files named ``<subject>_<finger>_<impression>.<ext>``.

Custody systems and the demo hand over folders of images; each subject's first
impression of each finger is extracted and the subjects go to the matcher in one
EnrollStream, which acknowledges each only once it is durable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from gateway.client import MatcherClient, enroll_request
from gateway.extraction import extract
from gateway.extraction.decode import load_image
from protos.ink.v1 import matcher_pb2 as pb

IMAGE_NAME = re.compile(r"^(?P<subject>.+)_(?P<finger>\d+)_(?P<impression>\d+)$")
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".bmp", ".wsq", ".jpg", ".jpeg"}


def image_subjects(folder: Path) -> dict[str, dict[int, Path]]:
    """Image files grouped by subject and finger: the first impression of each finger."""
    subjects: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        m = IMAGE_NAME.match(path.stem)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not m:
            continue
        subjects.setdefault(m["subject"], {}).setdefault(int(m["finger"]), path)
    return subjects


def enrol_images(
    client: MatcherClient,
    folder: Path,
    context: pb.Context,
    *,
    ppi: float = 500.0,
    extractor: str | None = None,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] = print,
) -> pb.EnrollSummary:
    """Extract every subject's fingers and enrol them in one stream."""
    subjects = image_subjects(folder)
    if not subjects:
        raise FileNotFoundError(
            f"no images named <subject>_<finger>_<impression> in {folder}"
        )
    total = sum(len(f) for f in subjects.values())
    done = 0
    requests = []
    for subject_id, fingers in subjects.items():
        templates = []
        for finger, path in sorted(fingers.items()):
            try:
                image, image_ppi = load_image(path, ppi)
                templates.append(extract(image, image_ppi, extractor).with_finger(finger))
            except (ValueError, OSError) as exc:  # TemplateError and decode errors included
                warn(f"skipping {path.name}: {exc}")
            done += 1
            if progress:
                progress(done, total)
        if templates:
            requests.append(enroll_request(subject_id, templates, context, replace=replace))
    return client.enroll_stream(requests)
