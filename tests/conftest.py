"""Fixtures: a real PostgreSQL (a database per test, cloned from a migrated template) and a real
Kafka-protocol broker (a topic per test), both started here unless the environment points at
external ones (ESCALATION_TEST_DATABASE_URL, ESCALATION_TEST_KAFKA_BOOTSTRAP).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

# Before anything imports grpc: grpcio's Linux builds enable its fork support by default, which runs
# gRPC's pthread_atfork child handlers in every fork(). The tests fork while in-process grpc.aio servers
# and channels are busy (Popen with user= cannot use vfork: the embedded PostgreSQL is restarted as the
# postgres user under load in tests/chaos), and those handlers crashed the child before exec about one
# run in five (postgres "exited with status -11 during startup"). No test forks a process that goes on
# using gRPC, so the support is not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import asyncpg
import pytest

from escalation.store.migrate import migrate

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
# Servers under test are not throttled: the existing tests burst from one identity (concurrent opens,
# fuzzing, chaos load, many streams of one agent) far beyond the production defaults of SPEC §3
# "Limits". tests/integration/test_limits.py tests the limits themselves with small configured values.
UNTHROTTLED_ENV: dict[str, str] = {
    "ESCALATION_CONNECT_STREAMS_PER_IDENTITY": "1000000",
    "ESCALATION_WATCH_STREAMS_PER_IDENTITY": "1000000",
    "ESCALATION_UNAUTHENTICATED_STREAMS": "1000000",
    "ESCALATION_GRPC_MAX_CONCURRENT_STREAMS": "1000000",
    "ESCALATION_RATE_OPEN_SESSION_PER_AGENT": "1000000/s,1000000",
    "ESCALATION_RATE_OPEN_SESSION_PER_MERCHANT": "1000000/s,1000000",
    "ESCALATION_RATE_SEND_MESSAGE_PER_SENDER": "1000000/s,1000000",
    "ESCALATION_RATE_REPLY_PER_SENDER": "1000000/s,1000000",
}
# The URL each test pool was made from, for code that needs its own connection (LISTEN).
POOL_DSN: dict[int, str] = {}


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a database on a PostgreSQL server where tests may create databases."""
    external = os.environ.get("ESCALATION_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from escalation.devenv.ports import free_port
    from escalation.devenv.postgres import EmbeddedPostgres, make_data_dir

    data_dir = make_data_dir()
    server = EmbeddedPostgres(data_dir / "pg", port=free_port(), fast=True)
    try:
        server.init()
        server.start()
        yield server.dsn("postgres")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A migrated database that every test database is cloned from."""
    name = f"escalation_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(pg_admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(pg_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh migrated database for one test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield with_database(pg_admin_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all, for migration tests."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(pg_admin_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    assert created is not None
    POOL_DSN[id(created)] = database_url
    try:
        yield created
    finally:
        POOL_DSN.pop(id(created), None)
        await created.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Kafka-protocol broker."""
    external = os.environ.get("ESCALATION_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from escalation.devenv.broker import EmbeddedBroker
    from escalation.devenv.ports import free_port

    broker = EmbeddedBroker(port=free_port())
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic() -> str:
    """A topic name no other test uses."""
    return f"test.{uuid.uuid4().hex[:12]}"
