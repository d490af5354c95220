"""Issue 9 §2: a database that drops connections, restarts or crashes is UNAVAILABLE, never INTERNAL.

OpenSession load runs through the real gRPC server while PostgreSQL's backends are terminated or the
server is restarted (``pg_ctl restart -m fast`` and ``-m immediate``). Every caller retries with its
own request_id until OK: zero INTERNAL/UNKNOWN, and each request_id is exactly one session.
``make test`` runs one fault of each kind; ``make chaos`` sets ESCALATION_CHAOS_ROUNDS for many.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from escalation.devenv.postgres import EmbeddedPostgres
from escalation.store import db
from escalation.v1 import platform_pb2_grpc
from tests.chaos.load import Tally, assert_each_request_committed_once, drive
from tests.integration.grpc_harness import running_server
from tests.integration.sessions_harness import make_shop

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("ESCALATION_CHAOS_ROUNDS", "1"))


@pytest.fixture
async def service_pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The pool exactly as `escalation serve` builds it (its reset hook is part of what is tested)."""
    pool = await db.create_pool(own_database_url, min_size=2, max_size=10, command_timeout=5)
    try:
        yield pool
    finally:
        await pool.close()


async def _under_load(
    pool: asyncpg.Pool, dsn: str, fault: Callable[[], Awaitable[None]], rounds: int = ROUNDS
) -> Tally:
    tally = Tally()
    async with running_server(pool, dsn=dsn) as channel:
        await make_shop(channel, "shop-a", {f"shop-a-sub-{n}": 50 for n in (1, 2, 3)})
        stub: platform_pb2_grpc.PlatformServiceAsyncStub = platform_pb2_grpc.PlatformServiceStub(channel)
        stop = asyncio.Event()
        load = asyncio.create_task(drive(stub, "shop-a", tally, stop))
        try:
            for _ in range(rounds):
                await asyncio.sleep(0.4)
                await fault()
            await asyncio.sleep(1.0)  # and calls keep succeeding after the last fault
        finally:
            stop.set()
            await load
    print(f"\n{rounds} fault(s): {tally.summary()}")
    return tally


async def test_terminated_backends_under_open_session_load_are_unavailable_and_retries_commit_once(
    own_postgres: EmbeddedPostgres, own_database_url: str, service_pool: asyncpg.Pool
) -> None:
    database = own_database_url.rsplit("/", 1)[1]

    async def terminate_backends() -> None:
        admin = await asyncpg.connect(own_postgres.dsn())
        try:
            # Every connection of the service: its pool and its LISTEN connection.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()

    tally = await _under_load(service_pool, own_database_url, terminate_backends, rounds=3 * ROUNDS)
    await assert_each_request_committed_once(service_pool, tally)
    assert tally.codes["OK"] > 0


@pytest.mark.parametrize("immediate", [False, True], ids=["fast", "immediate"])
async def test_postgres_restart_under_open_session_load_is_unavailable_and_retries_commit_once(
    own_postgres: EmbeddedPostgres, own_database_url: str, service_pool: asyncpg.Pool, immediate: bool
) -> None:
    async def restart() -> None:
        await asyncio.to_thread(own_postgres.stop, immediate=immediate)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(own_postgres.start)

    tally = await _under_load(service_pool, own_database_url, restart)
    await assert_each_request_committed_once(service_pool, tally)
    assert tally.codes["UNAVAILABLE"] > 0, "the restart was seen by the callers"
