"""MerchantClient: a merchant agent's Connect stream that reconnects, resumes and acks by itself.

The contract (docs/clients.md "Reconnect and resume"): ``events()`` yields every event of the agent's
log exactly once and in cursor order across reconnects, restarts (with a FileCursorStore) and replica
failures, and a ``CursorExpired`` when it cannot (SPEC R8).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from escalation.client.backoff import Backoff
from escalation.client.cursors import CursorStore, MemoryCursorStore
from escalation.client.errors import ClientError, from_rpc_error
from escalation.client.stream import Connection, IdleTimeout
from escalation.client.transport import EXPIRED_REASON, Retry, TlsOptions, TokenSource, Transport
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2

__all__ = ["ConnectionState", "CursorExpired", "MerchantClient"]

# A stream failing with one of these is reconnected; any other code (INVALID_ARGUMENT, PERMISSION_DENIED,
# NOT_FOUND, UNAUTHENTICATED with a fixed token…) is an answer a reconnect would only repeat, so
# events() raises it. INTERNAL, UNKNOWN and CANCELLED are what a connection cut mid-frame or a replica
# cancelling its streams at shutdown look like.
RECONNECT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
CURSOR_EXPIRED = "CURSOR_EXPIRED"
# Reason of a CursorExpired the client raises itself: a stream that started at live events (no cursor)
# was lost before its first event, so what was written meanwhile is unknown.
CURSOR_UNKNOWN = "CURSOR_UNKNOWN"


class ConnectionState(enum.Enum):
    """Where the stream is, for a status line: reported through ``on_state``.

    CONNECTED means the server confirmed the stream's position (its StreamStarted frame): from then on
    every event after the reported cursor reaches the caller, and a ListSessions made now misses nothing.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True)
class CursorExpired:
    """The client could not resume: rebuild your state from ``sessions`` before the next event.

    ``reason``: ``CURSOR_EXPIRED`` (the server no longer holds the events after the cursor, SPEC R8) or
    ``CURSOR_UNKNOWN`` (a stream without a cursor was lost before the server confirmed its position). ``oldest_cursor``:
    the oldest cursor the server still holds (CURSOR_EXPIRED only). ``sessions``: every OPEN session the
    agent sees, newest first, listed after the server confirmed the new stream's position (StreamStarted),
    so every change after the listing
    arrives as a later event; an event may also repeat what the listing already shows (apply events
    idempotently: a MessageAdded whose seq ≤ the session's last_seq is already known).
    """

    reason: str
    oldest_cursor: int | None
    sessions: tuple[common_pb2.Session, ...] = field(default_factory=tuple)


MerchantItem = merchant_pb2.MerchantEvent | CursorExpired
StateCallback = Callable[[ConnectionState, int | None], None]


