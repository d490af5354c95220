"""Issue 10 §2: a merchant's shared feed holds only events some live stream of it has not delivered yet.

After a burst every stream delivered, the feed holds nothing; a stream that is behind keeps what it still
needs (within ``keep`` events and a byte budget), and still gets every event in order, without gap or
duplicate, whether from the feed or, beyond the bound, from its own reads.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from escalation.realtime.feed import MerchantFeed
from tests.integration.sessions_harness import make_shop
from tests.integration.test_realtime import MAIN, Call, connect, next_event, open_session, send
from tests.integration.test_stream_cleanup import serving

pytestmark = pytest.mark.integration

BIG = "x" * 1_980  # near the text limit: a burst of these fills HTTP/2's 64 KiB window of a reader that does not read


async def _head(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'"))


async def _cursors(call: Call, n: int) -> list[int]:
    return [(await next_event(call)).cursor for _ in range(n)]


async def _until(check: object, what: str) -> None:
    for _ in range(250):
        if callable(check) and check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


@pytest.mark.parametrize(("messages", "body"), [(40, "hi"), (60, BIG)])
async def test_after_a_burst_every_stream_delivered_the_feed_holds_nothing(
    pool: asyncpg.Pool, messages: int, body: str
) -> None:
    async with serving(pool) as (server, channel):
        await make_shop(channel)
        session = await open_session(channel)
        head = await _head(pool)
        fast = [await connect(channel, MAIN, last_cursor=head) for _ in range(2)]
        slow = await connect(channel, MAIN, last_cursor=head)  # reads nothing until the burst is over
        await _until(lambda: server.hub.subscription_count() == 3, "the streams never subscribed")

        for i in range(messages):
            await send(channel, session.session_id, f"{body} {i}")
        burst = list(range(head + 1, await _head(pool) + 1))
        for call in fast:
            assert await _cursors(call, len(burst)) == burst
        feed = server.hub.feed("shop-a")
        assert feed is not None

        # The slow reader gets every event, in order, no gap, no duplicate ...
        assert await _cursors(slow, len(burst)) == burst
        # ... and once every stream has delivered the burst, the feed holds none of it.
        await _until(lambda: feed.held() == (0, 0), f"the feed still holds {feed.held()} (events, bytes)")
        for call in [*fast, slow]:
            call.cancel()
        await _until(lambda: server.hub.feed("shop-a") is None, "the feed outlived its last stream")
        assert feed.held() == (0, 0)


async def _read(feed: MerchantFeed, reads: int) -> None:
    feed.wake()
    await _until(lambda: feed.reads >= reads, "the feed never read")


@pytest.mark.parametrize(("keep", "max_bytes"), [(1000, 4 * 1024 * 1024), (5, 4 * 1024 * 1024), (1000, 3 * 400)])
async def test_a_stream_behind_keeps_what_it_needs_within_the_bounds(
    pool: asyncpg.Pool, keep: int, max_bytes: int
) -> None:
    async with serving(pool) as (_server, channel):
        await make_shop(channel)
        session = await open_session(channel)
        feed = MerchantFeed(
            "shop-a", pool, agents=lambda: ["shop-a-main"], on_read=lambda: None, keep=keep, max_bytes=max_bytes
        )
        try:
            await _read(feed, 1)
            head0 = await _head(pool)
            ahead, behind = head0, head0
            feed.track(None, ahead)
            feed.track(None, behind)
            for i in range(8):
                await send(channel, session.session_id, "y" * 200 + str(i))
            await _read(feed, 2)
            head1 = await _head(pool)
            count, size = feed.held()
            assert count <= keep
            assert size <= max_bytes
            snapshot = feed.snapshot()
            assert snapshot is not None
            assert snapshot.head == head1
            # What is held is exactly the newest events, consecutive up to the head.
            held = [b.cursor for b in feed.since(snapshot.start)]
            assert held == list(range(snapshot.start + 1, head1 + 1))
            assert len(held) == count
            if count == head1 - head0:
                assert snapshot.has(behind, "shop-a-main")  # within the bounds: served from memory
            else:
                assert not snapshot.has(behind, "shop-a-main")  # beyond them: it reads its own pages

            feed.track(ahead, head1)
            assert feed.held()[0] == count, "dropped events a stream behind still needs"
            feed.track(behind, head1 - 2)
            assert [b.cursor for b in feed.since(head1 - 2)] == [head1 - 1, head1]
            assert feed.held()[0] == min(count, 2)
            feed.track(head1 - 2, head1)
            assert feed.held() == (0, 0)
            feed.track(head1, None)
            feed.track(head1, None)
            assert feed.held() == (0, 0)
        finally:
            await feed.close()
