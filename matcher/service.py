"""The gRPC servicer of ``ink.v1.Matcher``: messages in, calls on the watchlist, messages out.

It stays thin on purpose: all decisions live in :mod:`matcher.watchlist`; here requests
are translated (:mod:`matcher.messages`), every search and change is audited, and domain
errors become status codes with a message a person can act on. Error messages name the
problem, never the probe's content.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import grpc

from matcher import decision
from matcher.access import DeviceBinding, DeviceMismatch, client_identity
from matcher.audit import AuditError, AuditLog
from matcher.interceptors import current_device_binding
from matcher.messages import (
    checked_subject_id,
    context_from_message,
    probes_from_messages,
    subject_from_message,
    subject_to_message,
    subjects_from_messages,
)
from matcher.store import StoreError, SubjectRecord
from matcher.template import TemplateError
from matcher.watchlist import (
    EmptyWatchlist,
    IdentifyResult,
    SubjectExists,
    SubjectNotFound,
    Watchlist,
    WatchlistError,
)
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DEFAULT_MAX_CANDIDATES = 10
MAX_CANDIDATES = 100
ENROLL_BATCH = 1024  # subjects per durable batch of an EnrollStream
RECEIVED_AHEAD = 2  # batches received and decoded ahead of those being enrolled
# An EnrollStream's summary lists subjects and failures only up to this size, so that it
# always fits a message (1 MiB, server.MAX_MESSAGE_BYTES); its counts stay whole.
SUMMARY_LIST_BYTES = 512 * 1024

STATUS_OF = (
    (TemplateError, grpc.StatusCode.INVALID_ARGUMENT),
    (SubjectNotFound, grpc.StatusCode.NOT_FOUND),
    (SubjectExists, grpc.StatusCode.ALREADY_EXISTS),
    (EmptyWatchlist, grpc.StatusCode.FAILED_PRECONDITION),
    (WatchlistError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (AuditError, grpc.StatusCode.UNAVAILABLE),
    (DeviceMismatch, grpc.StatusCode.PERMISSION_DENIED),
)


STORAGE_FAILED = (
    "the matcher cannot write its data files: check free disk space and write permission "
    "on its data folder, then try again"
)


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return None


@contextmanager
def _status(context: grpc.ServicerContext):
    """Turn domain errors into status codes; anything else is an internal error."""
    try:
        yield
    except sqlite3.Error as exc:
        # A storage failure the store did not translate (for instance its rollback after
        # a failed write): still the person's problem to fix, not an internal error.
        log.error("storage error while serving a request: %s", exc)
        context.abort(grpc.StatusCode.UNAVAILABLE, STORAGE_FAILED)
    except Exception as exc:
        code = status_for(exc)
        if code is None:
            # Neither the answer nor the log quote the exception's message: an unexpected
            # exception may quote request content, that is, the probe.
            log.error("internal error while serving a request: %s\n%s", type(exc).__name__,
                      "".join(traceback.format_tb(exc.__traceback__)))
            context.abort(grpc.StatusCode.INTERNAL, "internal matcher error; see the server log")
        context.abort(code, str(exc))


class MatcherServicer(matcher_pb2_grpc.MatcherServicer):
    def __init__(
        self,
        watchlist: Watchlist,
        audit: AuditLog,
        *,
        target_fpir: float = decision.DEFAULT_TARGET_FPIR,
    ) -> None:
        self.watchlist = watchlist
        self.audit = audit
        self.target_fpir = target_fpir
        self.started = time.time()
        self.searches = 0

    def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        with _status(context):
            ctx = _request_context(request.context)
            probes = probes_from_messages(request.probes)
            target = request.target_fpir or self.target_fpir
            if not 0 < target < 1:
                raise TemplateError("target_fpir must lie strictly between 0 and 1")
            limit = min(request.max_candidates or DEFAULT_MAX_CANDIDATES, MAX_CANDIDATES)
            result = self.watchlist.identify(probes, max_candidates=limit, target_fpir=target)
            self.searches += 1
            search_id = self.audit.append("identify", ctx, _identify_outcome(result),
                                          client=client_label(context))
            return _identify_response(result, search_id)

    def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        with _status(context):
            ctx = _request_context(request.context)
            probes = probes_from_messages(request.probes)
            target = request.target_fmr or decision.DEFAULT_TARGET_FMR
            if not 0 < target < 1:
                raise TemplateError("target_fmr must lie strictly between 0 and 1")
            subject_id = checked_subject_id(request.subject_id)
            result = self.watchlist.verify(subject_id, probes, target_fmr=target)
            self.searches += 1
            search_id = self.audit.append(
                "verify", ctx,
                {"subject": subject_id, "decision": "HIT" if result.hit else "NO_HIT",
                 "score": round(result.score, 2), "ms": round(result.elapsed_ms, 2)},
                client=client_label(context),
            )
            return pb.VerifyResponse(
                decision=pb.DECISION_HIT if result.hit else pb.DECISION_NO_HIT,
                score=result.score,
                threshold=result.threshold,
                matched_finger=int(max(result.fingers, key=lambda f: f.score).finger)
                if result.fingers else 0,
                fingers=[_finger_score(f) for f in result.fingers],
                elapsed_ms=result.elapsed_ms,
                search_id=search_id,
            )

    def Enroll(self, request: pb.EnrollRequest, context) -> pb.EnrollResponse:
        with _status(context):
            ctx = _request_context(request.context)
            subject = subject_from_message(request.subject)
            (replaced,) = self.watchlist.enroll([subject], replace=request.replace)
            self.audit.append(
                "enroll", ctx,
                {"subject": subject.subject_id, "fingers": [int(t.finger) for t in
                                                            subject.fingers],
                 "replaced": replaced},
                client=client_label(context),
            )
            return pb.EnrollResponse(
                subject_id=subject.subject_id, fingers=len(subject.fingers), replaced=replaced
            )

    def EnrollStream(self, request_iterator: Iterator[pb.EnrollRequest], context):
        """Enrol in durable batches, pipelined (:meth:`Watchlist.enroll_batches`) behind a
        thread that receives and decodes the next batches meanwhile
        (:class:`_ReceivedBatches`); one bad subject fails alone, not the batch."""
        summary = _StreamSummary()
        client = client_label(context)
        with _status(context):
            received = _ReceivedBatches(request_iterator, current_device_binding())
            try:
                waiting: deque[_ReceivedBatch] = deque()  # received, not yet answered

                def to_enrol():
                    for batch in received:
                        waiting.append(batch)
                        if batch.entries:
                            yield ([s for _, s, _, _ in batch.entries],
                                   all(r for _, _, r, _ in batch.entries))

                for outcome in self.watchlist.enroll_batches(to_enrol()):
                    while not waiting[0].entries:  # batches whose every request failed
                        summary.failed_all(waiting.popleft().failures)
                    batch = waiting.popleft()
                    if outcome.error is None:
                        summary.failed_all(batch.failures)
                        self._acknowledge_all(summary, [(s, ctx) for _, s, _, ctx in
                                                        batch.entries], client)
                    else:
                        self._enroll_one_by_one(batch, summary, client)
                while waiting:
                    summary.failed_all(waiting.popleft().failures)
            finally:
                received.close()
            return summary.message

    def _enroll_one_by_one(self, batch: _ReceivedBatch, summary: _StreamSummary,
                           client: str) -> None:
        """Something in the batch is refused: enrol one by one to say which."""
        failures = list(batch.failures)
        for index, subject, replace, ctx in batch.entries:
            try:
                self.watchlist.enroll([subject], replace=replace)
            except (WatchlistError, TemplateError) as exc:
                failures.append((index, subject.subject_id, exc))
                continue
            self._acknowledge_all(summary, [(subject, ctx)], client)
        summary.failed_all(sorted(failures, key=lambda f: f[0]))

    def _acknowledge_all(self, summary: _StreamSummary, enrolled, client: str) -> None:
        """Audit a batch of enrolled ``(subject, ctx)`` in one transaction, then count it."""
        self.audit.append_many(
            [("enroll", ctx, {"subject": subject.subject_id,
                              "fingers": [int(t.finger) for t in subject.fingers]})
             for subject, ctx in enrolled],
            client=client,
        )
        summary.enrolled_all([subject.subject_id for subject, _ in enrolled])

    def Remove(self, request: pb.RemoveRequest, context) -> pb.RemoveResponse:
        with _status(context):
            ctx = _request_context(request.context)
            subject_id = checked_subject_id(request.subject_id)
            n = self.watchlist.remove(subject_id)
            self.audit.append("remove", ctx, {"subject": subject_id, "fingers": n},
                              client=client_label(context))
            return pb.RemoveResponse(subject_id=subject_id, fingers=n)

    def GetSubject(self, request: pb.GetSubjectRequest, context) -> pb.Subject:
        with _status(context):
            subject_id = checked_subject_id(request.subject_id)
            return subject_to_message(self.watchlist.subject(subject_id))

    def Stats(self, request: pb.StatsRequest, context) -> pb.StatsResponse:
        with _status(context):
            subjects, fingers = self.watchlist.counts()
            return pb.StatsResponse(
                subjects=subjects,
                fingers=fingers,
                comparator=self.watchlist.comparator.name,
                version=VERSION,
                uptime_s=time.time() - self.started,
                searches=self.searches,
                default_target_fpir=self.target_fpir,
                hit_threshold=self.watchlist.hit_threshold(self.target_fpir),
            )


def _request_context(msg: pb.Context) -> dict:
    """The checked context of a request, its device resolved against the caller's certificate."""
    return context_from_message(msg, device=current_device_binding())