class MerchantClient:
    """A merchant agent's client: the resumable event stream plus replies, read receipts and lists.

    ``target``: gRPC target (see Transport). ``token``: the agent's JWT, or a callable (sync or async)
    returning a fresh one, asked at every call and reconnect. ``cursor_store``: where processed cursors
    are kept (default MemoryCursorStore). ``tls``: TlsOptions, None for plaintext. ``on_state``: called
    with (ConnectionState, processed cursor or None) on every change. ``backoff``: reconnect delays.
    ``idle_timeout``: seconds without any frame before the stream is deemed dead (the server sends a
    heartbeat after ESCALATION_STREAM_HEARTBEAT_SECONDS, default 15, of silence). ``retry``: unary retries.
    """

    def __init__(
        self,
        target: str,
        token: TokenSource,
        *,
        cursor_store: CursorStore | None = None,
        tls: TlsOptions | None = None,
        on_state: StateCallback | None = None,
        backoff: Backoff | None = None,
        idle_timeout: float = 45.0,
        retry: Retry | None = None,
    ) -> None:
        self._transport = Transport(target, token, tls, retry or Retry())
        self._store: CursorStore = cursor_store if cursor_store is not None else MemoryCursorStore()
        self._on_state = on_state
        self._backoff = backoff or Backoff()
        self._idle_timeout = idle_timeout
        self._state = ConnectionState.CLOSED
        self._cursor: int | None = None
        self._connection: Connection | None = None
        self.last_error: ClientError | None = None  # what ended the last connection (None: a silent drop)
        self._closing = asyncio.Event()
        self._unconfirmed_reads: dict[str, int] = {}  # session_id → seq sent, until its ReadReceipt event

    async def __aenter__(self) -> MerchantClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Ends the stream (a running ``events()`` then ends normally) and closes the channel (also ``aclose``)."""
        self._closing.set()
        if self._connection is not None:
            self._connection.close()
        await self._transport.close()
        self._set_state(ConnectionState.CLOSED)

    aclose = close

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def cursor(self) -> int | None:
        """The cursor of the last event the caller processed (None before the first)."""
        return self._cursor

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_state is not None:
                self._on_state(state, self._cursor)

    # --- the stream -------------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[MerchantItem, None]:
        """Yields the agent's events (``MerchantEvent``) in cursor order, each once, forever.

        An event counts as processed when the caller asks for the next item: only then is its cursor
        saved to the cursor store and acked, so a crash while handling one replays it after the restart
        (at least once across a crash of the caller; exactly once otherwise). Reconnects on UNAVAILABLE,
        RESOURCE_EXHAUSTED (a slow consumer cut off), a killed replica, a silent connection (idle_timeout)
        and an expired refreshable token, with full-jitter backoff, resuming from the processed cursor and
        dropping any event at or below the last one yielded. On OUT_OF_RANGE CURSOR_EXPIRED it starts a
        live stream, lists the open sessions and yields ``CursorExpired`` (see there). Raises ClientError
        for a status a reconnect would only repeat (PERMISSION_DENIED, INVALID_ARGUMENT, …). Only one
        ``events()`` iteration may run at a time. The contract in full: docs/clients.md (SPEC R8).
        """
        loop = asyncio.get_running_loop()
        processed = self._cursor = await self._store.load()
        seen = processed  # the highest cursor yielded: never yield one twice
        resync: tuple[str, int | None] | None = None
        attempt = 0
        self._set_state(ConnectionState.CONNECTING)
        try:
            while not self._closing.is_set():
                connected_at = loop.time()
                opened_without_cursor = processed is None
                connection = self._connection = Connection(
                    self._transport.channel(), await self._transport.metadata(), processed
                )
                failure: ClientError | None = None
                positioned = False
                try:
                    for session_id, seq in self._unconfirmed_reads.items():
                        connection.send(_read_receipt(session_id, seq))
                    while (frame := await connection.read(self._idle_timeout)) is not None:
                        kind = frame.WhichOneof("frame")
                        if not positioned:
                            # The first frame, StreamStarted from this server: the stream is positioned.
                            positioned = True
                            # Without a cursor nothing before the live head is owed: resume from it from
                            # now on (after a resync only once the caller has taken the CursorExpired).
                            head = frame.started.cursor if kind == "started" and processed is None else None
                            if head is not None and resync is None:
                                processed, head = head, None
                                seen = processed if seen is None else max(seen, processed)
                                await self._save(processed)
                            self._set_state(ConnectionState.CONNECTED)
                            if resync is not None:
                                # Listed after the stream's position was taken: nothing falls between.
                                sessions = await self._open_sessions()
                                yield CursorExpired(reason=resync[0], oldest_cursor=resync[1], sessions=sessions)
                                resync = None
                            if head is not None:
                                processed = head
                                seen = processed if seen is None else max(seen, processed)
                                await self._save(processed)
                        if kind == "heartbeat":
                            # Answer with what was processed: the server's view of this agent stays fresh.
                            if processed is not None:
                                connection.send(_ack(processed))
                            continue
                        if kind != "event" or (seen is not None and frame.event.cursor <= seen):
                            continue
                        event = frame.event
                        seen = event.cursor
                        yield event
                        processed = event.cursor
                        await self._save(processed)
                        connection.send(_ack(processed))
                        self._confirm_read(event)
                except grpc.aio.AioRpcError as rpc_error:
                    failure = from_rpc_error(rpc_error)
                except ClientError as err:  # the resync's ListSessions
                    failure = err
                except IdleTimeout:
                    failure = None
                finally:
                    connection.close()
                    self._connection = None
                if self._closing.is_set():
                    return
                self.last_error = failure
                if failure is not None and failure.code is grpc.StatusCode.OUT_OF_RANGE:
                    if failure.reason != CURSOR_EXPIRED:
                        raise failure
                    oldest = failure.metadata.get("oldest_cursor", "")
                    resync = (CURSOR_EXPIRED, int(oldest) if oldest.isdigit() else None)
                    processed = None
                    continue  # nothing to wait for: the live stream starts at once
                if resync is None and opened_without_cursor and processed is None:
                    resync = (CURSOR_UNKNOWN, None)
                if failure is not None and not self._reconnectable(failure):
                    raise failure
                if loop.time() - connected_at >= self._backoff.reset_after:
                    attempt = 0
                self._set_state(ConnectionState.RECONNECTING)
                if failure is not None and failure.reason == EXPIRED_REASON:
                    continue  # a fresh token is asked for at once
                retry_after = failure.retry_delay if failure is not None and failure.retry_delay else 0.0
                with contextlib.suppress(TimeoutError):  # close() ends the wait at once
                    await asyncio.wait_for(self._closing.wait(), self._backoff.delay(attempt, at_least=retry_after))
                attempt += 1
        finally:
            self._set_state(ConnectionState.CLOSED)

    def _reconnectable(self, failure: ClientError) -> bool:
        if failure.code is grpc.StatusCode.UNAUTHENTICATED:
            return failure.reason == EXPIRED_REASON and self._transport.refreshable
        return failure.code in RECONNECT_CODES

    async def _save(self, cursor: int) -> None:
        await self._store.save(cursor)
        self._cursor = cursor

    def _confirm_read(self, event: merchant_pb2.MerchantEvent) -> None:
        if event.WhichOneof("kind") == "read_receipt":
            receipt = event.read_receipt
            if self._unconfirmed_reads.get(receipt.session_id, receipt.seq + 1) <= receipt.seq:
                del self._unconfirmed_reads[receipt.session_id]

    async def _open_sessions(self) -> tuple[common_pb2.Session, ...]:
        sessions: list[common_pb2.Session] = []
        page_token = ""
        while True:
            page = await self.list_sessions(state=common_pb2.SESSION_STATE_OPEN, page_token=page_token)
            sessions.extend(page.sessions)
            if not (page_token := page.next_page_token):
                return tuple(sessions)

    def _stub(self) -> Any:
        # grpc.aio stubs: the generated .pyi types them as sync stubs.
        return merchant_pb2_grpc.MerchantServiceStub(self._transport.channel())

    # --- writes and reads -----------------------------------------------------------------------------

    async def mark_read(self, session_id: str, seq: int) -> None:
        """Reports every message up to ``seq`` of ``session_id`` read (SPEC R8 read receipts).

        Sent over the Connect stream, so ``events()`` must be running; a receipt not yet confirmed by its
        ReadReceipt event is sent again after a reconnect (the read mark only moves forward, so a repeat
        is harmless).
        """
        if self._unconfirmed_reads.get(session_id, 0) >= seq:
            return
        self._unconfirmed_reads[session_id] = seq
        if self._connection is not None:
            self._connection.send(_read_receipt(session_id, seq))

    async def reply(
        self,
        session_id: str,
        *,
        text: str | None = None,
        image: common_pb2.Image | None = None,
        emoji: str | None = None,
        template_id: str | None = None,
        client_msg_id: str | None = None,
    ) -> common_pb2.Message:
        """Sends one reply (exactly one of text, image, emoji, template_id) and returns the stored Message.

        A ``client_msg_id`` (default: a new UUID) makes retries safe: transient failures are retried with
        the same id and the server returns the original message (SPEC R4). Raises ClientError, e.g.
        FAILED_PRECONDITION SESSION_CLOSED or INVALID_ARGUMENT with field violations.
        """
        given = [v is not None for v in (text, image, emoji, template_id)]
        if sum(given) != 1:
            raise ValueError("exactly one of text, image, emoji, template_id")
        request = merchant_pb2.ReplyRequest(session_id=session_id, client_msg_id=client_msg_id or uuid.uuid4().hex)
        if text is not None:
            request.content.text.body = text
        elif image is not None:
            request.content.image.CopyFrom(image)
        elif emoji is not None:
            request.content.emoji.code = emoji
        else:
            request.template_id = template_id or ""
        stub = self._stub()
        return await self._transport.unary(stub.Reply, request, common_pb2.Message)

    async def get_session(self, session_id: str) -> common_pb2.Session:
        """The session (visible to this agent: its own, or the shop's for the main account; SPEC R9)."""
        stub = self._stub()
        request = platform_pb2.GetSessionRequest(session_id=session_id)
        return await self._transport.unary(stub.GetSession, request, common_pb2.Session)

    async def list_sessions(
        self,
        *,
        state: common_pb2.SessionState.ValueType = common_pb2.SESSION_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
    ) -> platform_pb2.ListSessionsResponse:
        """One page of the sessions this agent sees, newest first (page_size 0: the server's 50)."""
        stub = self._stub()
        request = platform_pb2.ListSessionsRequest(state=state, page_size=page_size, page_token=page_token)
        return await self._transport.unary(stub.ListSessions, request, platform_pb2.ListSessionsResponse)

    async def list_messages(
        self, session_id: str, *, after_seq: int = 0, page_size: int = 0, page_token: str = ""
    ) -> platform_pb2.ListMessagesResponse:
        """One page of the session's messages after ``after_seq``, ascending seq."""
        stub = self._stub()
        request = platform_pb2.ListMessagesRequest(
            session_id=session_id, after_seq=after_seq, page_size=page_size, page_token=page_token
        )
        return await self._transport.unary(stub.ListMessages, request, platform_pb2.ListMessagesResponse)

    async def list_reply_templates(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> merchant_pb2.ListReplyTemplatesResponse:
        """One page of the shop's quick-reply templates."""
        stub = self._stub()
        request = merchant_pb2.ListReplyTemplatesRequest(page_size=page_size, page_token=page_token)
        return await self._transport.unary(stub.ListReplyTemplates, request, merchant_pb2.ListReplyTemplatesResponse)


def _ack(cursor: int) -> merchant_pb2.ConnectRequest:
    return merchant_pb2.ConnectRequest(ack=merchant_pb2.Ack(cursor=cursor))


def _read_receipt(session_id: str, seq: int) -> merchant_pb2.ConnectRequest:
    return merchant_pb2.ConnectRequest(read_receipt=merchant_pb2.ReadReceiptRequest(session_id=session_id, seq=seq))
