"""An enrolment stream received, checked and decoded in durable batches.

Bulk enrolment (EnrollStream, one subject per message, and EnrollBatchStream, many per
message) arrives as one stream of requests. :class:`BulkEnrolment` cuts it into batches
of :data:`ENROLL_BATCH`, receives and decodes the next batches on a thread of its own
(:class:`ReceivedBatches`) while the watchlist writes earlier ones
(:meth:`matcher.watchlist.Watchlist.enroll_batches`), audits each durable batch in one
transaction, and answers one summary in stream order (:class:`StreamSummary`). One bad
subject fails alone, not its batch; failure indices count requests from the start of the
stream, whatever the messages that carried them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from matcher.access import DeviceBinding, DeviceMismatch
from matcher.audit import AuditLog
from matcher.messages import context_from_message, subjects_from_messages
from matcher.store import SubjectRecord
from matcher.template import TemplateError
from matcher.watchlist import Watchlist, WatchlistError
from protos.ink.v1 import matcher_pb2 as pb

ENROLL_BATCH = 1024  # subjects per durable batch
RECEIVED_AHEAD = 2  # batches received and decoded ahead of those being enrolled
# A summary lists subjects and failures only up to this size, so that it always fits a
# message (1 MiB, matcher.server.MAX_MESSAGE_BYTES); its counts stay whole.
SUMMARY_LIST_BYTES = 512 * 1024

# The gRPC status code name a refused subject's failure reports.
CodeOf = Callable[[Exception], str]
Failure = tuple[int, str, Exception]  # (stream index, subject id, why)


def requests_of_batches(batches: Iterable[pb.EnrollBatch]) -> Iterator[pb.EnrollRequest]:
    """The requests of an EnrollBatchStream as the one stream they form."""
    for batch in batches:
        yield from batch.requests


class BulkEnrolment:
    """Enrols streams into one watchlist, auditing each subject once it is durable."""

    def __init__(self, watchlist: Watchlist, audit: AuditLog, code_of: CodeOf, *,
                 batch: int = ENROLL_BATCH) -> None:
        self.watchlist = watchlist
        self.audit = audit
        self.code_of = code_of
        self.batch = batch

    def run(self, requests: Iterator[pb.EnrollRequest], device: DeviceBinding | None,
            client: str) -> pb.EnrollSummary:
        """Enrol a stream; its summary. ``device`` is the caller's device binding (each
        request's context is checked against it), ``client`` the audit's name for it.
        An error of the stream itself (a message that is no request, a cancelled call)
        is raised; what was acknowledged before it stays enrolled."""
        summary = StreamSummary(self.code_of)
        received = ReceivedBatches(requests, device, self.batch)
        try:
            waiting: deque[ReceivedBatch] = deque()  # received, not yet answered

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
                    self._enrol_one_by_one(batch, summary, client)
            while waiting:
                summary.failed_all(waiting.popleft().failures)
        finally:
            received.close()
        return summary.message

    def _enrol_one_by_one(self, batch: ReceivedBatch, summary: StreamSummary,
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

    def _acknowledge_all(self, summary: StreamSummary,
                         enrolled: list[tuple[SubjectRecord, dict]], client: str) -> None:
        """Audit enrolled ``(subject, ctx)`` in one transaction, then count them."""
        self.audit.append_many(
            [("enroll", ctx, {"subject": subject.subject_id,
                              "fingers": [int(t.finger) for t in subject.fingers]})
             for subject, ctx in enrolled],
            client=client,
        )
        summary.enrolled_all([subject.subject_id for subject, _ in enrolled])


@dataclass
class ReceivedBatch:
    """Consecutive requests of a stream, checked: the subjects to enrol as ``(index,
    subject, replace, context)`` and the refused as ``(index, subject id, error)``, each
    in stream order."""

    entries: list[tuple[int, SubjectRecord, bool, dict]]
    failures: list[Failure]


class ReceivedBatches:
    """The requests of a stream in batches of ``size``, received and checked on a thread
    of their own, so that receiving (one gRPC hand-over per message) and decoding (all of
    a batch's records at once) go on while earlier batches are written. Iterate to take
    the batches; an error of the stream (a request that is no message, a cancelled call)
    is raised there. Close when done, also on error.

    ``device`` is the caller's device binding: it belongs to the handler's thread
    (:func:`matcher.interceptors.current_device_binding`), so it is read there and
    handed over.
    """

    def __init__(self, requests: Iterator[pb.EnrollRequest], device: DeviceBinding | None,
                 size: int = ENROLL_BATCH) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=RECEIVED_AHEAD)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, args=(requests, device, size),
                                        name="enrol-receive", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[ReceivedBatch]:
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

    def _receive(self, requests: Iterator[pb.EnrollRequest], device: DeviceBinding | None,
                 size: int) -> None:
        try:
            pending: list[pb.EnrollRequest] = []
            first = 0
            contexts = StreamContexts(device)
            for request in requests:
                pending.append(request)
                if len(pending) >= size:
                    self._hand_over(checked_batch(first, pending, contexts))
                    first += len(pending)
                    pending = []
            if pending:
                self._hand_over(checked_batch(first, pending, contexts))
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


class StreamContexts:
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


def checked_batch(first: int, requests: list[pb.EnrollRequest],
                  contexts: StreamContexts) -> ReceivedBatch:
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
    return ReceivedBatch(entries, failures)


class StreamSummary:
    """A stream's summary as it is built: the counts whole, the lists of enrolled subjects
    and of failures (in stream order) only up to :data:`SUMMARY_LIST_BYTES`, so that the
    answer always fits a message. The gateway's client splits long streams into calls
    whose lists fit whole."""

    def __init__(self, code_of: CodeOf) -> None:
        self.message = pb.EnrollSummary()
        self._code_of = code_of
        self._listed = 0

    def enrolled_all(self, subject_ids: list[str]) -> None:
        self.message.enrolled += len(subject_ids)
        self.message.subject_ids.extend(
            [sid for sid in subject_ids if self._fits(len(sid.encode()) + 3)])

    def failed_all(self, failures: list[Failure]) -> None:
        for index, subject_id, exc in failures:
            self.failed(index, subject_id, exc)

    def failed(self, index: int, subject_id: str, exc: Exception) -> None:
        self.message.failed += 1
        failure = pb.EnrollFailure(index=index, subject_id=subject_id[:128],
                                   code=self._code_of(exc), message=str(exc)[:512])
        if self._fits(failure.ByteSize() + 4):
            self.message.failures.append(failure)

    def _fits(self, size: int) -> bool:
        if self._listed + size > SUMMARY_LIST_BYTES:
            return False
        self._listed += size
        return True
