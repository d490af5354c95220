"""Per-identity limits, so one caller cannot starve the others (SPEC §3 "Limits"; docs/security.md).

- Concurrent ``MerchantService.Connect`` streams per (merchant_id, agent id): the newest stream over
  the cap is refused, so a client's working stream is never cut by its own reconnect; the streams a
  vanished client left behind are reaped by HTTP/2 keepalive (api/server.py) and free their slots.
- Concurrent ``PlatformService.WatchSession`` streams per platform agent (``sub``), counted the same way.
- Concurrent streams of the services that need no token (``Health.Watch``, reflection).
- Write rates, one token bucket per identity (domain/token_bucket.py): ``OpenSession`` per platform
  agent and per target merchant (the merchant's charged only for a session created, by
  ``charge_opened_session``), ``SendMessage`` per platform agent, merchant replies per agent — unary
  ``Reply`` and replies sent inside ``Connect`` alike (``take_reply``, called by api/replies.py).

Everything is counted in this process: with N replicas a caller gets up to N times each limit. A
refusal is ``RESOURCE_EXHAUSTED`` with an ErrorInfo (``RATE_LIMITED`` / ``TOO_MANY_STREAMS``, the
limit's name and value, nothing about other callers) and a ``google.rpc.RetryInfo``; it happens
before the handler runs, so a refused call writes nothing. Refusals are counted in
``escalation_requests_refused_total{limit}``.

A retry of a write that already succeeded — the same ``request_id`` to OpenSession, the same
``client_msg_id`` to SendMessage or Reply — is never refused and never charged: the replay lookup
comes before every check of current state (SPEC R4, AIP-155). It is one indexed query
(store/sql/limits.sql), run only when a bucket would refuse; a write without an idempotency key is
not a replay.

The interceptor sits inside api/interceptors.py's ``ServerInterceptor``: the caller is verified and
the request decoded before a limit is looked at, and the refusal is mapped like any domain error.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextvars import ContextVar
from typing import Any

import asyncpg
import grpc

from escalation import errors
from escalation.api import session_requests as req
from escalation.api import wire
from escalation.api.handlers import behavior_of, rebuilt
from escalation.api.interceptors import PUBLIC_SERVICES, current_identity
from escalation.auth import Identity, Role
from escalation.config import LimitSettings
from escalation.domain.session import Sender
from escalation.domain.token_bucket import Rate, TokenBuckets
from escalation.domain.validation import IDENTIFIER, Violations
from escalation.observability import metrics
from escalation.store.queries import sql

_OPEN_SESSION = "/escalation.v1.PlatformService/OpenSession"
_SEND_MESSAGE = "/escalation.v1.PlatformService/SendMessage"
_CONNECT = "/escalation.v1.MerchantService/Connect"
_WATCH_SESSION = "/escalation.v1.PlatformService/WatchSession"

_limits: ContextVar[Limits] = ContextVar("escalation_limits")

# Whether a refused write is a retry of one that succeeded (SPEC R4): one indexed query.
Replay = Callable[[asyncpg.Pool], Awaitable[bool]]
# Counts a call in (or refuses it) and returns what counts it out.
_Enter = Callable[[Any], Awaitable[Callable[[], None]]]


class Limits:
    """The counters and buckets of one server process, and the checks that refuse a caller over a limit."""

    def __init__(
        self,
        settings: LimitSettings,
        *,
        pool: asyncpg.Pool,
        stream_retry_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stream_retry_seconds``: the RetryInfo delay of a refused stream — how long keepalive takes at
        most to reap a dead client's streams (api/server.py). ``pool``: for the replay lookups.
        ``clock``: monotonic seconds."""
        self.settings = settings
        self._pool = pool
        self._stream_retry_seconds = stream_retry_seconds
        self._clock = clock
        self._streams: Counter[tuple[str, str]] = Counter()
        self._watches: Counter[str] = Counter()
        self._unauthenticated = 0
        self._buckets = {
            "open_session_per_agent": TokenBuckets(settings.open_session_per_agent),
            "open_session_per_merchant": TokenBuckets(settings.open_session_per_merchant),
            "send_message_per_sender": TokenBuckets(settings.send_message_per_sender),
            "reply_per_sender": TokenBuckets(settings.reply_per_sender),
        }

    def open_streams(self, identity: Identity) -> int:
        """Connect streams ``identity`` holds on this process right now."""
        return self._streams[_merchant_key(identity)]

    def watch_streams(self, identity: Identity) -> int:
        """WatchSession streams ``identity`` (a platform agent) holds on this process right now."""
        return self._watches[identity.subject]

    @property
    def unauthenticated_streams(self) -> int:
        """Health and reflection streams open on this process right now."""
        return self._unauthenticated

    # --- write rates ---------------------------------------------------------------------------

    async def take(
        self,
        *charges: tuple[str, Hashable],
        ensure: tuple[tuple[str, Hashable], ...] = (),
        replay: Replay | None = None,
    ) -> None:
        """Takes one token from each ``(limit, key)`` bucket, or none when any is empty.

        The ``ensure`` buckets must hold a token too, but none is taken from them here: the caller
        charges them (``charge``) once it knows the call did what they count.

        When one is empty and ``replay`` finds the call is a retry of a write that succeeded, takes
        none and returns: the handler answers it from the store (SPEC R4, AIP-155). Otherwise raises
        RateLimited naming the first empty limit, with the wait until its next token; a driver error of
        the lookup propagates (the interceptors translate it, store/db.py).
        """
        now = self._clock()
        for limit, key in charges + ensure:
            wait = self._buckets[limit].wait(key, now)
            if wait > 0:
                if replay is not None and await replay(self._pool):
                    return
                raise self._refusal(limit, self._buckets[limit].rate, wait)
        for limit, key in charges:
            self._buckets[limit].take(key, now)

    def charge(self, limit: str, key: Hashable) -> None:
        """Takes one token from the ``(limit, key)`` bucket if it has one (``take``'s ``ensure`` checked it
        before the call; concurrent calls may have taken it since, so the bucket never goes below empty)."""
        self._buckets[limit].take(key, self._clock())

    def _refusal(self, limit: str, rate: Rate, wait: float) -> errors.RateLimited:
        metrics.REQUESTS_REFUSED.labels(limit=limit).inc()
        return errors.RateLimited(
            f"rate limit {limit} ({rate.per_second:g}/s, bursts of {rate.burst}) reached; retry in {wait:.3g} s",
            retry_delay_seconds=wait,
            metadata={"limit": limit, "rate_per_second": f"{rate.per_second:g}", "burst": str(rate.burst)},
        )

    # --- streams -------------------------------------------------------------------------------

    def enter_connect(self, identity: Identity) -> tuple[str, str]:
        """Counts a new Connect stream of ``identity``; raises TooManyStreams when it is over the cap."""
        key = _merchant_key(identity)
        cap = self.settings.connect_streams_per_identity
        if self._streams[key] >= cap:
            raise self._too_many("connect_streams_per_identity", cap)
        self._streams[key] += 1
        return key

    def leave_connect(self, key: tuple[str, str]) -> None:
        self._streams[key] -= 1
        if self._streams[key] <= 0:
            del self._streams[key]

    def enter_watch(self, identity: Identity) -> str:
        """Counts a new WatchSession stream of ``identity``; raises TooManyStreams when it is over the cap."""
        key = identity.subject
        cap = self.settings.watch_streams_per_identity
        if self._watches[key] >= cap:
            raise self._too_many("watch_streams_per_identity", cap)
        self._watches[key] += 1
        return key

    def leave_watch(self, key: str) -> None:
        self._watches[key] -= 1
        if self._watches[key] <= 0:
            del self._watches[key]

    def enter_unauthenticated(self) -> None:
        """Counts a new health or reflection stream; raises TooManyStreams when over the cap."""
        cap = self.settings.unauthenticated_streams
        if self._unauthenticated >= cap:
            raise self._too_many("unauthenticated_streams", cap)
        self._unauthenticated += 1

    def leave_unauthenticated(self) -> None:
        self._unauthenticated -= 1

    def _too_many(self, limit: str, cap: int) -> errors.TooManyStreams:
        metrics.REQUESTS_REFUSED.labels(limit=limit).inc()
        return errors.TooManyStreams(
            f"stream limit {limit} ({cap} at a time) reached; close a stream or retry later",
            retry_delay_seconds=self._stream_retry_seconds,
            metadata={"limit": limit, "max_streams": str(cap)},
        )


