"""R8 real time: Connect and WatchSession against a real database, two servers (two hubs) on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import asyncpg
import grpc
import pytest

from escalation.api.server import Server
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import OPS, bearer, failure, running_server, settings
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")
SUB1 = bearer("merchant", "shop-a-sub-1", "shop-a")
SUB2 = bearer("merchant", "shop-a-sub-2", "shop-a")
OTHER_SHOP = bearer("merchant", "shop-b-main", "shop-b")

# The stubs type neither the read/write API of a call without a request iterator nor EOF.
Call = Any
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


@asynccontextmanager
async def two_servers(
    pool: asyncpg.Pool, *, write_timeout: float = 10.0
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    config = replace(settings(), stream_write_timeout_seconds=write_timeout)
    async with running_server(pool, config=config) as a, running_server(pool, config=config) as b:
        yield a, b


def hello(last_cursor: int | None = None) -> merchant_pb2.ConnectRequest:
    h = merchant_pb2.Hello()
    if last_cursor is not None:
        h.last_cursor = last_cursor
    return merchant_pb2.ConnectRequest(hello=h)


async def connect(channel: grpc.aio.Channel, who: tuple[tuple[str, str]], last_cursor: int | None = None) -> Call:
    call: Call = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=who)
    await call.write(hello(last_cursor))
    return call


async def live(
    pool: asyncpg.Pool, channel: grpc.aio.Channel, who: tuple[tuple[str, str]], merchant: str = "shop-a"
) -> Call:
    """Connects from the log's current head: everything written after this call returns is delivered.

    (A hello without a cursor starts wherever the head is when the server reads it, which may be after
    writes the test makes right away.)
    """
    head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = $1", merchant)
    return await connect(channel, who, last_cursor=head)


async def next_event(call: Call, wait: float = 5.0) -> merchant_pb2.MerchantEvent:
    """The next event frame, skipping heartbeats."""
    async with asyncio.timeout(wait):
        while True:
            frame = await call.read()
            assert frame is not EOF, "stream ended"
            if frame.HasField("event"):
                event: merchant_pb2.MerchantEvent = frame.event
                return event


async def drain(call: Call, wait: float, cursors: list[int] | None = None) -> None:
    """Reads until the stream ends (raising its error status), noting event cursors."""
    async with asyncio.timeout(wait):
        while (frame := await call.read()) is not EOF:
            if cursors is not None and frame.HasField("event"):
                cursors.append(frame.event.cursor)


async def events(call: Call, n: int, wait: float = 10.0) -> list[merchant_pb2.MerchantEvent]:
    return [await next_event(call, wait) for _ in range(n)]


async def open_session(channel: grpc.aio.Channel, merchant_id: str = "shop-a") -> common_pb2.Session:
    opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(
        open_request(merchant_id), metadata=PLATFORM
    )
    return opened.session


async def send(channel: grpc.aio.Channel, session_id: str, body: str) -> common_pb2.Message:
    return await platform_pb2_grpc.PlatformServiceStub(channel).SendMessage(
        platform_pb2.SendMessageRequest(session_id=session_id, content=text(body)), metadata=PLATFORM
    )


async def test_events_written_through_one_replica_reach_a_stream_on_the_other_in_order(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        call = await live(pool, a, MAIN)
        session = await open_session(b)
        for i in range(20):
            await send(b, session.session_id, f"m{i}")
        got = await events(call, 22)
        kinds = [e.WhichOneof("kind") for e in got]
        assert kinds == ["session_assigned", "message_added"] + ["message_added"] * 20
        assert [e.cursor for e in got] == list(range(got[0].cursor, got[0].cursor + 22)), "gapless cursors"
        assert [e.message_added.message.seq for e in got[1:]] == list(range(1, 22))
        assert got[0].session_assigned.session.session_id == session.session_id
        call.cancel()


async def test_disconnect_in_a_burst_and_resume_from_the_last_cursor(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        call = await connect(a, MAIN, last_cursor=0)
        session = await open_session(b)
        burst = asyncio.gather(*(send(b, session.session_id, f"m{i}") for i in range(40)))
        first = await events(call, 10)
        call.cancel()
        await burst
        resumed = await connect(b, MAIN, last_cursor=first[-1].cursor)
        rest = await events(resumed, 2 + 40 - 10)
        cursors = [e.cursor for e in first + rest]
        assert cursors == list(range(cursors[0], cursors[0] + len(cursors))), "no gap, no duplicate"
        assert sorted(e.message_added.message.seq for e in first + rest if e.HasField("message_added")) == list(
            range(1, 42)
        )
        resumed.cancel()


async def test_concurrent_writers_committing_out_of_order_skip_no_event(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 50})
        sessions = [await open_session(b) for _ in range(5)]
        call = await live(pool, a, MAIN)
        await asyncio.gather(
            *(send(ch, s.session_id, f"{i}") for i in range(12) for s, ch in zip(sessions, [a, b] * 3, strict=False))
        )
        got = await events(call, 60)
        cursors = [e.cursor for e in got]
        assert cursors == list(range(cursors[0], cursors[0] + 60))
        for s in sessions:
            seqs = [e.message_added.message.seq for e in got if e.session_id == s.session_id]
            assert seqs == list(range(2, 14))
        call.cancel()


async def test_visibility_sub_account_main_account_and_another_shop(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
        await make_shop(b, "shop-b", agents={"shop-b-sub-1": 10})
        main, sub1, sub2 = [await live(pool, a, w) for w in (MAIN, SUB1, SUB2)]
        other = await live(pool, a, OTHER_SHOP, "shop-b")
        s1, s2 = await open_session(b), await open_session(b)
        assert {s1.assigned_agent_id, s2.assigned_agent_id} == {"shop-a-sub-1", "shop-a-sub-2"}
        mine = {"shop-a-sub-1": sub1, "shop-a-sub-2": sub2}
        all_events = await events(main, 4)
        assert {e.session_id for e in all_events} == {s1.session_id, s2.session_id}
        for s in (s1, s2):
            own = await events(mine[s.assigned_agent_id], 2)
            assert {e.session_id for e in own} == {s.session_id}
        marker = await open_session(b, "shop-b")
        theirs = await events(other, 2)
        assert {e.session_id for e in theirs} == {marker.session_id}, "another shop sees only its own"
        for c in (main, sub1, sub2, other):
            c.cancel()


async def test_reply_over_the_stream_is_idempotent_and_a_closed_session_answers_in_band(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        call = await live(pool, a, SUB1)
        session = await open_session(b)
        await events(call, 2)
        reply = merchant_pb2.ReplyRequest(
            session_id=session.session_id, client_msg_id="r-1", content=text("ships today")
        )
        results = []
        for _ in range(2):
            await call.write(merchant_pb2.ConnectRequest(reply=reply))
            async with asyncio.timeout(5):
                while True:
                    frame = await call.read()
                    assert frame is not EOF
                    if frame.HasField("reply_result"):
                        results.append(frame.reply_result)
                        break
        assert results[0] == results[1]
        assert (results[0].client_msg_id, results[0].message.seq) == ("r-1", 2)
        await platform_pb2_grpc.PlatformServiceStub(b).CloseSession(
            platform_pb2.CloseSessionRequest(
                session_id=session.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
            ),
            metadata=PLATFORM,
        )
        late = merchant_pb2.ReplyRequest(session_id=session.session_id, client_msg_id="r-2", content=text("too late"))
        await call.write(merchant_pb2.ConnectRequest(reply=late))
        # The close happened on replica b and the reply is answered by replica a: the close's events and the
        # reply's result may reach the stream in either order (the feed is paced), but both must arrive.
        seen_kinds: list[str | None] = []
        results = []
        async with asyncio.timeout(5):
            while not results or not {"session_closed", "ticket_created"} <= set(seen_kinds):
                frame = await call.read()
                assert frame is not EOF
                if frame.HasField("reply_result"):
                    results.append(frame.reply_result)
                else:
                    seen_kinds.append(frame.event.WhichOneof("kind"))
        assert len(results) == 1
        result = results[0]
        assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "SESSION_CLOSED" in str(result.error.details)
        assert {"session_closed", "ticket_created"} <= set(seen_kinds)
        # The stream stays up: the next session still arrives.
        nxt = await open_session(b)
        assert (await next_event(call)).session_id == nxt.session_id
        call.cancel()


async def test_im_permission_revoked_while_connected_ends_the_stream(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        call = await connect(a, SUB1)
        await admin_pb2_grpc.MerchantAdminServiceStub(b).UpsertAgent(
            admin_pb2.UpsertAgentRequest(
                merchant_id="shop-a", agent=admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False)
            ),
            metadata=OPS,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await drain(call, 5)
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "IM_PERMISSION_REQUIRED")
        refused = await connect(a, SUB1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_cursor_older_than_retention_is_out_of_range(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        session = await open_session(b)
        for i in range(3):
            await send(b, session.session_id, f"m{i}")
        await pool.execute("DELETE FROM merchant_events WHERE merchant_id = 'shop-a' AND cursor <= 3")
        call = await connect(a, MAIN, last_cursor=1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED")
        ok = await connect(a, MAIN, last_cursor=3)
        assert (await next_event(ok)).cursor == 4
        ok.cancel()


async def _flood(pool: asyncpg.Pool, session: common_pb2.Session, count: int, size: int) -> None:
    """Appends ``count`` large MessageAdded events straight into the log (a burst no API call could make)."""
    body = merchant_pb2.MerchantEvent(
        session_id=session.session_id,
        message_added=merchant_pb2.MessageAdded(message=common_pb2.Message(content=text("x" * size))),
    )
    async with pool.acquire() as conn, conn.transaction():
        head = await conn.fetchval(
            "UPDATE merchants SET last_event_cursor = last_event_cursor + $1 WHERE merchant_id = 'shop-a'"
            " RETURNING last_event_cursor",
            count,
        )
        rows = []
        for cursor in range(head - count + 1, head + 1):
            body.cursor = cursor
            rows.append(
                (
                    "shop-a",
                    cursor,
                    uuid.UUID(session.session_id),
                    session.assigned_agent_id,
                    "message_added",
                    body.SerializeToString(),
                )
            )
        await conn.executemany(
            "INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )


async def test_a_reader_that_stops_reading_is_cut_and_can_resume(pool: asyncpg.Pool) -> None:
    async with two_servers(pool, write_timeout=0.5) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 50})
        session = await open_session(b)
        call = await connect(a, MAIN, last_cursor=0)
        await _flood(pool, session, 1500, 32 * 1024)  # ~48 MiB: more than any transport buffer
        await asyncio.sleep(2.0)  # the server blocks on a full window and gives up after 0.5 s
        seen: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await drain(call, 30, seen)
        last = seen[-1] if seen else 0
        assert (failure(caught.value).code, failure(caught.value).reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SLOW_CONSUMER",
        )
        head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'")
        assert 0 < last < head
        resumed = await connect(b, MAIN, last_cursor=last)
        rest = await events(resumed, head - last, wait=30)
        assert [e.cursor for e in rest] == list(range(last + 1, head + 1))
        resumed.cancel()


async def test_server_shutdown_ends_streams_with_unavailable(pool: asyncpg.Pool) -> None:
    async with running_server(pool) as other:
        await make_shop(other, agents={"shop-a-sub-1": 10})
    server = Server(settings(), pool, address="127.0.0.1:0", dsn=POOL_DSN[id(pool)])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = await connect(channel, MAIN)
        reading = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.3)
        await server.stop(grace=2)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reading
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    finally:
        await channel.close(grace=None)


async def test_assignment_records_whether_the_agent_was_connected(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        first = await open_session(b)
        assert first.assignment.agent_connected is False
        call = await connect(a, SUB1)
        for _ in range(100):
            if await pool.fetchval("SELECT count(*) FROM agent_presence WHERE agent_id = 'shop-a-sub-1'"):
                break
            await asyncio.sleep(0.05)
        second = await open_session(b)
        assert second.assignment.agent_connected is True
        call.cancel()


async def test_watch_session_streams_replies_read_receipts_and_the_end(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        session = await open_session(b)
        watch: Call = platform_pb2_grpc.PlatformServiceStub(a).WatchSession(
            platform_pb2.WatchSessionRequest(session_id=session.session_id, after_seq=0), metadata=PLATFORM
        )
        merchant = merchant_pb2_grpc.MerchantServiceStub(b)
        stream = await connect(b, SUB1)
        await merchant.Reply(
            merchant_pb2.ReplyRequest(session_id=session.session_id, content=text("yes")), metadata=SUB1
        )
        await stream.write(
            merchant_pb2.ConnectRequest(
                read_receipt=merchant_pb2.ReadReceiptRequest(session_id=session.session_id, seq=1)
            )
        )
        frames: list[platform_pb2.WatchSessionResponse] = []
        async with asyncio.timeout(5):
            while len([f for f in frames if not f.HasField("heartbeat")]) < 3:
                frames.append(await watch.read())
        await platform_pb2_grpc.PlatformServiceStub(b).CloseSession(
            platform_pb2.CloseSessionRequest(
                session_id=session.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED
            ),
            metadata=PLATFORM,
        )
        async with asyncio.timeout(5):
            while (frame := await watch.read()) is not EOF:
                frames.append(frame)
        kinds = [f.WhichOneof("event") for f in frames if not f.HasField("heartbeat")]
        assert kinds[:2] == ["message_added", "message_added"]
        assert "read_receipt" in kinds
        assert kinds[-1] == "session_ended"
        receipt = next(f.read_receipt for f in frames if f.HasField("read_receipt"))
        assert (receipt.seq, receipt.reader_id) == (1, "shop-a-sub-1")
        stream.cancel()
        # Another platform agent's watch is NOT_FOUND.
        other: Call = platform_pb2_grpc.PlatformServiceStub(a).WatchSession(
            platform_pb2.WatchSessionRequest(session_id=session.session_id), metadata=bearer("platform", "pa-2")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other.read()
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_first_frame_must_be_a_hello(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b)
        call: Call = cast(Any, merchant_pb2_grpc.MerchantServiceStub(a)).Connect(metadata=MAIN)
        await call.write(merchant_pb2.ConnectRequest(ack=merchant_pb2.Ack(cursor=1)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        got = failure(caught.value)
        assert (got.code, list(got.field_violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["hello"])


async def test_a_read_receipt_naming_the_session_in_a_look_alike_form_is_ignored(pool: asyncpg.Pool) -> None:
    """SPEC §3: identifiers match as whole strings. uuid.UUID also reads {…}, urn:uuid:…, upper-case and
    unhyphenated forms; a receipt written so must not move the read mark."""
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        session = await open_session(b)
        await merchant_pb2_grpc.MerchantServiceStub(b).Reply(
            merchant_pb2.ReplyRequest(session_id=session.session_id, content=text("yes")), metadata=SUB1
        )
        stream = await connect(a, SUB1)
        sid = uuid.UUID(session.session_id)
        for look_alike in (f"{{{sid}}}", sid.urn, str(sid).upper(), sid.hex, f" {sid}", f"{sid}\n"):
            await stream.write(
                merchant_pb2.ConnectRequest(read_receipt=merchant_pb2.ReadReceiptRequest(session_id=look_alike, seq=2))
            )
        # Frames are handled in order: once the canonical receipt has moved the mark to 1, every look-alike
        # before it was handled, and none moved it to 2.
        await stream.write(
            merchant_pb2.ConnectRequest(
                read_receipt=merchant_pb2.ReadReceiptRequest(session_id=session.session_id, seq=1)
            )
        )
        for _ in range(250):
            if await pool.fetchval("SELECT merchant_read_seq FROM sessions WHERE session_id = $1", sid):
                break
            await asyncio.sleep(0.02)
        assert await pool.fetchval("SELECT merchant_read_seq FROM sessions WHERE session_id = $1", sid) == 1
        stream.cancel()
