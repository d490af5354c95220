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
from escalation.api.handlers import behavior_of, rebuilt
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


def _rebuild(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Any], *, serialized: bool
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with ``behavior`` in place of its own, receiving request bytes (decoded by api/wire.py)
    and, when ``serialized``, returning response bytes."""
    return rebuilt(handler, behavior, raw_request=True, raw_response=serialized)


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
        pairs = tuple(handler_call_details.invocation_metadata or ())
        metadata = {k: v for k, v in pairs}
        request_id = _request_id(metadata)
        identity: Identity | None = None
        failure: Exception | None = None
        if service not in PUBLIC_SERVICES:
            try:
                identity = await self._authorize(service, method, pairs)
            except Exception as exc:
                # Raised in the handler, never here: a domain error gets its status (api/status.py), a
                # bug (say a decoder's OverflowError) is logged with its traceback and answered
                # INTERNAL; escaping intercept_service it would reach the client as UNKNOWN.
                failure = exc
        return _guarded(handler, service, name, request_id, identity, failure)

    async def _authorize(self, service: str, method: str, pairs: tuple[tuple[str, str | bytes], ...]) -> Identity:
        """The verified caller, if its role may call ``service`` (SPEC §3); raises Unauthenticated or
        PermissionDenied."""
        identity = await self._verifier.verify_async(_credential(pairs))
        if identity.role not in SERVICE_ROLES.get(service, frozenset()):
            raise errors.PermissionDenied(f"role {identity.role.value!r} may not call {method}")
        return identity


def _credential(pairs: tuple[tuple[str, str | bytes], ...]) -> str | None:
    """The one ``authorization`` value; more than one is UNAUTHENTICATED (SPEC §3).

    Which of several credentials would win depends on the proxy and library in between (grpc keeps
    them all, a dict keeps the last), so none is chosen: [merchant, ops] must not run as ops.
    """
    values = [v for k, v in pairs if k == "authorization"]
    if len(values) > 1:
        raise errors.Unauthenticated(f"send one authorization entry, not {len(values)}", reason="TOKEN_DUPLICATED")
    return _text(values[0]) if values else None


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
    failure: Exception | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    behavior = behavior_of(handler)
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

    # Serialized here, inside the guard: a response that does not serialize (a handler bug) would
    # otherwise fail in grpc core, after the guard, and reach the client as UNKNOWN. Handlers that
    # write with context.write keep the serializer; their writes run inside the guard anyway.
    serialize = handler.response_serializer or (lambda response: response)

    if inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with enter(context):
                async for item in behavior(decoded(request), context):
                    yield serialize(item)

        return _rebuild(handler, stream_behavior, serialized=True)

    async def unary_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with enter(context):
            response = await behavior(decoded(request), context)
            # A streaming handler in context.write style returns None once it has written everything.
            return response if handler.response_streaming else serialize(response)

    return _rebuild(handler, unary_behavior, serialized=not handler.response_streaming)
