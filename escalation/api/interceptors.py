"""The server interceptor: request id, authentication, role check, error mapping, RPC metrics.

Every RPC passes through ``_guarded``: its request bytes are decoded there (api/wire.py), so bytes
that do not decode are INVALID_ARGUMENT; domain errors become their status (api/status.py), driver
errors are translated once (store/db.py), anything else is logged with its traceback and the caller
gets INTERNAL without one. Every RPC is counted once when it ends, CANCELLED or DEADLINE_EXCEEDED
when its client ended it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from escalation import errors
from escalation.api import status, wire
from escalation.auth import Identity, Role, TokenVerifier
from escalation.observability import metrics
from escalation.store import db

log = structlog.get_logger(__name__)

_PLATFORM = frozenset({Role.PLATFORM, Role.PLATFORM_SUPERVISOR})
# SPEC §3: which roles may call which service. Services not listed need no token.
SERVICE_ROLES: Mapping[str, frozenset[Role]] = {
    "escalation.v1.PlatformService": _PLATFORM,
    "escalation.v1.MerchantService": frozenset({Role.MERCHANT}),
    "escalation.v1.MerchantAdminService": frozenset({Role.MERCHANT, Role.OPS}),
    "escalation.v1.OpsService": frozenset({Role.OPS}),
}
# Health must answer load balancers without credentials; reflection only describes the public API.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
REQUEST_ID_HEADER = "x-request-id"
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

_identity: ContextVar[Identity] = ContextVar("escalation_identity")


def current_identity() -> Identity:
    """The verified caller of the RPC being handled."""
    return _identity.get()


def _request_id(metadata: Mapping[str, str | bytes]) -> str:
    supplied = metadata.get(REQUEST_ID_HEADER)
    if isinstance(supplied, str) and 0 < len(supplied) <= 128 and supplied.isprintable():
        return supplied
    return uuid.uuid4().hex


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, request_id: str) -> None:
    """Ends the RPC with the status ``exc`` stands for; never returns."""
    domain = db.translate(exc)
    if domain is None:
        log.error("rpc.internal_error", exc_info=exc)
        proto = status.internal_status_proto()
    else:
        if isinstance(domain, errors.DatabaseUnavailable | errors.ConcurrentUpdate):
            log.warning("rpc.retryable_error", reason=domain.reason, error=str(exc))
        proto = status.to_status_proto(domain)
    await context.abort(
        _CODE_BY_NUMBER[proto.code],
        proto.message,
        trailing_metadata=(
            ("grpc-status-details-bin", proto.SerializeToString()),
            (REQUEST_ID_HEADER, request_id),
        ),
    )


def _kind(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _rebuild(handler: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with ``behavior`` in place of its own, receiving request bytes (decoded by api/wire.py)."""
    factory = {
        "unary": grpc.unary_unary_rpc_method_handler,
        "server_stream": grpc.unary_stream_rpc_method_handler,
        "client_stream": grpc.stream_unary_rpc_method_handler,
        "bidi_stream": grpc.stream_stream_rpc_method_handler,
    }[_kind(handler)]
    return factory(behavior, request_deserializer=None, response_serializer=handler.response_serializer)


def _original(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    assert behavior is not None
    return behavior


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates, authorises, binds log context, maps errors and records RPC metrics."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        _, service, name = method.split("/", 2)
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ())}
        request_id = _request_id(metadata)
        identity: Identity | None = None
        failure: errors.EscalationError | None = None
        if service not in PUBLIC_SERVICES:
            try:
                identity = await self._verifier.verify_async(_text(metadata.get("authorization")))
                allowed = SERVICE_ROLES.get(service, frozenset())
                if identity.role not in allowed:
                    raise errors.PermissionDenied(f"role {identity.role.value!r} may not call {method}")
            except errors.EscalationError as exc:
                failure = exc
        return _guarded(handler, service, name, request_id, identity, failure)


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# A client that cancels, lets its deadline pass or drops the connection ends the call in grpc core: the
# handler's task is cancelled, or a write (or the final status) it had under way fails first with
# ExecuteBatchError (an InternalError). A deadline that has passed reads as at most this much left (s).
_DEADLINE_SLACK_SECONDS = 0.01


def _ended_by_client(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Outcome:
    """Ends one RPC: turns what its handler raised into a status and counts the RPC exactly once.

    Domain errors become their status (api/status.py), driver errors are translated once (store/db.py),
    anything else is logged with its traceback and answered INTERNAL. A call the client ended (cancel,
    deadline, lost connection) is counted CANCELLED or DEADLINE_EXCEEDED and never logged as an error
    (SPEC §3).
    """

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], labels: Mapping[str, str], request_id: str) -> None:
        self._context = context
        self._labels = labels
        self._request_id = request_id
        self._started = time.perf_counter()

    async def __aenter__(self) -> _Outcome:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        code: grpc.StatusCode | None = None
        try:
            if exc is None:
                code = grpc.StatusCode.OK
            elif isinstance(exc, grpc.aio.AbortError):
                code = self._context.code() or grpc.StatusCode.UNKNOWN
            elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
                code = _ended_by_client(self._context)
            elif isinstance(exc, grpc.aio.InternalError):
                code = _ended_by_client(self._context)
                log.info("rpc.client_gone", code=code.name, error=str(exc))
                # grpc.aio treats a cancelled handler as the quiet end of a call nobody waits for.
                raise asyncio.CancelledError() from exc
            elif isinstance(exc, Exception):
                if isinstance(exc, NotImplementedError):
                    # What a generated servicer base class raises for a method it was not given (e.g. a
                    # newer grpc.health.v1.Health/List than the health servicer implements).
                    exc = errors.Unimplemented(f"{exc} ({self._labels['grpc_service']}/{self._labels['grpc_method']})")
                domain = db.translate(exc)
                code = status.code_for(domain) if domain else grpc.StatusCode.INTERNAL
                await abort(self._context, exc, self._request_id)
        finally:
            metrics.GRPC_HANDLED.labels(**self._labels, grpc_code=(code or _ended_by_client(self._context)).name).inc()
            metrics.GRPC_HANDLING_SECONDS.labels(**self._labels).observe(time.perf_counter() - self._started)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any],
    service: str,
    name: str,
    request_id: str,
    identity: Identity | None,
    failure: errors.EscalationError | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    behavior = _original(handler)
    kind = _kind(handler)
    labels = {"grpc_service": service, "grpc_method": name, "grpc_type": kind}
    method = f"/{service}/{name}"

    def enter(context: grpc.aio.ServicerContext[Any, Any]) -> _Outcome:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=f"{service}/{name}")
        if identity is not None:
            _identity.set(identity)
            structlog.contextvars.bind_contextvars(caller=identity.subject, role=identity.role.value)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return _Outcome(context, labels, request_id)

    def decoded(request: Any) -> Any:
        """The request (or request stream) decoded; an unauthenticated caller's bytes are never decoded."""
        if failure is not None:
            raise failure
        if handler.request_streaming:
            return wire.DecodedFrames(request, handler.request_deserializer, method)
        return wire.decode(handler.request_deserializer, request, method=method)

    if inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with enter(context):
                async for item in behavior(decoded(request), context):
                    yield item

        return _rebuild(handler, stream_behavior)

    async def unary_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with enter(context):
            return await behavior(decoded(request), context)

    return _rebuild(handler, unary_behavior)
