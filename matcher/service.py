"""The gRPC servicer of ``ink.v1.Matcher``: messages in, calls on the watchlist, messages out.

It stays thin on purpose: all decisions live in :mod:`matcher.watchlist`; here requests
are translated (:mod:`matcher.messages`), every search and change is audited, and domain
errors become status codes with a message a person can act on. Error messages name the
problem, never the probe's content. Bulk enrolment streams are received and enrolled by
:mod:`matcher.enrol_stream`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from matcher import decision
from matcher.access import DeviceMismatch, client_identity
from matcher.audit import AuditError, AuditLog
from matcher.enrol_stream import BulkEnrolment, requests_of_batches
from matcher.interceptors import current_device_binding
from matcher.messages import (
    checked_subject_id,
    context_from_message,
    probes_from_messages,
    subject_from_message,
    subject_to_message,
)
from matcher.store import StoreError
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


def _status_name(exc: Exception) -> str:
    """The status code name a refused subject of a bulk enrolment reports."""
    return (status_for(exc) or grpc.StatusCode.INTERNAL).name


@contextmanager
def _status(context: grpc.ServicerContext):
    """Turn domain errors into status codes; anything else is an internal error."""
    try:
        yield
    except grpc.RpcError:
        # Raised by a stream's requests when gRPC has ended the call already (cancelled,
        # past its deadline, a message over the size limit): the client has its status.
        log.info("a request stream ended before its answer")
        context.abort(grpc.StatusCode.CANCELLED, "the request stream ended before its answer")
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
        self.bulk = BulkEnrolment(watchlist, audit, _status_name)

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

    def EnrollStream(self, request_iterator: Iterator[pb.EnrollRequest], context
                     ) -> pb.EnrollSummary:
        """Bulk enrolment, one subject per message (:mod:`matcher.enrol_stream`)."""
        with _status(context):
            return self.bulk.run(request_iterator, current_device_binding(),
                                 client_label(context))

    def EnrollBatchStream(self, request_iterator: Iterator[pb.EnrollBatch], context
                          ) -> pb.EnrollSummary:
        """Bulk enrolment, many subjects per message: their requests form one stream."""
        with _status(context):
            return self.bulk.run(requests_of_batches(request_iterator),
                                 current_device_binding(), client_label(context))

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
