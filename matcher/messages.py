"""Translation between ``ink.v1`` messages and the matcher's domain objects.

Shared by the matcher's servicer and the gateway's client, so that both ends agree on
units and conventions by construction. Every check of a message's content raises
:class:`~matcher.template.TemplateError`, which the servicer turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from matcher.access import DeviceBinding
from matcher.formats import decode_template, decode_templates, encode_iso
from matcher.store import SubjectRecord
from matcher.template import Template, TemplateError, finger_from_code, make_template
from protos.ink.v1 import matcher_pb2 as pb

MAX_CONTEXT_FIELD = 256
MAX_LABELS = 32
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
# As the watchlist allows; checked here too so that no error message quotes a huge id.
MAX_SUBJECT_ID = 128


def template_from_message(msg: pb.Template, what: str = "template") -> Template:
    """A validated Template from a message holding minutiae or a standard record."""
    try:
        if msg.record:
            if msg.minutiae or msg.width or msg.height or msg.ppi:
                raise TemplateError(
                    "send either a standard record or minutiae with width, height and ppi, "
                    "not both"
                )
            finger = int(msg.finger) or None
            return decode_template(msg.record, finger=finger)
        if not (msg.width and msg.height and msg.ppi):
            raise TemplateError(
                "a template needs the image width, height and ppi of its minutiae "
                "(or a standard ISO/ANSI record)"
            )
        m = msg.minutiae
        xs = np.fromiter((p.x for p in m), np.float32, len(m))
        ys = np.fromiter((p.y for p in m), np.float32, len(m))
        _check_inside(xs, ys, msg.width, msg.height)
        return make_template(
            xs,
            ys,
            np.fromiter((p.angle for p in m), np.float64, len(m)),
            np.fromiter((p.kind for p in m), np.int64, len(m)),
            np.fromiter((p.quality for p in m), np.int64, len(m)),
            width=msg.width,
            height=msg.height,
            ppi=msg.ppi,
            finger=msg.finger,
            image_quality=msg.image_quality,
        )
    except TemplateError as exc:
        raise TemplateError(f"{what}: {exc}") from None


def _check_inside(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> None:
    """Refuse minutiae outside the image without quoting them (the probe stays private)."""
    with np.errstate(invalid="ignore"):
        outside = ~((xs >= 0) & (ys >= 0) & (xs < width) & (ys < height))
    if outside.any():
        raise TemplateError(
            f"{int(outside.sum())} of {xs.size} minutiae lie outside the {width}x{height} "
            "image or are not finite numbers; check the image size and that coordinates "
            "are pixels with the origin at the top-left"
        )


def template_to_message(t: Template) -> pb.Template:
    """A message with the template's minutiae as fields (not a record)."""
    return pb.Template(
        finger=int(t.finger),
        width=t.width,
        height=t.height,
        ppi=t.ppi,
        image_quality=t.image_quality,
        minutiae=[
            pb.Minutia(x=float(x), y=float(y), angle=float(a), kind=int(k), quality=int(q))
            for x, y, a, k, q in zip(t.x, t.y, t.angle, t.kind, t.quality, strict=True)
        ],
    )


def template_to_record_message(t: Template) -> pb.Template:
    """A message carrying the template as an ISO/IEC 19794-2:2005 record."""
    return pb.Template(finger=int(t.finger), record=encode_iso(t))


def probes_from_messages(msgs) -> list[Template]:
    return [template_from_message(m, f"probe {i}") for i, m in enumerate(msgs)]


def context_from_message(msg: pb.Context, *, required: bool = True,
                         device: DeviceBinding | None = None) -> dict:
    """The audited who/where/why of a request, checked.

    With the caller's ``device`` binding, ``device_id`` becomes the device the audit
    attributes the request to (the certified one when the request leaves it empty) and
    ``device_source`` says whether the certificate or the request named it; a request in
    another device's name raises :class:`~matcher.access.DeviceMismatch`.
    """
    ctx = {
        "operator_id": msg.operator_id.strip(),
        "device_id": msg.device_id.strip(),
        "reason": msg.reason.strip(),
        "case_reference": msg.case_reference.strip(),
    }
    for key, value in ctx.items():
        if len(value) > MAX_CONTEXT_FIELD or not value.isprintable():
            raise TemplateError(
                f"context {key} must be at most {MAX_CONTEXT_FIELD} printable characters"
            )
    ctx["device_id"], ctx["device_source"] = (device or DeviceBinding()).resolve(
        ctx["device_id"])
    if required:
        missing = [k for k in ("operator_id", "device_id", "reason") if not ctx[k]]
        if missing:
            raise TemplateError(
                "every search and change must say who, from where and why: context "
                f"{', '.join(missing)} missing"
            )
    return ctx


