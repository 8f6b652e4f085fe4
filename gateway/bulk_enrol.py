"""Bulk enrolment from files named ``<subject>_<finger>_<impression>.<ext>``.

Custody systems and the demo hand over folders of images; another AFIS being migrated
hands over folders of ISO/IEC 19794-2 (``.iso``) or ANSI INCITS 378 (``.ist``) minutiae
templates, perhaps a million of them. Each subject's first impression of each finger is
enrolled, and the subjects go to the matcher as one bulk stream, many subjects per message
(:meth:`gateway.client.MatcherClient.enroll_stream`), which acknowledges each only once it
is durable. Template folders are read lazily: only the file names are held.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gateway.client import MatcherClient, enroll_request
from gateway.extraction import extract
from gateway.extraction.decode import load_image
from matcher.formats import decode_templates
from matcher.messages import template_to_record_message
from matcher.template import Finger, TemplateError
from protos.ink.v1 import matcher_pb2 as pb

IMAGE_NAME = re.compile(r"^(?P<subject>.+)_(?P<finger>\d+)_(?P<impression>\d+)$")
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".bmp", ".wsq", ".jpg", ".jpeg"}
TEMPLATE_SUFFIXES = (".iso", ".ist")  # ISO/IEC 19794-2, ANSI INCITS 378
TEMPLATE_NAMES = "<subject>_<finger>_<impression>.iso (ISO 19794-2) or .ist (ANSI 378)"
# Far above any minutiae record (a view of 255 minutiae is ~1.5 kB), far below the
# matcher's 1 MiB message: a bigger file is not a template.
MAX_RECORD_BYTES = 512 * 1024
TEMPLATE_CHUNK = 256  # fingers read and decoded together


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


def _sorting_number(digits: str) -> str:
    """A number's digits as text that sorts like the number (its length first)."""
    digits = digits.lstrip("0") or "0"
    return f"{len(digits):03d}{digits}"


class TemplateFolder:
    """The template files of a folder to enrol: the first impression of each finger.

    Only names are held, as one sortable string per chosen file (about 100 bytes), so a
    folder of a million files is listed in a second or two and ~100 MB; the records are
    read while they are sent. Names that look like templates but do not follow
    :data:`TEMPLATE_NAMES`, or name a finger outside 0..10, are reported to ``warn``.
    """

    def __init__(self, folder: Path, warn: Callable[[str], None] = print) -> None:
        self.folder = folder
        keys = []
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.lower().endswith(TEMPLATE_SUFFIXES) or not entry.is_file():
                    continue
                m = IMAGE_NAME.match(name[:-4])
                if not m:
                    warn(f"skipping {name}: the name is not {TEMPLATE_NAMES}")
                    continue
                finger = int(m["finger"])
                if finger > 10:
                    warn(f"skipping {name}: finger {finger} is not an FGP code 0..10")
                    continue
                # NUL sorts first and no file name holds it, so each subject's files are
                # contiguous, by finger, then by impression number.
                keys.append(f"{m['subject']}\0{finger:02d}\0"
                            f"{_sorting_number(m['impression'])}\0{name}")
        keys.sort()
        self._keys: list[str] = []
        last = None
        for key in keys:
            subject, finger, _ = key.split("\0", 2)
            if (subject, finger) != last:
                self._keys.append(key)
                last = (subject, finger)

    def __len__(self) -> int:
        """The number of fingers to enrol."""
        return len(self._keys)

    def subjects(self) -> Iterator[tuple[str, list[tuple[Finger, Path]]]]:
        """Each subject with its fingers' files, in subject order."""
        subject, files = None, []
        for key in self._keys:
            sid, finger, _, name = key.split("\0", 3)
            if sid != subject:
                if files:
                    yield subject, files
                subject, files = sid, []
            files.append((Finger(int(finger)), self.folder / name))
        if files:
            yield subject, files


def template_message(path: Path, finger: Finger) -> pb.Template:
    """The record of a template file for an enrolment, checked as the matcher will.

    The finger position comes from the file name; a record holding several views gives
    the view of that finger (or its first view, for finger 0), and one labelled
    "unknown finger" takes the name's. A record of other fingers only is refused: the
    name or the record is wrong, and enrolling it under either finger could be a
    mistake. Raises :class:`TemplateError` or :class:`OSError` with the reason.
    """
    (message,) = template_messages([(finger, path)])
    if isinstance(message, Exception):
        raise message
    return message


def template_messages(
    files: Sequence[tuple[Finger, Path]],
) -> list[pb.Template | TemplateError | OSError]:
    """:func:`template_message` of each ``(finger, path)``, or the error that refuses it;
    the records are decoded together (:func:`matcher.formats.decode_templates`), as a
    folder of a million files wants."""
    out: list[pb.Template | TemplateError | OSError | None] = [None] * len(files)
    read: list[tuple[int, bytes]] = []
    for k, (_, path) in enumerate(files):
        try:
            read.append((k, _record_of(path)))
        except (TemplateError, OSError) as exc:
            out[k] = exc
    decoded = decode_templates([data for _, data in read],
                               [int(files[k][0]) or None for k, _ in read])
    for (k, data), template in zip(read, decoded, strict=True):
        if isinstance(template, TemplateError):
            out[k] = template
        elif template.metadata.get("views", 1) > 1:
            # Send only the view enrolled: ten fingers of multi-view records could
            # otherwise outgrow the matcher's message size and fail the whole stream.
            out[k] = template_to_record_message(template)
        else:
            out[k] = pb.Template(finger=int(files[k][0]), record=data)
    return out  # type: ignore[return-value]


def _record_of(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise TemplateError(f"the file is larger than {MAX_RECORD_BYTES // 1024} kB, too "
                            "large for a minutiae record")
    return data


def _chunks(subjects: Iterator[tuple[str, list[tuple[Finger, Path]]]],
            fingers: int) -> Iterator[list[tuple[str, list[tuple[Finger, Path]]]]]:
    """Consecutive subjects, in lists of at least ``fingers`` fingers (but the last)."""
    chunk: list = []
    count = 0
    for subject in subjects:
        chunk.append(subject)
        count += len(subject[1])
        if count >= fingers:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def enrol_templates(
    client: MatcherClient,
    folder: Path,
    context: pb.Context,
    *,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] = print,
) -> pb.EnrollSummary:
    """Enrol every subject's template files, streamed lazily; the matcher's summary.

    A file that cannot be read or decoded is skipped with a warning naming it and the
    reason; a subject whose files all fail is not sent. Files are read and decoded
    :data:`TEMPLATE_CHUNK` at a time.
    """
    listing = TemplateFolder(folder, warn)
    if not len(listing):
        raise FileNotFoundError(f"no template files named {TEMPLATE_NAMES} in {folder}")
    total = len(listing)

    def requests() -> Iterator[pb.EnrollRequest]:
        done = 0
        for chunk in _chunks(listing.subjects(), TEMPLATE_CHUNK):
            messages = iter(template_messages([f for _, files in chunk for f in files]))
            for subject_id, files in chunk:
                fingers = []
                for _, path in files:
                    message = next(messages)
                    if isinstance(message, Exception):
                        warn(f"skipping {path.name}: {message}")
                    else:
                        fingers.append(message)
                    done += 1
                    if progress:
                        progress(done, total)
                if fingers:
                    yield pb.EnrollRequest(subject=pb.Subject(subject_id=subject_id,
                                                              fingers=fingers),
                                           replace=replace, context=context)

    return client.enroll_stream(requests())
