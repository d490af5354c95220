"""MerchantService.Connect and PlatformService.WatchSession: durable, resumable streams (SPEC R8).

Both read from PostgreSQL from their own position (the merchant event log's cursor, or the session's
seq) whenever the hub says there is news, so replay and live delivery are the same code path: no gap
and no duplicate at the seam, whichever replica wrote the change. Memory per stream is bounded (one
page of events plus a small queue of reply results); a reader that cannot keep up — a write blocked
longer than ``write_timeout`` or a lag beyond ``max_lag_events`` — is ended with RESOURCE_EXHAUSTED
and resumes from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import structlog
from google.protobuf import message as pb_message

from escalation import errors
from escalation.api import status
from escalation.api.replies import reply
from escalation.auth import Identity
from escalation.domain.validation import canonical_uuid
from escalation.realtime import feed
from escalation.realtime.feed import Access
from escalation.realtime.hub import Hub, Subscription
from escalation.services import records, sessions
from escalation.store import db, events
from escalation.store.queries import sql
from escalation.v1 import merchant_pb2, platform_pb2

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class StreamConfig:
    heartbeat_seconds: float = 15.0  # a heartbeat after this long without another frame
    write_timeout_seconds: float = 10.0  # a write blocked this long means the reader stopped reading
    max_lag_events: int = 10_000  # a reader this far behind the log's head is cut off
    page_size: int = 200  # events read (and held in memory) at a time
    queue_size: int = 64  # reply results waiting to be written
    hello_timeout_seconds: float = 10.0


def connect_frame(event: merchant_pb2.MerchantEvent) -> merchant_pb2.ConnectResponse:
    """The ``Connect`` frame of one event; the hub builds it once per process and every stream of the
    merchant writes the same object (realtime/feed.py ``Frame``)."""
    return merchant_pb2.ConnectResponse(event=event)


async def _write(context: Context, frame: pb_message.Message, config: StreamConfig) -> None:
    try:
        await asyncio.wait_for(context.write(frame), config.write_timeout_seconds)
    except TimeoutError:
        raise errors.SlowConsumer() from None


async def _wait_any(*waits: Awaitable[Any], within: float) -> bool:
    """Waits for the first of ``waits``; False when ``within`` seconds passed first."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
    return bool(done)


@contextlib.asynccontextmanager
async def until_token_expires(caller: Identity) -> AsyncIterator[None]:
    """Ends the stream inside when the caller's token expires (SPEC §3, issue 10 §1).

    At ``caller.valid_until`` (the token's exp plus ESCALATION_JWT_LEEWAY_SECONDS, in wall-clock seconds)
    the body is cancelled and ``errors.Unauthenticated`` (reason TOKEN_EXPIRED, so UNAUTHENTICATED) is
    raised instead: a stream never outlives its token, and so not an identity provider's revocation
    either. The client reconnects with a fresh token and resumes from its cursor (or seq); nothing is lost.
    An identity without an expiry (not made from a token) is not limited.
    """
    if caller.valid_until is None:
        yield
        return
    loop = asyncio.get_running_loop()
    # The loop's monotonic clock, so a wall-clock step while the stream is open does not move the cut.
    deadline = asyncio.timeout_at(loop.time() + (caller.valid_until - time.time()))
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours
        raise errors.Unauthenticated(
            "the token has expired: reconnect with a fresh token and resume from the last cursor",
            reason="TOKEN_EXPIRED",
        ) from None


def _heartbeat() -> platform_pb2.Heartbeat:
    beat = platform_pb2.Heartbeat()
    beat.server_time.GetCurrentTime()
    return beat


