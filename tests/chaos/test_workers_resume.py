"""Issue 9 §2: deadline closing and the outbox relay resume within 2 s of the database returning.

Both workers run in-process on a PostgreSQL of their own, which is stopped for long enough that an
exponential backoff would reach far past the 2 s bound (10 s: the old loop then slept 8–16 s), while
the sessions' deadlines pass. When the server accepts connections again, the workers must find it
by themselves: no notification can wake them, because nothing is listening during the outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from escalation.bus import kafka
from escalation.devenv.postgres import EmbeddedPostgres
from escalation.store import db
from tests.e2e.workers_harness import make_shop, open_sessions, policy
from workers.deadlines import DeadlineConfig, DeadlineWorker
from workers.loop import DATABASE_RETRY
from workers.outbox import OutboxConfig, OutboxRelay

pytestmark = pytest.mark.integration

OUTAGE = 10.0  # seconds the database is down
RESUME_BOUND = 2.0  # seconds after it is back (issue 9 §2)


@pytest.fixture
async def worker_pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(own_database_url, min_size=1, max_size=4, command_timeout=5)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.timeout(OUTAGE + 60)
async def test_deadlines_and_relay_resume_within_two_seconds_of_a_long_database_outage(
    own_postgres: EmbeddedPostgres,
    own_database_url: str,
    worker_pool: asyncpg.Pool,
    kafka_bootstrap: str,
    kafka_topic: str,
) -> None:
    assert DATABASE_RETRY < RESUME_BOUND
    reply_timeout, count = 2.0, 20
    session_policy = policy(reply_timeout)
    await make_shop(worker_pool)
    due = await open_sessions(worker_pool, count, session_policy)

    settings = kafka.KafkaSettings(
        bootstrap=kafka_bootstrap, idempotence=False, partitions=1, replication_factor=1, topic_prefix=f"{kafka_topic}."
    )
    deadline_worker = DeadlineWorker(worker_pool, DeadlineConfig(policy=session_policy, poll_interval=0.5))
    relay = OutboxRelay(worker_pool, settings, OutboxConfig(poll_interval=0.5, ack_timeout=10))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(deadline_worker.run(stop, own_database_url)),
        asyncio.create_task(relay.run(stop, own_database_url)),
    ]
    try:
        await asyncio.sleep(0.5)  # both running rounds (and the relay's producer started) first
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(OUTAGE)  # every deadline passes meanwhile
        own_postgres.start()  # from the loop's thread: see test_database_restarts.restart
        back = time.monotonic()

        ended_after = published_after = None
        while time.monotonic() - back < RESUME_BOUND + 10:
            try:
                row = await worker_pool.fetchrow(
                    "SELECT (SELECT count(*) FROM sessions WHERE state = 'ENDED') AS ended,"
                    " (SELECT count(*) FROM outbox WHERE published_time IS NOT NULL) AS published"
                )
            except Exception:  # this test's own query may meet a connection the restart broke
                row = None
            if row is not None:
                if ended_after is None and row["ended"] == count:
                    ended_after = time.monotonic() - back
                if published_after is None and row["published"] == count:
                    published_after = time.monotonic() - back
                    break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    print(f"\nafter a {OUTAGE:.0f} s outage: all ended {ended_after} s, all published {published_after} s after")
    assert ended_after is not None, "deadlines never resumed"
    assert ended_after <= RESUME_BOUND, f"deadlines resumed {ended_after} s after the database returned"
    assert published_after is not None, "the relay never resumed"
    assert published_after <= RESUME_BOUND + DATABASE_RETRY, f"the relay published {published_after} s after"
    rows = await worker_pool.fetch("SELECT session_id, close_time FROM sessions")
    assert all(r["close_time"] >= due[r["session_id"]] for r in rows), "none ended before its deadline"
    assert await worker_pool.fetchval("SELECT count(*) FROM tickets") == count, "one ticket per session"
