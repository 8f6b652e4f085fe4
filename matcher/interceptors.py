"""gRPC server interceptor in front of every Matcher RPC: request decoding, roles, rates.

It wraps the handlers of ``ink.v1.Matcher`` only, so health checking and reflection stay
open to everyone. A request that is not a valid protobuf message ends with
INVALID_ARGUMENT (gRPC itself would answer INTERNAL, which reads as a matcher fault).
With an access policy, a refused call ends with PERMISSION_DENIED or RESOURCE_EXHAUSTED
and a message that says what to do; the servicer never sees it. A device-role client
that names another device in its request context is refused too (see
:mod:`matcher.access`); the servicer learns the caller's device binding through
:func:`current_device_binding`. Refusals for lack of a role or for a foreign device id
are audited (who tried what); refusals for rate are only counted, so a flood cannot
flood the audit trail too.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import Callable

import grpc

from matcher.access import (
    MATCHER_SERVICE,
    RATE_LIMITED,
    AccessPolicy,
    ClientIdentity,
    DeviceBinding,
    DeviceMismatch,
    Grant,
    Role,
    client_identity,
)
from matcher.ratelimit import RateLimiter
from matcher.template import TemplateError

log = logging.getLogger(__name__)

# Called with (method, client, role label, request or None, what else the record says)
# when a call is refused for its role or for naming another device.
DenialRecorder = Callable[[str, ClientIdentity, str, object, dict], None]

# The device binding of the call this thread serves; None without an access policy.
_BINDING: contextvars.ContextVar[DeviceBinding | None] = contextvars.ContextVar(
    "ink_device_binding", default=None)


def current_device_binding() -> DeviceBinding | None:
    """The device binding of the caller of the RPC being served (None: no access policy)."""
    return _BINDING.get()


class _Undecodable:
    """Stands in for a request whose bytes are not the message the RPC takes."""


UNDECODABLE = _Undecodable()


def _lenient(deserialize):
    def parse(raw: bytes):
        try:
            return deserialize(raw)
        except Exception:  # protobuf raises DecodeError, and others on odd input
            return UNDECODABLE

    return parse


def _undecodable_message(method: str) -> str:
    return (f"the request is not a valid ink.v1 {method} message; check that the client "
            "was generated from the same matcher.proto as the matcher")


class AccessInterceptor(grpc.ServerInterceptor):
    """Decoding check, role check, then rate check, before every Matcher RPC.

    Without a policy (``None``) only the decoding check applies: every client may call
    everything, with no rate limit.
    """

    def __init__(
        self,
        policy: AccessPolicy | None,
        limiter: RateLimiter | None = None,
        on_denied: DenialRecorder | None = None,
    ) -> None:
        self.policy = policy
        self.limiter = limiter or RateLimiter()
        self.on_denied = on_denied
        self.denied = 0
        self.rate_limited = 0
        self._count_lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != MATCHER_SERVICE:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request, context):
                if request is UNDECODABLE:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable_message(method))
                grant = self._admit(method, context, request)
                token = _BINDING.set(grant.device if grant else None)
                try:
                    return inner(request, context)
                finally:
                    _BINDING.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            inner_stream = handler.stream_unary

            def checked(request_iterator):
                for request in request_iterator:
                    if request is UNDECODABLE:
                        # A domain error, so the servicer's error mapping answers it.
                        raise TemplateError(_undecodable_message(method))
                    yield request

            def stream(request_iterator, context):
                grant = self._admit(method, context, None)
                token = _BINDING.set(grant.device if grant else None)
                try:
                    return inner_stream(checked(request_iterator), context)
                finally:
                    _BINDING.reset(token)

            return grpc.stream_unary_rpc_method_handler(
                stream, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        # The contract has no other shapes; refuse rather than pass one through unchecked.
        return _refuse_unknown_shape(method)

    def _admit(self, method: str, context: grpc.ServicerContext, request) -> Grant | None:
        if self.policy is None:
            client = client_identity(context.auth_context(), context.peer())
            if not client.has_certificate:
                return None
            # No access file: everything is allowed, but a client certificate still names
            # the device a request leaves unnamed (the gateway sends none with --cert).
            return Grant(Role.ADMIN, None, "no access file",
                         DeviceBinding(client.device_name, may_name=True))
        client = client_identity(context.auth_context(), context.peer())
        grant = self.policy.grant(client)
        message = self.policy.denial(client, method, grant)
        if message is not None:
            self._refuse(method, context, client, grant, request, message, {})
        claimed = getattr(request, "context", None)
        if claimed is not None:
            try:
                grant.device.resolve(claimed.device_id.strip())
            except DeviceMismatch as exc:
                self._refuse(method, context, client, grant, request, str(exc),
                             {"reason": "device id not the certificate's",
                              "certified_device": grant.device.certified})
        if method in RATE_LIMITED and grant.rate_limit is not None:
            wait = self.limiter.take(client.key, grant.rate_limit)
            if wait > 0:
                with self._count_lock:
                    self.rate_limited += 1
                seconds = max(1, math.ceil(wait))
                context.set_trailing_metadata((("retry-after-s", str(seconds)),))
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many searches from this device ({client.label}); wait {seconds} s "
                    f"(limit {grant.rate_limit.per_second:g} per second, "
                    f"bursts of {grant.rate_limit.burst:g})",
                )
        return grant

    def _refuse(self, method: str, context: grpc.ServicerContext, client: ClientIdentity,
                grant: Grant, request, message: str, details: dict) -> None:
        with self._count_lock:
            self.denied += 1
        log.warning("refused %s to %s (role %s)%s", method, client.label, grant.role.label,
                    f": {details['reason']}" if details else "")
        if self.on_denied is not None:
            try:
                self.on_denied(method, client, grant.role.label, request, details)
            except Exception:
                # A refusal stays a refusal even when it cannot be audited.
                log.exception("could not audit a refused %s", method)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, message)


def _refuse_unknown_shape(method: str):
    def refuse(request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served")

    return grpc.unary_unary_rpc_method_handler(refuse)