class MerchantStream:
    """One merchant agent's Connect stream."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hub: Hub,
        policy: sessions.SessionPolicy,
        config: StreamConfig,
        caller: Identity,
        context: Context,
    ) -> None:
        self._pool = pool
        self._hub = hub
        self._policy = policy
        self._config = config
        self._caller = caller
        self._context = context
        assert caller.merchant_id is not None
        self._merchant_id = caller.merchant_id
        self._results: asyncio.Queue[merchant_pb2.ConnectResponse] = asyncio.Queue(maxsize=config.queue_size)
        self._overflowed = False
        self._main: bool | None = None  # main account (whole shop) or not, as last read from the database
        self._start_head = 0  # the log's head when the stream started

    async def run(self, frames: AsyncIterator[merchant_pb2.ConnectRequest]) -> None:
        """Serves the stream until the client leaves, an error ends it, or the token expires."""
        async with until_token_expires(self._caller):
            await self._run(frames)

    async def _run(self, frames: AsyncIterator[merchant_pb2.ConnectRequest]) -> None:
        hello = await self._hello(frames)
        position = await self._position()
        cursor = self._start_cursor(hello, position)
        self._start_head = int(position["head"])
        # Registered without an await, and released in the finally whatever point a cancellation hits:
        # no presence row or subscription outlives the stream (issue 10 §3).
        sub = self._hub.subscribe(self._merchant_id, self._caller.subject, present=True)
        sub.at(cursor)
        reader: asyncio.Task[None] | None = None
        try:
            await self._hub.announce(sub)
            reader = asyncio.create_task(self._read(frames, sub))
            # Wakes the pump when the reader ends, so a frame that does not decode ends the stream at once.
            reader.add_done_callback(lambda _: sub.wake.set())
            log.info("stream.connected", merchant_id=self._merchant_id, cursor=cursor, main_account=self._main)
            if hello.send_started:
                # Before any event: the pump delivers everything after ``cursor``, whatever was written
                # since the position was read, so the client may resume from it (docs/realtime.md).
                started = merchant_pb2.StreamStarted(cursor=cursor)
                await _write(self._context, merchant_pb2.ConnectResponse(started=started), self._config)
            await self._pump(sub, cursor, reader)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            await self._hub.release(sub)
            log.info("stream.disconnected", merchant_id=self._merchant_id)

    async def _hello(self, frames: AsyncIterator[merchant_pb2.ConnectRequest]) -> merchant_pb2.Hello:
        bad = errors.InvalidArgument([errors.FieldViolation("hello", "the first frame must be a hello")])
        # A client that has not said hello yet is ended by shutdown like any other stream.
        first = asyncio.ensure_future(anext(frames))
        closing = asyncio.ensure_future(self._hub.closing.wait())
        try:
            await asyncio.wait(
                (first, closing), timeout=self._config.hello_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closing.cancel()
            first.cancel()
        if first.done() and not first.cancelled():
            try:
                frame = first.result()
            except StopAsyncIteration:
                raise bad from None
            if frame.WhichOneof("frame") == "hello":
                return frame.hello
            raise bad
        if closing.done() and not closing.cancelled():
            raise errors.ShuttingDown()
        raise bad

    def _authorize(self, access: Access) -> None:
        """Applies the agent's current access (SPEC R1, R9); raises when the stream must end.

        Disabled or without IM permission: PERMISSION_DENIED, and a reconnect is refused too. No longer
        the main account: PERMISSION_DENIED (MAIN_ACCOUNT_CHANGED), because the client holds the whole
        shop's sessions it may no longer see; a reconnect gets its own sessions only. Becoming the main
        account widens the stream in place.
        """
        access.check()
        if self._main is True and not access.main_account:
            raise errors.MainAccountChanged()
        self._main = access.main_account

    async def _position(self) -> asyncpg.Record:
        """The log's bounds and the caller's access, from one snapshot; authorizes the caller."""
        position = await self._pool.fetchrow(sql("stream_position"), self._merchant_id, self._caller.subject)
        if position is None:
            raise errors.MerchantNotFound()
        self._authorize(feed.position_access(position))
        return position

    def _start_cursor(self, hello: merchant_pb2.Hello, position: asyncpg.Record) -> int:
        head, oldest = int(position["head"]), position["oldest"]
        if not hello.HasField("last_cursor"):
            return head
        cursor = hello.last_cursor
        if cursor < 0 or cursor > head:
            raise errors.InvalidArgument(
                [errors.FieldViolation("hello.last_cursor", f"must be between 0 and the log's head ({head})")]
            )
        if cursor < head and (oldest is None or cursor + 1 < oldest):
            raise errors.CursorExpired(metadata={"oldest_cursor": str(oldest or head + 1)})
        return cursor

    def _lag(self, head: int, cursor: int) -> int:
        """Events written since the stream started that it has not delivered yet.

        A resume's backlog (written before the connect) is not lag: counting it would cut a reader that
        resumes more than max_lag_events behind at once on every reconnect, so it could never resume
        (SPEC R8: a slow reader is cut off and resumes from its cursor). The backlog is read a page at a
        time, so it costs no more memory; a reader that stops reading it is cut by the write timeout.
        """
        return head - max(cursor, self._start_head)

    def _visible(self, agent_id: str | None) -> bool:
        return bool(self._main) or agent_id == self._caller.subject

    async def _pump(self, sub: Subscription, cursor: int, reader: asyncio.Task[None]) -> None:
        while True:
            if self._hub.closing.is_set():
                raise errors.ShuttingDown()
            if self._overflowed:
                raise errors.SlowConsumer()
            while not self._results.empty():
                await _write(self._context, self._results.get_nowait(), self._config)
            sub.wake.clear()
            shared = sub.feed.snapshot()
            if shared is not None and shared.has(cursor, self._caller.subject):
                # The common case: the merchant's feed has read the news once for every stream here.
                self._authorize(shared.access[self._caller.subject])
                if self._lag(shared.head, cursor) > self._config.max_lag_events:
                    raise errors.SlowConsumer()
                for item in sub.feed.since(cursor):
                    if item.cursor > shared.head:
                        break
                    if self._visible(item.agent_id):
                        await _write(self._context, item.frame, self._config)
                cursor = max(cursor, shared.head)
                sub.at(cursor)  # the feed may now drop what this stream (and every other) delivered
            else:
                cursor, more = await self._catch_up(cursor)
                sub.at(cursor)
                if more:
                    continue
            # The reader's error (a frame that does not decode) ends the stream after the results it queued.
            if reader.done() and reader.exception() is not None and self._results.empty():
                raise reader.exception()  # type: ignore[misc]
            sub.delivered()
            # One event wakes the stream for everything (news, reply results, the reader's end, shutdown):
            # no helper tasks per wait, which thousands of streams would pay for at every wake-up.
            try:
                async with asyncio.timeout(self._config.heartbeat_seconds):
                    await sub.wake.wait()
            except TimeoutError:
                await _write(self._context, merchant_pb2.ConnectResponse(heartbeat=_heartbeat()), self._config)

    async def _catch_up(self, cursor: int) -> tuple[int, bool]:
        """One page of this stream's own backlog (a resume, or behind the feed); True when more follow."""
        self._hub.catch_up_reads += 1
        position = await self._position()
        head = int(position["head"])
        if self._lag(head, cursor) > self._config.max_lag_events:
            raise errors.SlowConsumer()
        agent_filter = None if self._main else self._caller.subject
        rows = await self._pool.fetch(
            sql("events_after"), self._merchant_id, cursor, agent_filter, head, self._config.page_size
        )
        for row in rows:
            await _write(self._context, merchant_pb2.ConnectResponse(event=events.from_row(row)), self._config)
        if len(rows) == self._config.page_size:
            return rows[-1]["cursor"], True
        return head, False

    async def _read(self, frames: AsyncIterator[merchant_pb2.ConnectRequest], sub: Subscription) -> None:
        """Client frames after the hello: replies (answered with a reply result), acks, read receipts."""
        async for frame in frames:
            kind = frame.WhichOneof("frame")
            if kind == "reply":
                result = merchant_pb2.ReplyResult(client_msg_id=frame.reply.client_msg_id)
                try:
                    result.message.CopyFrom(records.sent_message(await reply(self._pool, self._policy, frame.reply)))
                except Exception as exc:
                    result.error.CopyFrom(_status_of(exc))
                self._queue(merchant_pb2.ConnectResponse(reply_result=result), sub)
            elif kind == "read_receipt":
                sid = canonical_uuid(frame.read_receipt.session_id)
                if sid is None:
                    log.info("stream.read_receipt_ignored", error="session_id is not a session id in canonical form")
                    continue
                try:
                    await sessions.mark_read(self._pool, self._caller, sid, frame.read_receipt.seq)
                except errors.EscalationError as exc:
                    log.info("stream.read_receipt_ignored", error=str(exc))
            # Acks are informational: resumption uses Hello.last_cursor, which the client keeps.

    def _queue(self, frame: merchant_pb2.ConnectResponse, sub: Subscription) -> None:
        try:
            self._results.put_nowait(frame)
        except asyncio.QueueFull:
            self._overflowed = True
        sub.wake.set()


