"""Migrations produce the declared schema, are idempotent, and are safe to run concurrently."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from escalation.devenv import schema
from escalation.store.migrate import migrate, migrations

pytestmark = pytest.mark.integration


async def test_migrations_produce_the_declared_schema(database_url: str) -> None:
    declared = schema.SCHEMA_FILE.read_text()
    assert schema.dump(database_url) == declared, "run `make schema` and commit escalation/store/schema.sql"


async def test_rerunning_migrate_is_a_no_op(database_url: str) -> None:
    before = schema.dump(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []
    finally:
        await conn.close()
    assert schema.dump(database_url) == before


async def test_concurrent_migrate_applies_each_migration_exactly_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(m.version for result in results for m in result)
        assert applied == [m.version for m in migrations()]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in migrations()]
    finally:
        for c in conns:
            await c.close()