def _merchant_key(identity: Identity) -> tuple[str, str]:
    return (identity.merchant_id or "", identity.subject)


async def take_reply(session_id: str, client_msg_id: str) -> None:
    """Charges the calling merchant agent one reply (unary ``Reply`` or a reply frame inside ``Connect``).

    ``session_id`` and ``client_msg_id`` are the request's, unchecked. Raises RateLimited when its
    ``reply_per_sender`` bucket is empty (SPEC §3 "Limits") and the reply is not a retry of one that
    succeeded (SPEC R4); raises LookupError (an internal error, never an unlimited call) outside an RPC
    that passed ``LimitsInterceptor``.
    """
    identity = current_identity()
    await _limits.get().take(
        ("reply_per_sender", _merchant_key(identity)), replay=_message_replay(identity, session_id, client_msg_id)
    )


def _session_replay(caller: Identity, request_id: str) -> Replay | None:
    """Whether ``caller`` already opened a session with ``request_id``; None for an id the handler refuses."""
    if not IDENTIFIER.fullmatch(request_id):
        return None

    async def replayed(pool: asyncpg.Pool) -> bool:
        return bool(await pool.fetchval(sql("is_opened_request"), caller.subject, request_id))

    return replayed


def _message_replay(caller: Identity, session_id: str, client_msg_id: str) -> Replay | None:
    """Whether ``caller`` already sent ``client_msg_id`` in ``session_id``; None without a (valid) key."""
    check = Violations()
    sid = req.session_id(check, session_id)
    msg_id = req.client_msg_id(check, client_msg_id)
    if check or msg_id is None:
        return None
    sender = Sender.MERCHANT if caller.role is Role.MERCHANT else Sender.PLATFORM
    merchant_id = caller.merchant_id if caller.role is Role.MERCHANT else None

    async def replayed(pool: asyncpg.Pool) -> bool:
        found = await pool.fetchval(sql("is_sent_message"), sid, sender.value, caller.subject, msg_id, merchant_id)
        return bool(found)

    return replayed


