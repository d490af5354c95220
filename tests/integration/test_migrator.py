"""The migrator against a real PostgreSQL, on migration sets written to a temp directory.

Proves: a `-- escalation: no-transaction` migration runs CREATE INDEX CONCURRENTLY; every migration runs
under lock_timeout; a re-run after a concurrent index build failed midway (INVALID index left behind)
recovers; several migrators at once apply each migration once and never deadlock (docs/migrations.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from escalation.store.migrate import LOCK_TIMEOUT_SECONDS, migrate

pytestmark = pytest.mark.integration

TABLE = "CREATE TABLE item (id bigint PRIMARY KEY, code text NOT NULL);\n"
NO_TX = "-- escalation: no-transaction\n"


def migration_set(directory: Path, *sqls: str) -> Path:
    """Writes 0001_step.sql, 0002_step.sql, … into directory; returns it."""
    directory.mkdir(exist_ok=True)
    for number, sql in enumerate(sqls, start=1):
        (directory / f"{number:04d}_step.sql").write_text(sql)
    return directory


@pytest.fixture
async def conn(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def _index_valid(conn: asyncpg.Connection, name: str) -> bool | None:
    """True/False for a valid/INVALID index, None when it does not exist."""
    valid: bool | None = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", name
    )
    return valid


async def _recorded(conn: asyncpg.Connection) -> list[int]:
    return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]


async def test_a_no_transaction_migration_builds_its_indexes_concurrently(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = migration_set(
        tmp_path / "m",
        TABLE,
        NO_TX + "-- two statements, a comment between\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_code ON item (code);\n"
        "-- why: lookups by id and code\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS item_id_code ON item (id, code); -- trailing\n",
    )
    applied = await migrate(conn, directory=directory)

    assert [(m.version, m.transactional) for m in applied] == [(1, True), (2, False)]
    assert await _index_valid(conn, "item_code") is True
    assert await _index_valid(conn, "item_id_code") is True
    assert await _recorded(conn) == [1, 2]
    assert await migrate(conn, directory=directory) == []


@pytest.mark.parametrize("no_transaction", [False, True], ids=["in-transaction", "no-transaction"])
async def test_every_migration_runs_under_the_lock_timeout(
    conn: asyncpg.Connection, tmp_path: Path, no_transaction: bool
) -> None:
    seen = "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout;\n"
    directory = migration_set(tmp_path / "m", (NO_TX if no_transaction else "") + seen)
    before = await conn.fetchval("SHOW lock_timeout")

    await migrate(conn, directory=directory)

    assert await conn.fetchval("SELECT lock_timeout FROM seen") == f"{round(LOCK_TIMEOUT_SECONDS)}s"
    assert await conn.fetchval("SHOW lock_timeout") == before, "the session's own setting is restored"


@pytest.mark.parametrize(
    "blocked_sql",
    [
        "ALTER TABLE item ADD COLUMN note text;\n",
        "ALTER TABLE item ADD CONSTRAINT item_code_short CHECK (length(code) < 100) NOT VALID;\n",
        NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_code ON item (code);\n",
    ],
    ids=["add-column", "add-constraint", "concurrent-index"],
)
async def test_a_migration_that_cannot_get_its_lock_fails_fast_and_reruns_cleanly(
    conn: asyncpg.Connection, empty_database_url: str, tmp_path: Path, blocked_sql: str
) -> None:
    directory = migration_set(tmp_path / "m", TABLE)
    await migrate(conn, directory=directory)
    migration_set(directory, TABLE, blocked_sql)
    blocker = await asyncpg.connect(empty_database_url)
    try:
        # An open transaction that wrote a row: its lock conflicts with all three migrations.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("INSERT INTO item VALUES (1, 'a')")

        # wait_for only turns a hang (no lock_timeout) into a failure instead of the 120 s test timeout.
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(migrate(conn, directory=directory, lock_timeout=0.2), timeout=30)
        assert await _recorded(conn) == [1]

        await blocking.commit()
    finally:
        await blocker.close()
    assert [m.version for m in await migrate(conn, directory=directory)] == [2]
    assert await _recorded(conn) == [1, 2]


async def test_rerun_after_a_concurrent_index_build_failed_midway_recovers(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = migration_set(
        tmp_path / "m",
        TABLE + "INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'b');\n",
        NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_code ON item (code);\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS item_code_unique ON item (code);\n",
    )
    # The duplicate 'b' fails the unique build after its first statement succeeded.
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrate(conn, directory=directory)
    assert await _index_valid(conn, "item_code") is True
    assert await _index_valid(conn, "item_code_unique") is False, "PostgreSQL leaves the failed build INVALID"
    assert await _recorded(conn) == [1]

    # Still failing: the INVALID index is dropped and rebuilt, not kept because of IF NOT EXISTS.
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrate(conn, directory=directory)
    assert await _recorded(conn) == [1]

    await conn.execute("DELETE FROM item WHERE id = 3")
    assert [m.version for m in await migrate(conn, directory=directory)] == [2]
    assert await _index_valid(conn, "item_code") is True
    assert await _index_valid(conn, "item_code_unique") is True
    assert await conn.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


async def test_rerun_after_a_concurrent_index_build_timed_out_recovers(
    conn: asyncpg.Connection, empty_database_url: str, tmp_path: Path
) -> None:
    directory = migration_set(tmp_path / "m", TABLE)
    await migrate(conn, directory=directory)
    migration_set(directory, TABLE, NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_code ON item (code);\n")
    blocker = await asyncpg.connect(empty_database_url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("INSERT INTO item VALUES (1, 'a')")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(migrate(conn, directory=directory, lock_timeout=0.2), timeout=30)
        await blocking.commit()
    finally:
        await blocker.close()
    # The build registered its index before waiting for the writer, and left it behind INVALID.
    assert await _index_valid(conn, "item_code") is False

    await migrate(conn, directory=directory)
    assert await _index_valid(conn, "item_code") is True


async def test_concurrent_migrators_apply_a_concurrent_index_once_without_deadlock(
    empty_database_url: str, tmp_path: Path
) -> None:
    directory = migration_set(
        tmp_path / "m",
        TABLE + "INSERT INTO item SELECT g, g::text FROM generate_series(1, 2000) g;\n",
        NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_code ON item (code);\n",
        "ALTER TABLE item ADD COLUMN note text;\n",
    )
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        # wait_for turns a deadlock into a failure; the default lock timeout would also end one.
        results = await asyncio.wait_for(asyncio.gather(*(migrate(c, directory=directory) for c in conns)), timeout=60)
        assert sorted(m.version for result in results for m in result) == [1, 2, 3]
        assert await _recorded(conns[0]) == [1, 2, 3]
        assert await _index_valid(conns[0], "item_code") is True
    finally:
        for c in conns:
            await c.close()