def client_label(context: grpc.ServicerContext) -> str:
    """How the audit names the caller: its certificate, else its network address."""
    client = client_identity(context.auth_context(), context.peer())
    return client.label if client.has_certificate else f"peer {client.peer}"


@dataclass
class _ReceivedBatch:
    """Consecutive requests of an EnrollStream, checked: the subjects to enrol as
    ``(index, subject, replace, context)`` and the refused as ``(index, subject id,
    error)``, each in stream order."""

    entries: list[tuple[int, SubjectRecord, bool, dict]]
    failures: list[tuple[int, str, Exception]]


class _ReceivedBatches:
    """The requests of an EnrollStream in batches of :data:`ENROLL_BATCH`, received and
    checked on a thread of their own, so that receiving (one gRPC hand-over per message)
    and decoding (all of a batch's records at once) go on while earlier batches are
    written. Iterate to take the batches; an error of the stream (a request that is no
    message, a cancelled call) is raised there. Close when done, also on error.

    ``device`` is the caller's device binding: it belongs to the handler's thread
    (:func:`current_device_binding`), so it is read there and handed over.
    """

    def __init__(self, requests: Iterator[pb.EnrollRequest],
                 device: DeviceBinding | None) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=RECEIVED_AHEAD)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, args=(requests, device),
                                        name="enrol-receive", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[_ReceivedBatch]:
        while True:
            item = self._queue.get()
            if item is _END_OF_STREAM:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop receiving: the thread ends within a moment (or, when it waits for a
        request, when the call ends); what it had not handed over is dropped."""
        self._closed.set()

    def _receive(self, requests: Iterator[pb.EnrollRequest],
                 device: DeviceBinding | None) -> None:
        try:
            pending: list[pb.EnrollRequest] = []
            first = 0
            contexts = _StreamContexts(device)
            for request in requests:
                pending.append(request)
                if len(pending) >= ENROLL_BATCH:
                    self._hand_over(_checked_batch(first, pending, contexts))
                    first += len(pending)
                    pending = []
            if pending:
                self._hand_over(_checked_batch(first, pending, contexts))
            self._hand_over(_END_OF_STREAM)
        except _Closed:
            pass
        except BaseException as exc:  # the handler raises it, as if it had received
            with suppress(_Closed):
                self._hand_over(exc)

    def _hand_over(self, item) -> None:
        while True:
            if self._closed.is_set():
                raise _Closed
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


class _Closed(Exception):
    """The handler stopped taking batches."""


_END_OF_STREAM = object()


class _StreamContexts:
    """The checked context of each request of a stream. A stream's requests usually all
    carry the same context: it is checked once, and that answer reused while it repeats."""

    def __init__(self, device: DeviceBinding | None) -> None:
        self._device = device
        self._last: tuple | None = None
        self._checked: dict = {}

    def of(self, msg: pb.Context) -> dict:
        key = (msg.operator_id, msg.device_id, msg.reason, msg.case_reference)
        if key != self._last:
            self._checked = context_from_message(msg, device=self._device)
            self._last = key
        return self._checked


def _checked_batch(first: int, requests: list[pb.EnrollRequest],
                   contexts: _StreamContexts) -> _ReceivedBatch:
    """Requests ``first``, ``first + 1``, ... of a stream, checked and decoded."""
    entries, failures = [], []
    subjects = subjects_from_messages([r.subject for r in requests])
    for index, (request, subject) in enumerate(zip(requests, subjects, strict=True),
                                               start=first):
        try:
            # as Enroll does: the context is checked before the subject
            ctx = contexts.of(request.context)
        except (TemplateError, DeviceMismatch) as exc:
            failures.append((index, request.subject.subject_id, exc))
            continue
        if isinstance(subject, TemplateError):
            failures.append((index, request.subject.subject_id, subject))
        else:
            entries.append((index, subject, request.replace, ctx))
    return _ReceivedBatch(entries, failures)


class _StreamSummary:
    """An EnrollStream's summary as it is built: the counts whole, the lists of enrolled
    subjects and of failures (in stream order) only up to :data:`SUMMARY_LIST_BYTES`, so
    that the answer always fits a message. The gateway's client splits long streams into
    calls whose lists fit whole."""

    def __init__(self) -> None:
        self.message = pb.EnrollSummary()
        self._listed = 0

    def enrolled_all(self, subject_ids: list[str]) -> None:
        self.message.enrolled += len(subject_ids)
        self.message.subject_ids.extend(
            [sid for sid in subject_ids if self._fits(len(sid.encode()) + 3)])

    def failed_all(self, failures: list[tuple[int, str, Exception]]) -> None:
        for index, subject_id, exc in failures:
            self.failed(index, subject_id, exc)

    def failed(self, index: int, subject_id: str, exc: Exception) -> None:
        code = status_for(exc) or grpc.StatusCode.INTERNAL
        self.message.failed += 1
        failure = pb.EnrollFailure(index=index, subject_id=subject_id[:128], code=code.name,
                                   message=str(exc)[:512])
        if self._fits(failure.ByteSize() + 4):
            self.message.failures.append(failure)

    def _fits(self, size: int) -> bool:
        if self._listed + size > SUMMARY_LIST_BYTES:
            return False
        self._listed += size
        return True


def _finger_score(f) -> pb.FingerScore:
    return pb.FingerScore(probe_index=f.probe_index, finger=int(f.finger), score=f.score)


def _identify_outcome(r: IdentifyResult) -> dict:
    """What the audit keeps of a search: the answer, never the probe."""
    return {
        "decision": "HIT" if r.hit else "NO_HIT",
        "candidates": [c.subject_id for c in r.candidates[:5]],
        "top_score": round(r.candidates[0].score, 2) if r.candidates else None,
        "threshold": round(r.threshold, 2),
        "gallery_fingers": r.gallery_fingers,
        "ms": round(r.elapsed_ms, 2),
    }


def _identify_response(r: IdentifyResult, search_id: str) -> pb.IdentifyResponse:
    return pb.IdentifyResponse(
        decision=pb.DECISION_HIT if r.hit else pb.DECISION_NO_HIT,
        candidates=[
            pb.Candidate(
                subject_id=c.subject_id,
                score=c.score,
                matched_finger=int(c.matched_finger) if c.fingers else 0,
                fingers=[_finger_score(f) for f in c.fingers],
            )
            for c in r.candidates
        ],
        threshold=r.threshold,
        expected_fpir=r.expected_fpir,
        gallery_fingers=r.gallery_fingers,
        gallery_subjects=r.gallery_subjects,
        comparisons=r.comparisons,
        elapsed_ms=r.elapsed_ms,
        search_id=search_id,
    )
