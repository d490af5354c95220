"""AIP-155 across real replicas: identical requests sent at once all get the one result (issue 9 §3).

Two `escalation serve` OS processes on one database; callers alternate between them. Every caller
must get OK with the same session (or message), and PostgreSQL must record no deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from escalation.v1 import merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.e2e import replicas
from tests.integration.grpc_harness import bearer
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.e2e

CALLERS = 10
ROUNDS = 3
RPC_TIMEOUT = 30.0


@pytest.fixture
async def channels(database_url: str, tmp_path: Path) -> AsyncIterator[list[grpc.aio.Channel]]:
    with replicas.serving(database_url, tmp_path, count=2, ESCALATION_DB_POOL_MAX="20") as procs:
        await asyncio.gather(*(replicas.wait_serving(r) for r in procs))
        chans = [grpc.aio.insecure_channel(r.grpc_addr) for r in procs]
        try:
            yield chans
        finally:
            for channel in chans:
                await channel.close(grace=None)
            for replica in procs:
                assert "Traceback" not in replica.output(), replica.output()


async def _deadlocks(pool: asyncpg.Pool) -> int:
    # Each backend flushes its counters when idle, at most once a second (PGSTAT_MIN_INTERVAL).
    await asyncio.sleep(1.2)
    await pool.execute("SELECT pg_stat_clear_snapshot()")
    n: int = await pool.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    return n


@pytest.mark.parametrize("messages", [1, 3])
async def test_identical_opens_at_once_all_get_the_one_session(
    pool: asyncpg.Pool, channels: list[grpc.aio.Channel], messages: int
) -> None:
    await make_shop(channels[0])
    before = await _deadlocks(pool)
    for round_ in range(ROUNDS):
        req = open_request(request_id=f"same-request-{round_}")
        del req.messages[:]
        req.messages.extend(text(f"part {n}") for n in range(messages))
        stubs = [platform_pb2_grpc.PlatformServiceStub(channels[n % 2]) for n in range(CALLERS)]
        answers = await asyncio.gather(*(s.OpenSession(req, metadata=PLATFORM, timeout=RPC_TIMEOUT) for s in stubs))
        assert len({a.session.session_id for a in answers}) == 1
        assert all(len(a.messages) == messages for a in answers)
    assert await pool.fetchval("SELECT count(*) FROM sessions") == ROUNDS
    assert await _deadlocks(pool) == before


@pytest.mark.parametrize("body", ["where is my parcel", "a second, longer body 📦"])
async def test_identical_client_msg_ids_at_once_store_one_message(
    pool: asyncpg.Pool, channels: list[grpc.aio.Channel], body: str
) -> None:
    await make_shop(channels[0])
    platform = platform_pb2_grpc.PlatformServiceStub(channels[0])
    opened = await platform.OpenSession(open_request(), metadata=PLATFORM)
    sid = opened.session.session_id
    agent = bearer("merchant", opened.session.assigned_agent_id, "shop-a")
    before = await _deadlocks(pool)
    sends = [
        platform_pb2_grpc.PlatformServiceStub(channels[n % 2]).SendMessage(
            platform_pb2.SendMessageRequest(session_id=sid, client_msg_id="c-1", content=text(body)),
            metadata=PLATFORM,
            timeout=RPC_TIMEOUT,
        )
        for n in range(CALLERS)
    ]
    replies = [
        merchant_pb2_grpc.MerchantServiceStub(channels[n % 2]).Reply(
            merchant_pb2.ReplyRequest(session_id=sid, client_msg_id="r-1", content=text(body)),
            metadata=agent,
            timeout=RPC_TIMEOUT,
        )
        for n in range(CALLERS)
    ]
    answers = await asyncio.gather(*sends, *replies)
    assert len({a.seq for a in answers[:CALLERS]}) == 1
    assert len({a.seq for a in answers[CALLERS:]}) == 1
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE session_id = $1::uuid", sid) == 3
    assert await _deadlocks(pool) == before