def _status_of(exc: BaseException) -> Any:
    domain = db.translate(exc)
    if domain is None:
        log.error("stream.reply_failed", exc_info=exc)
        return status.internal_status_proto()
    return status.to_status_proto(domain)


async def watch_session(
    pool: asyncpg.Pool,
    hub: Hub,
    config: StreamConfig,
    caller: Identity,
    session_id: uuid.UUID,
    after_seq: int,
    context: Context,
) -> None:
    """Streams a session's messages after ``after_seq``, the merchant's read receipts, every move to
    another merchant agent after the stream started (SPEC R13, ``assignment_changed``), and its end.

    Ends with UNAUTHENTICATED (TOKEN_EXPIRED) when the caller's token expires (see until_token_expires).
    """
    async with until_token_expires(caller):
        await _watch_session(pool, hub, config, caller, session_id, after_seq, context)


async def _watch_session(
    pool: asyncpg.Pool,
    hub: Hub,
    config: StreamConfig,
    caller: Identity,
    session_id: uuid.UUID,
    after_seq: int,
    context: Context,
) -> None:
    session = await sessions.get_session(pool, caller, session_id)
    sub = hub.subscribe(session["merchant_id"], None, present=False)
    seq, read_seq = after_seq, 0
    # Moves before the stream started are in GetSession's assignment_history; only later ones stream.
    moved = int(await pool.fetchval(sql("watch_moves"), session_id))
    try:
        while True:
            if hub.closing.is_set():
                raise errors.ShuttingDown()
            sub.wake.clear()
            rows = await pool.fetch(sql("list_messages"), session_id, seq, config.page_size)
            for row in rows:
                frame = platform_pb2.WatchSessionResponse(message_added=records.message(row))
                await _write(context, frame, config)
                seq = row["seq"]
            if len(rows) == config.page_size:
                continue
            state = await pool.fetchrow(sql("watch_state"), session_id)
            if state is not None and state["moves"] > moved:
                # SPEC R13: the platform sees each transfer or re-assignment as it commits.
                for move in await pool.fetch(sql("moves_after"), session_id, moved):
                    step = records.assignment_step(move)
                    await _write(context, platform_pb2.WatchSessionResponse(assignment_changed=step), config)
                    moved = move["step"]
            if state is not None and state["merchant_read_seq"] > read_seq:
                read_seq = state["merchant_read_seq"]
                receipt = platform_pb2.WatchSessionResponse(
                    read_receipt=records.read_receipt(str(session_id), read_seq, state["assigned_agent_id"])
                )
                await _write(context, receipt, config)
            if state is not None and state["state"] == "ENDED" and seq >= state["last_seq"]:
                ended = await sessions.get_session(pool, caller, session_id)
                frame = platform_pb2.WatchSessionResponse(
                    session_ended=platform_pb2.SessionEnded(session=records.session(ended))
                )
                await _write(context, frame, config)
                return
            sub.delivered()
            woke = await _wait_any(sub.wake.wait(), hub.closing.wait(), within=config.heartbeat_seconds)
            if not woke:
                await _write(context, platform_pb2.WatchSessionResponse(heartbeat=_heartbeat()), config)
    finally:
        await hub.release(sub)