def checked_subject_id(value: str) -> str:
    """A subject id as given, refused (without quoting it) when it cannot be one."""
    if not value or len(value) > MAX_SUBJECT_ID or not value.isprintable() \
            or value != value.strip():
        raise TemplateError(
            f"subject id must be 1..{MAX_SUBJECT_ID} printable characters without "
            "leading or trailing spaces"
        )
    return value


def _check_labels(labels) -> None:
    if len(labels) > MAX_LABELS:
        raise TemplateError(f"a subject takes at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not key.isprintable():
            raise TemplateError(
                f"label names must be 1..{MAX_LABEL_KEY} printable characters")
        if len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise TemplateError(
                f"label values must be at most {MAX_LABEL_VALUE} printable characters")


def subject_from_message(msg: pb.Subject) -> SubjectRecord:
    """The subject a message describes, checked; raises :class:`TemplateError`."""
    (subject,) = subjects_from_messages([msg])
    if isinstance(subject, TemplateError):
        raise subject
    return subject


def subjects_from_messages(msgs: Sequence[pb.Subject]) -> list[SubjectRecord | TemplateError]:
    """:func:`subject_from_message` of each message: the subject, or the TemplateError that
    says why it is refused (returned, so that one bad subject fails alone).

    The standard records of all the messages are decoded together
    (:func:`matcher.formats.decode_templates`): bulk enrolment receives thousands.
    """
    # per message: the refusal, or (message, its fingers) where a finger is a Template,
    # a TemplateError that names it, or the position of its record among those decoded
    # together
    parsed: list = []
    records: list[bytes] = []
    wanted: list[int] = []
    for msg in msgs:
        try:
            checked_subject_id(msg.subject_id)
            _check_labels(msg.labels)
        except TemplateError as exc:
            parsed.append(exc)
            continue
        fingers: list = []
        for i, f in enumerate(msg.fingers):
            record = f.record
            if record and not (f.minutiae or f.width or f.height or f.ppi):
                fingers.append(len(records))
                records.append(record)
                wanted.append(f.finger or None)  # as template_from_message asks
                continue
            try:
                fingers.append(template_from_message(f, _finger_of(i, msg)))
            except TemplateError as exc:
                fingers.append(exc)
        parsed.append((msg, fingers))
    decoded = decode_templates(records, wanted)
    return [p if isinstance(p, TemplateError) else _subject(p[0], p[1], decoded)
            for p in parsed]


def _finger_of(i: int, msg: pb.Subject) -> str:
    return f"finger {i} of subject {msg.subject_id!r}"


def _subject(msg: pb.Subject, fingers: list, decoded: list) -> SubjectRecord | TemplateError:
    """The subject of ``msg`` from its fingers (see :func:`subjects_from_messages`), or the
    first finger's error, worded as :func:`template_from_message` words it."""
    for i, t in enumerate(fingers):
        if type(t) is int:
            t = fingers[i] = decoded[t]
            if isinstance(t, TemplateError):
                return TemplateError(f"{_finger_of(i, msg)}: {t}")
        elif isinstance(t, TemplateError):
            return t
        # A record's finger is the one asked for (or refused), a message's minutiae are
        # labelled with it; this only keeps subject_from_message's promise explicit.
        code = msg.fingers[i].finger
        if code != 0 and t.finger != code:
            try:
                fingers[i] = t.with_finger(code)
            except TemplateError as exc:
                return exc
    expires = (
        msg.expires_at.seconds + msg.expires_at.nanos / 1e9 if msg.HasField("expires_at") else None
    )
    labels = dict(msg.labels) if msg.labels else {}
    return SubjectRecord(msg.subject_id, tuple(fingers), labels, 0.0, expires)


def subject_to_message(s: SubjectRecord) -> pb.Subject:
    """The subject's metadata and finger list; templates are not sent back."""
    msg = pb.Subject(
        subject_id=s.subject_id,
        labels=s.labels,
        enrolled=[
            pb.EnrolledFinger(finger=int(t.finger), minutiae=len(t),
                              image_quality=t.image_quality)
            for t in s.fingers
        ],
    )
    msg.enrolled_at.CopyFrom(_timestamp(s.enrolled_at))
    if s.expires_at is not None:
        msg.expires_at.CopyFrom(_timestamp(s.expires_at))
    return msg


def finger_code(value: int) -> int:
    return int(finger_from_code(value))


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.seconds = int(seconds)
    ts.nanos = int((seconds - int(seconds)) * 1e9)
    return ts
