"""The gateway's client of the matcher: deadlines, retries with back-off, keep-alive.

Links from a handheld are slow and drop. Every call has a deadline; calls that are safe
to repeat (searches, reads) are retried with exponential back-off while the matcher is
unreachable; and every failure becomes a :class:`MatcherError` whose ``officer_message``
can be shown as it is, never a hang or a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matcher.messages import template_to_message
from matcher.template import Template
from protos.ink.v1 import matcher_pb2 as pb
from protos.ink.v1 import matcher_pb2_grpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# The matcher answers an EnrollStream call with one summary naming every enrolled
# subject, and lists no more than 512 KB of them (matcher.service.SUMMARY_LIST_BYTES):
# each call's share of a long stream is cut so that its list of ids stays under this.
SUMMARY_BUDGET_BYTES = 400_000
BULK_DEADLINE_S = 600.0  # per EnrollStream call of a bulk enrolment
# gRPC costs some 0.25 ms of CPU per message on each side, whatever its size: bulk
# enrolment sends subjects in EnrollBatch messages of up to this many, and of at most
# this many bytes, well under the matcher's 1 MiB message limit.
ENROLL_BATCH_SUBJECTS = 64
ENROLL_BATCH_BYTES = 256 * 1024


class MatcherError(Exception):
    """A failed call to the matcher, with a sentence for the person at the device."""

    def __init__(self, code: grpc.StatusCode, detail: str, officer_message: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail
        self.officer_message = officer_message


class EnrollStreamError(MatcherError):
    """A bulk enrolment stopped part way; ``summary`` is what the calls before it did."""

    def __init__(self, cause: MatcherError, summary: pb.EnrollSummary) -> None:
        kept = (f" The {summary.enrolled} subjects acknowledged before it stay enrolled; "
                "run the same enrolment again with replace to finish it.")
        super().__init__(cause.code, cause.detail, cause.officer_message + kept)
        self.summary = summary


@dataclass(frozen=True)
class ClientTls:
    ca: Path | None = None  # trust this CA instead of the system's
    cert: Path | None = None  # client certificate (mutual TLS, devices)
    key: Path | None = None
    server_name: str | None = None  # override the name checked in the server certificate


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of safe calls: until the call's deadline, but at most ``attempts`` times.

    A matcher restart takes several seconds, so the default keeps trying for the whole
    deadline rather than giving up after the first few back-offs.
    """

    attempts: int = 50
    first_backoff_s: float = 0.2
    max_backoff_s: float = 1.0


