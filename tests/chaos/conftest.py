"""Fixtures for fault-injection tests: a PostgreSQL server of their own, which they stop, crash and
restart (the session-wide one is shared with every other test), and a migrated database in it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from escalation.devenv.ports import free_port
from escalation.devenv.postgres import EmbeddedPostgres, make_data_dir
from escalation.store.migrate import migrate
from tests.conftest import with_database


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server only this module's tests use, so they may restart it.

    Durable (not ``fast``): with synchronous_commit off, a crash (``-m immediate``) would lose commits
    the service already answered OK, and the tests could not tell that from a bug of ours.
    """
    data_dir = make_data_dir()
    server = EmbeddedPostgres(data_dir / "pg", port=free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def own_database_url(own_postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh migrated database on ``own_postgres`` (running again at the end of the test)."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(own_postgres.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(own_postgres.dsn(), name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield url
    if not own_postgres.is_running:
        own_postgres.start()
    admin = await asyncpg.connect(own_postgres.dsn())
    try:
        await admin.execute("ALTER SYSTEM RESET ALL")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
