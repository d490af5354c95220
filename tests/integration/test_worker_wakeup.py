"""A worker whose LISTEN connection is lost runs a round at once instead of sleeping on (issue 9 §8)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from workers.loop import Wakeup

pytestmark = pytest.mark.integration


async def _terminate_listener(database_url: str, application_name: str) -> int:
    admin = await asyncpg.connect(database_url)
    try:
        for _ in range(100):
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()",
                application_name,
            )
            if killed:
                return int(killed)
            await asyncio.sleep(0.05)
        return 0
    finally:
        await admin.close()


@pytest.mark.parametrize("rounds", [1, 3])
async def test_lost_listener_wakes_the_sleeping_worker_and_is_replaced(database_url: str, rounds: int) -> None:
    wakeup = Wakeup(database_url, "escalation_test_channel")
    stop = asyncio.Event()
    try:
        for _ in range(rounds):
            sleeping = asyncio.create_task(wakeup.sleep(30.0, stop))
            # (Waits for the replacement listener of the previous round to connect first.)
            assert await _terminate_listener(database_url, "escalation-wakeup-escalation_test_channel") == 1
            killed = time.monotonic()
            await asyncio.wait_for(sleeping, 10.0)
            # Woken by the loss, not by the 30 s poll interval.
            assert time.monotonic() - killed < 5.0
        # And it listens again: a notification still wakes it.
        sleeping = asyncio.create_task(wakeup.sleep(30.0, stop))
        notifier = await asyncpg.connect(database_url)
        try:
            for _ in range(200):
                if await notifier.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                    " AND datname = current_database()",
                    "escalation-wakeup-escalation_test_channel",
                ):
                    break
                await asyncio.sleep(0.05)
            # LISTEN follows the connect by a moment (longer on a loaded machine): notify until woken. A
            # worker that never listens again would only wake at its 30 s poll, after this gives up.
            async with asyncio.timeout(5.0):
                while not sleeping.done():
                    await notifier.execute("NOTIFY escalation_test_channel, 'x'")
                    await asyncio.wait([sleeping], timeout=0.2)
        finally:
            await notifier.close()
        await sleeping
    finally:
        stop.set()
        await wakeup.close()