class MatcherClient:
    """One channel to one matcher. Use as a context manager."""

    def __init__(
        self,
        address: str,
        *,
        tls: ClientTls | None = None,
        insecure: bool = False,
        deadline_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        batch_enrolment: bool = True,
    ) -> None:
        """``batch_enrolment``: send bulk enrolments many subjects per message when the
        matcher serves that (EnrollBatchStream); False: one per message (EnrollStream)."""
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.enable_retries", 0),  # our own policy below, with officer messages
            # Reconnect quickly after a matcher restart instead of gRPC's default 1-120 s.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if insecure:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            tls = tls or ClientTls()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes() if tls.ca else None,
                private_key=tls.key.read_bytes() if tls.key else None,
                certificate_chain=tls.cert.read_bytes() if tls.cert else None,
            )
            self._channel = grpc.secure_channel(address, creds, options=options)
        self.address = address
        self.deadline_s = deadline_s
        self.retry = retry
        self._sleep = sleep
        self._stub = matcher_pb2_grpc.MatcherStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        # whether the matcher serves EnrollBatchStream; None: not asked yet
        self._serves_batches: bool | None = None if batch_enrolment else False

    def __enter__(self) -> MatcherClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ---- calls ----------------------------------------------------------------------
    def identify(
        self,
        probes: Sequence[Template],
        context: pb.Context,
        *,
        max_candidates: int = 0,
        target_fpir: float = 0.0,
    ) -> pb.IdentifyResponse:
        request = pb.IdentifyRequest(
            probes=[template_to_message(t) for t in probes],
            max_candidates=max_candidates,
            context=context,
            target_fpir=target_fpir,
        )
        return self._call(self._stub.Identify, request, retry=True)

    def verify(
        self, subject_id: str, probes: Sequence[Template], context: pb.Context
    ) -> pb.VerifyResponse:
        request = pb.VerifyRequest(
            subject_id=subject_id, probes=[template_to_message(t) for t in probes],
            context=context,
        )
        return self._call(self._stub.Verify, request, retry=True)

    def enroll(
        self,
        subject_id: str,
        fingers: Sequence[Template],
        context: pb.Context,
        *,
        replace: bool = False,
        labels: dict[str, str] | None = None,
    ) -> pb.EnrollResponse:
        request = _enroll_request(subject_id, fingers, context, replace, labels)
        # Retrying is safe only with replace: a lost answer would otherwise read as
        # ALREADY_EXISTS on the second try.
        return self._call(self._stub.Enroll, request, retry=replace)

    def enroll_stream(
        self,
        requests: Iterable[pb.EnrollRequest],
        *,
        summary_budget_bytes: int = SUMMARY_BUDGET_BYTES,
    ) -> pb.EnrollSummary:
        """Enrol a stream of any length, read lazily, and summarise it as one.

        The requests go in EnrollBatch messages (EnrollBatchStream, up to
        :data:`ENROLL_BATCH_SUBJECTS` each), or one per message (EnrollStream) to a matcher
        that does not serve batches. The matcher answers each call with one summary that
        names every enrolled subject, up to a size; so the stream goes as consecutive
        calls, each cut where its list of ids could outgrow ``summary_budget_bytes`` (a
        call with very many failures may still have its lists cut; its counts are whole).
        Failure indices count from the start of the whole stream. A failed call raises
        :class:`EnrollStreamError` holding the summary of the calls before it (what they
        acknowledged is durable).
        """
        rest = iter(requests)
        total = pb.EnrollSummary()
        offset = 0
        while (first := next(rest, None)) is not None:
            sent = [0]
            part = _summary_bounded(first, rest, summary_budget_bytes, sent)
            try:
                if self._batches_served():
                    summary = self._call(self._stub.EnrollBatchStream, enroll_batches(part),
                                         retry=False, deadline_s=self._bulk_deadline_s)
                else:
                    summary = self._call(self._stub.EnrollStream, part, retry=False,
                                         deadline_s=self._bulk_deadline_s)
            except MatcherError as exc:
                raise EnrollStreamError(exc, total) from None
            _add_summary(total, summary, offset)
            offset += sent[0]
        return total

    def remove(self, subject_id: str, context: pb.Context) -> pb.RemoveResponse:
        return self._call(self._stub.Remove, pb.RemoveRequest(subject_id=subject_id,
                                                              context=context), retry=False)

    def get_subject(self, subject_id: str) -> pb.Subject:
        return self._call(self._stub.GetSubject, pb.GetSubjectRequest(subject_id=subject_id),
                          retry=True)

    def stats(self) -> pb.StatsResponse:
        return self._call(self._stub.Stats, pb.StatsRequest(), retry=True)

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """Block until the matcher's health check says SERVING, or raise MatcherError."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                reply = self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                           timeout=max(0.1, min(2.0, end - time.monotonic())))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                if time.monotonic() >= end:
                    raise _matcher_error(exc, self.address) from None
            if time.monotonic() >= end:
                raise MatcherError(grpc.StatusCode.UNAVAILABLE, "not serving",
                                   f"The matcher at {self.address} is not ready")
            self._sleep(0.1)

    # ---- internals ------------------------------------------------------------------
    @property
    def _bulk_deadline_s(self) -> float:
        return max(self.deadline_s, BULK_DEADLINE_S)

    def _batches_served(self) -> bool:
        """Whether the matcher serves EnrollBatchStream, asked once per client.

        An older matcher answers UNIMPLEMENTED. It is asked with a stream of no message,
        which enrols and audits nothing, rather than with the first real call: gRPC may
        have taken any number of requests from the stream before that answer came, and
        they would have to be sent again.
        """
        if self._serves_batches is None:
            try:
                self._call(self._stub.EnrollBatchStream, iter(()), retry=True)
                self._serves_batches = True
            except MatcherError as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._serves_batches = False
        return self._serves_batches

    def _call(self, method, request, *, retry: bool, deadline_s: float | None = None):
        """One call with an overall deadline, retried with back-off when that is safe."""
        budget = deadline_s or self.deadline_s
        end = time.monotonic() + budget
        backoff = self.retry.first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            remaining = end - time.monotonic()
            try:
                return method(request, timeout=max(0.05, remaining), wait_for_ready=False)
            except grpc.RpcError as exc:
                code = exc.code()
                wait = max(backoff, _retry_after(exc))
                can_retry = (
                    retry and code in RETRYABLE and not _too_large(exc)
                    and attempt < self.retry.attempts
                    and end - time.monotonic() > wait
                )
                if not can_retry:
                    raise _matcher_error(exc, self.address) from None
                self._sleep(wait)
                backoff = min(backoff * 2, self.retry.max_backoff_s)


def _summary_bounded(first: pb.EnrollRequest, rest: Iterator[pb.EnrollRequest],
                     budget: int, sent: list[int]) -> Iterator[pb.EnrollRequest]:
    """``first`` and then requests of ``rest`` while their summary surely fits ``budget``."""
    request: pb.EnrollRequest | None = first
    cost = 0
    while request is not None:
        sent[0] += 1
        yield request
        cost += len(request.subject.subject_id.encode()) + 3  # as listed in the summary
        if cost >= budget:
            return
        request = next(rest, None)


def enroll_batches(
    requests: Iterable[pb.EnrollRequest],
    *,
    max_subjects: int = ENROLL_BATCH_SUBJECTS,
    max_bytes: int = ENROLL_BATCH_BYTES,
) -> Iterator[pb.EnrollBatch]:
    """Consecutive requests in EnrollBatch messages of at most ``max_subjects`` requests
    and ``max_bytes`` bytes; a request larger than that on its own goes alone."""
    chunk: list[pb.EnrollRequest] = []
    size = 0
    for request in requests:
        n = request.ByteSize() + 4  # its tag and length in the batch
        if chunk and (len(chunk) >= max_subjects or size + n > max_bytes):
            yield pb.EnrollBatch(requests=chunk)
            chunk, size = [], 0
        chunk.append(request)
        size += n
    if chunk:
        yield pb.EnrollBatch(requests=chunk)


def _add_summary(total: pb.EnrollSummary, part: pb.EnrollSummary, offset: int) -> None:
    total.enrolled += part.enrolled
    total.failed += part.failed
    total.subject_ids.extend(part.subject_ids)
    for f in part.failures:
        total.failures.add(index=f.index + offset, subject_id=f.subject_id, code=f.code,
                           message=f.message)


def _retry_after(exc: grpc.RpcError) -> float:
    """The wait an overloaded matcher asks for in its ``retry-after-s`` trailer, or 0."""
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-s":
                return min(float(value), 30.0)
    except (AttributeError, ValueError, TypeError):
        pass
    return 0.0


def _enroll_request(subject_id, fingers, context, replace, labels) -> pb.EnrollRequest:
    return pb.EnrollRequest(
        subject=pb.Subject(subject_id=subject_id,
                           fingers=[template_to_message(t) for t in fingers],
                           labels=labels or {}),
        replace=replace,
        context=context,
    )


def enroll_request(
    subject_id: str,
    fingers: Sequence[Template],
    context: pb.Context,
    *,
    replace: bool = False,
    labels: dict[str, str] | None = None,
) -> pb.EnrollRequest:
    """One message of a bulk enrolment stream."""
    return _enroll_request(subject_id, fingers, context, replace, labels)


def _too_large(exc: grpc.RpcError) -> bool:
    """gRPC refused a message over the size limit (RESOURCE_EXHAUSTED too, but no
    overload: sending it again cannot help)."""
    return (exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "larger than max" in (exc.details() or ""))


def _matcher_error(exc: grpc.RpcError, address: str) -> MatcherError:
    code = exc.code()
    detail = exc.details() or ""
    if _too_large(exc):
        return MatcherError(code, detail, (
            "The request is larger than the matcher accepts (1 MiB per message): send fewer "
            f"or smaller templates ({detail})"))
    messages = {
        grpc.StatusCode.UNAVAILABLE: (
            f"The matcher at {address} cannot be reached. Check the network; the search "
            "was not made."
        ),
        grpc.StatusCode.DEADLINE_EXCEEDED: (
            "The matcher did not answer in time. Try again; if it keeps happening, report it."
        ),
        grpc.StatusCode.INVALID_ARGUMENT: f"The matcher refused the request: {detail}",
        grpc.StatusCode.NOT_FOUND: detail or "Not found on the watchlist",
        grpc.StatusCode.ALREADY_EXISTS: detail,
        grpc.StatusCode.FAILED_PRECONDITION: f"The matcher cannot search: {detail}",
        grpc.StatusCode.PERMISSION_DENIED: (
            "This device or user is not allowed to do that. Ask the system administrator."
        ),
        grpc.StatusCode.UNAUTHENTICATED: (
            "The matcher did not accept this device's credentials. Ask the administrator."
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED: "The matcher is overloaded. Try again shortly.",
    }
    return MatcherError(code, detail, messages.get(code, f"Matcher error: {detail}"))
