"""Migrations produce the declared schema, are idempotent, and are safe to run concurrently."""

from __future__ import annotations

import asyncio
import os
import sys

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


async def test_migrate_blocked_by_a_lock_says_so_in_one_line_and_applies_nothing(database_url: str) -> None:
    """A migration that waits longer than its lock_timeout behind a live transaction (docs/migrations.md):
    `escalation migrate` exits 1 with one line, no traceback, and a re-run after the writer is gone applies it."""
    # 0007 only adds a column IF NOT EXISTS, so it can be made pending again on a migrated database.
    pending = next(m for m in migrations() if m.name == "outbox_traceparent")
    admin = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    try:
        await admin.execute("DELETE FROM schema_migrations WHERE version = $1", pending.version)
        async with holder.transaction():
            # A long reader of the table: the migration's ALTER TABLE must wait for it.
            await holder.execute("LOCK TABLE outbox IN ACCESS SHARE MODE")
            migrate_cli = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "escalation",
                "migrate",
                env={**os.environ, "ESCALATION_DATABASE_URL": database_url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(migrate_cli.communicate(), 60)
        assert migrate_cli.returncode == 1, (out, err)
        # Besides the structured log lines (JSON), one line for the operator.
        lines = [line for line in err.decode().strip().splitlines() if not line.startswith("{")]
        assert len(lines) == 1, err.decode()
        assert "waited too long for a lock" in lines[0]
        assert await admin.fetchval("SELECT count(*) FROM schema_migrations WHERE version = $1", pending.version) == 0
        assert [m.version for m in await migrate(admin)] == [pending.version]
    finally:
        await holder.close()
        await admin.close()
