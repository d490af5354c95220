"""SPEC §3 / issue 10 §1: an open stream ends when its token expires (exp + ESCALATION_JWT_LEEWAY_SECONDS).

Each test opens a stream with a token that expires a second or two ahead, proves the stream delivers,
reads it to its end (UNAUTHENTICATED, TOKEN_EXPIRED, not before exp + leeway), then reconnects with a
fresh token from the last position it saw and gets the next item: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import asyncpg
import grpc
import jwt
import pytest

from escalation.v1 import platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import failure, running_server, settings, token
from tests.integration.sessions_harness import PLATFORM, make_shop
from tests.integration.test_realtime import EOF, MAIN, Call, connect, drain, live, next_event, open_session, send

pytestmark = pytest.mark.integration

TTL = 2  # seconds: the token's exp lies 1–2 s ahead (mint rounds the issue time down to the second)
CLOCK_SLACK = 0.05  # seconds: the server's timer and this test read the same clock through different paths


@asynccontextmanager
async def _server(pool: asyncpg.Pool, leeway: int) -> AsyncIterator[grpc.aio.Channel]:
    base = settings()
    assert base.jwt is not None
    async with running_server(pool, config=replace(base, jwt=replace(base.jwt, leeway_seconds=leeway))) as channel:
        yield channel


def _short(role: str, sub: str, merchant_id: str | None = None) -> tuple[tuple[tuple[str, str]], float]:
    """Metadata with a token expiring in 1–2 s, and its exp."""
    raw = token(role, sub, merchant_id, ttl=TTL)
    exp = float(jwt.decode(raw, options={"verify_signature": False})["exp"])
    return (("authorization", f"Bearer {raw}"),), exp


def _expired(err: grpc.aio.AioRpcError) -> None:
    got = failure(err)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


@pytest.mark.parametrize("leeway", [0, 1])
async def test_connect_ends_at_exp_plus_leeway_and_resumes_with_a_fresh_token(pool: asyncpg.Pool, leeway: int) -> None:
    async with _server(pool, leeway) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        who, exp = _short("merchant", "shop-a-main", "shop-a")
        stream = await live(pool, channel, who)
        await open_session(channel)
        cursors = [(await next_event(stream)).cursor]  # the stream is open and delivering

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await drain(stream, exp + leeway - time.time() + 5, cursors)
        _expired(caught.value)
        assert time.time() >= exp + leeway - CLOCK_SLACK, "cut before the token expired"

        head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'")
        assert cursors == list(range(cursors[0], head + 1)), "the expired stream skipped an event"
        again = await connect(channel, MAIN, last_cursor=cursors[-1])
        await open_session(channel)
        assert (await next_event(again)).cursor == cursors[-1] + 1
        again.cancel()


async def test_watch_session_ends_when_its_token_expires_and_resumes_with_a_fresh_token(pool: asyncpg.Pool) -> None:
    async with _server(pool, 0) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        session = await open_session(channel)
        who, exp = _short("platform", "pa-1")
        watch: Call = cast(Any, platform_pb2_grpc.PlatformServiceStub(channel)).WatchSession(
            platform_pb2.WatchSessionRequest(session_id=session.session_id, after_seq=0), metadata=who
        )
        seqs: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _watch_to_end(watch, exp + 5, seqs)
        _expired(caught.value)
        assert time.time() >= exp - CLOCK_SLACK, "cut before the token expired"
        assert seqs == [1], "the watch did not deliver the session's first message before expiring"

        again: Call = cast(Any, platform_pb2_grpc.PlatformServiceStub(channel)).WatchSession(
            platform_pb2.WatchSessionRequest(session_id=session.session_id, after_seq=seqs[-1]), metadata=PLATFORM
        )
        await send(channel, session.session_id, "still there?")
        frame = await _read(again, 5)
        while frame.HasField("heartbeat"):
            frame = await _read(again, 5)
        assert frame.message_added.seq == 2
        again.cancel()


async def _read(call: Call, until: float) -> Any:
    """The next frame; fails the test (TimeoutError) when none comes before wall-clock ``until``."""
    async with asyncio.timeout(max(until - time.time(), 0.1)):
        return await call.read()


async def _watch_to_end(call: Call, until: float, seqs: list[int]) -> None:
    """Reads a WatchSession stream to its end (raising its error status), noting message seqs."""
    while (frame := await _read(call, until)) is not EOF:
        if frame.HasField("message_added"):
            seqs.append(frame.message_added.seq)