def charge_opened_session(merchant_id: str) -> None:
    """Charges ``merchant_id``'s ``open_session_per_merchant`` bucket for a session just created.

    Called by the OpenSession handler for a new session only — not a replay, not a failed call — so
    invalid or refused requests cannot use up a merchant's budget for everyone (SPEC §3 "Limits").
    The interceptor checked the bucket had a token before the handler ran: N concurrent calls may
    overshoot the burst by at most N - 1. Raises LookupError outside a call that passed ``LimitsInterceptor``.
    """
    _limits.get().charge("open_session_per_merchant", merchant_id)


def _open_session_merchant(request: Any) -> tuple[tuple[str, Hashable], ...]:
    # An id the handler rejects anyway gets no bucket (and cannot fill memory with junk keys).
    if IDENTIFIER.fullmatch(request.merchant_id):
        return (("open_session_per_merchant", request.merchant_id),)
    return ()


class LimitsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies ``limits`` to every call; must come after ``ServerInterceptor`` in the server's list."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        service = method.lstrip("/").partition("/")[0]
        limits = self.limits
        streaming = handler.request_streaming or handler.response_streaming
        enter: _Enter
        if service in PUBLIC_SERVICES and streaming:

            async def enter(request: Any) -> Callable[[], None]:
                limits.enter_unauthenticated()
                return limits.leave_unauthenticated

        elif method == _CONNECT:

            async def enter(request: Any) -> Callable[[], None]:
                key = limits.enter_connect(current_identity())
                return lambda: limits.leave_connect(key)

        elif method == _WATCH_SESSION:

            async def enter(request: Any) -> Callable[[], None]:
                key = limits.enter_watch(current_identity())
                return lambda: limits.leave_watch(key)

        elif method == _OPEN_SESSION:

            async def enter(request: Any) -> Callable[[], None]:
                # The caller's own bucket pays for each of its calls, valid or not; the merchant's is
                # only checked here and charged by the handler for a session it created.
                caller = current_identity()
                await limits.take(
                    ("open_session_per_agent", caller.subject),
                    ensure=_open_session_merchant(request),
                    replay=_session_replay(caller, request.request_id),
                )
                return _nothing

        elif method == _SEND_MESSAGE:

            async def enter(request: Any) -> Callable[[], None]:
                caller = current_identity()
                replay = _message_replay(caller, request.session_id, request.client_msg_id)
                await limits.take(("send_message_per_sender", caller.subject), replay=replay)
                return _nothing

        else:

            async def enter(request: Any) -> Callable[[], None]:
                return _nothing

        return _wrapped(handler, limits, enter)


def _nothing() -> None:
    return None


async def _entered(enter: _Enter, request: Any) -> Callable[[], None]:
    """``enter(request)``; a refused request stream is closed unread, so grpc does not warn about it later."""
    try:
        return await enter(request)
    except errors.EscalationError:
        if isinstance(request, wire.DecodedFrames):
            await request.aclose()
        raise


def _wrapped(
    handler: grpc.RpcMethodHandler[Any, Any], limits: Limits, enter: _Enter
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, run with ``limits`` bound for ``take_reply`` and between ``enter`` and what it returns."""
    behavior = behavior_of(handler)
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            _limits.set(limits)
            leave = await _entered(enter, request)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                leave()

        wrapped = streaming
    else:

        async def called(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            _limits.set(limits)
            leave = await _entered(enter, request)
            try:
                return await behavior(request, context)
            finally:
                leave()

        wrapped = called
    return rebuilt(handler, wrapped)
