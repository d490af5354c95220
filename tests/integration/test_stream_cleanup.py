"""Issue 10 §3: whatever point a Connect stream is cancelled at, its presence row and subscription go."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import grpc
import pytest

from escalation.api.server import Server
from escalation.v1 import merchant_pb2_grpc
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import bearer, settings
from tests.integration.sessions_harness import make_shop
from tests.integration.test_realtime import hello, open_session

pytestmark = pytest.mark.integration

AGENTS = [f"shop-a-sub-{n}" for n in range(1, 41)]


@asynccontextmanager
async def serving(pool: asyncpg.Pool) -> AsyncIterator[tuple[Server, grpc.aio.Channel]]:
    server = Server(settings(), pool, address="127.0.0.1:0", dsn=POOL_DSN[id(pool)])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, channel
    finally:
        await channel.close(grace=None)
        await server.stop(grace=0.5)


async def _churn(channel: grpc.aio.Channel, agent: str, rounds: int, rng: random.Random) -> None:
    """Opens Connect ``rounds`` times, each cancelled at a random point: before, at or after the hello.

    Calls overlap (a new one every 50–100 ms per agent, each living up to 300 ms) but stay under the
    per-identity stream cap, so the cancellations land in every phase of a stream's setup and life.
    """
    stub = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel))
    who = bearer("merchant", agent, "shop-a")
    loop = asyncio.get_running_loop()
    ended: list[asyncio.Future[None]] = []

    def cancel(call: Any, done: asyncio.Future[None]) -> None:
        call.cancel()
        done.set_result(None)

    for _ in range(rounds):
        call = stub.Connect(metadata=who)
        if rng.random() > 0.1:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(hello())
        done: asyncio.Future[None] = loop.create_future()
        ended.append(done)
        loop.call_later(rng.uniform(0, 0.3), cancel, call, done)
        await asyncio.sleep(rng.uniform(0.05, 0.1))
    await asyncio.gather(*ended)


async def _settled(server: Server, pool: asyncpg.Pool, within: float = 10.0) -> tuple[int, int]:
    """Subscriptions and presence rows left once the server has handled every cancellation."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        rows = int(await pool.fetchval("SELECT count(*) FROM agent_presence"))
        subs = server.hub.subscription_count()
        if (rows, subs) == (0, 0) or asyncio.get_running_loop().time() > deadline:
            return subs, rows
        await asyncio.sleep(0.05)


async def _present(pool: asyncpg.Pool, stream_id: uuid.UUID) -> None:
    for _ in range(250):
        if await pool.fetchval("SELECT count(*) FROM agent_presence WHERE stream_id = $1", stream_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the stream's presence row never appeared")


@pytest.mark.parametrize(("seed", "slow_presence"), [(1, False), (2, False), (3, True)])
async def test_connect_churn_leaves_no_presence_row_or_subscription(
    pool: asyncpg.Pool, seed: int, slow_presence: bool
) -> None:
    async with serving(pool) as (server, channel):
        await make_shop(channel, agents=dict.fromkeys(AGENTS, 10))
        rng = random.Random(seed)
        async with pool.acquire() as blocker:
            if slow_presence:
                # Every presence write waits, so cancellations land inside the insert (as under load).
                await blocker.execute("BEGIN; LOCK TABLE agent_presence IN SHARE MODE")
            await asyncio.gather(*(_churn(channel, agent, 10, random.Random(rng.random())) for agent in AGENTS))
            if slow_presence:
                await blocker.execute("COMMIT")
        assert await _settled(server, pool) == (0, 0)
        # Nobody is connected, so the next assignment must say so (R1).
        session = await open_session(channel)
        assert session.assignment.agent_connected is False


async def test_presence_refresher_keeps_only_live_streams(pool: asyncpg.Pool) -> None:
    async with serving(pool) as (server, channel):
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        stub = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel))
        call = stub.Connect(metadata=bearer("merchant", "shop-a-sub-1", "shop-a"))
        await call.write(hello())
        for _ in range(100):
            if server.hub.live_stream_ids():
                break
            await asyncio.sleep(0.02)
        [live] = server.hub.live_stream_ids()
        await _present(pool, live)
        # A row this server once wrote for a stream that is gone (e.g. its delete met a database outage).
        stray = uuid.uuid4()
        await pool.execute(
            "INSERT INTO agent_presence (stream_id, server_id, merchant_id, agent_id, seen_time)"
            " VALUES ($1, $2, 'shop-a', 'shop-a-sub-1', now() - interval '1 minute')",
            stray,
            server.hub.server_id,
        )
        await pool.execute(
            "UPDATE agent_presence SET seen_time = now() - interval '1 minute' WHERE stream_id = $1", live
        )
        await server.hub.refresh_presence_once()
        rows = await pool.fetch(
            "SELECT stream_id, seen_time > now() - interval '5 seconds' AS fresh FROM agent_presence"
        )
        assert {(r["stream_id"], r["fresh"]) for r in rows} == {(live, True)}
        call.cancel()
        assert await _settled(server, pool) == (0, 0)
