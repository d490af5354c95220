"""Issue 10 §2: the database cost of a merchant's news does not grow with the number of its streams.

Every stream of one shop on a process is served by one read per wake-up (the merchant's feed); each
stream still gets exactly what its identity may see, in order, without gap or duplicate.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from escalation.api.server import Server
from tests.integration.sessions_harness import make_shop
from tests.integration.test_realtime import MAIN, SUB1, SUB2, Call, connect, next_event, open_session, send
from tests.integration.test_stream_cleanup import serving

pytestmark = pytest.mark.integration

PER_IDENTITY = 4  # under the per-identity Connect cap's default
SESSIONS, REPLIES = 3, 3


async def _established(server: Server, streams: int, agents: set[str]) -> None:
    for _ in range(250):
        feed = server.hub.feed("shop-a")
        if (
            server.hub.subscription_count() == streams
            and feed is not None
            and all(feed.knows(a) for a in agents)
            and len(server.hub.live_stream_ids()) == streams
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the streams never all subscribed")


async def _cursors(call: Call, n: int) -> list[int]:
    return [(await next_event(call)).cursor for _ in range(n)]


async def test_streams_of_one_shop_share_one_read_per_wake_up(pool: asyncpg.Pool) -> None:
    async with serving(pool) as (server, channel):
        await make_shop(channel, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
        head = int(await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'"))
        who = {"shop-a-main": MAIN, "shop-a-sub-1": SUB1, "shop-a-sub-2": SUB2}
        calls = {
            agent: [await connect(channel, md, last_cursor=head) for _ in range(PER_IDENTITY)]
            for agent, md in who.items()
        }
        await _established(server, PER_IDENTITY * len(who), set(who))
        feed = server.hub.feed("shop-a")
        assert feed is not None
        reads_before, catch_ups_before = feed.reads, server.hub.catch_up_reads

        writes = 0
        for _ in range(SESSIONS):
            session = await open_session(channel)
            writes += 1
            for n in range(REPLIES):
                await send(channel, session.session_id, f"burst {n}")
                writes += 1
        rows = await pool.fetch(
            "SELECT cursor, agent_id FROM merchant_events WHERE merchant_id = 'shop-a' AND cursor > $1 ORDER BY cursor",
            head,
        )
        expected = {
            agent: [r["cursor"] for r in rows if agent == "shop-a-main" or r["agent_id"] == agent] for agent in who
        }
        assert len(expected["shop-a-main"]) == SESSIONS * (2 + REPLIES)
        for agent, streams in calls.items():
            for call in streams:
                assert await _cursors(call, len(expected[agent])) == expected[agent]

        # One read per wake-up at most, shared by all twelve streams; no stream read the log for itself.
        assert server.hub.catch_up_reads == catch_ups_before
        assert 1 <= feed.reads - reads_before <= writes
        for streams in calls.values():
            for call in streams:
                call.cancel()
