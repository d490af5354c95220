"""Applies the numbered SQL migrations in ``migrations/``; safe to run from many processes at once.

Each migration runs in its own transaction with its bookkeeping row, unless its header says
``-- escalation: no-transaction`` (for ``CREATE INDEX CONCURRENTLY``, which PostgreSQL refuses inside a
transaction). Every migration runs under ``lock_timeout``. docs/migrations.md explains the rules.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK_KEY = 0x65736361  # "esca"
# A DDL statement waiting for its lock makes every later query on that table queue behind it, so a
# migration that cannot get its locks within this long fails (the deploy retries it) instead of stalling
# the service's traffic for as long as some other transaction runs. Seconds.
LOCK_TIMEOUT_SECONDS = 5.0
# How often a migrator waiting for another one asks for the lock again. It polls with
# pg_try_advisory_lock instead of blocking in pg_advisory_lock: a blocked statement holds a snapshot,
# and CREATE INDEX CONCURRENTLY in the migrator holding the lock waits for every older snapshot to go
# away, which would be a deadlock. Seconds.
_LOCK_POLL_SECONDS = 0.1

_FILENAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")  # fullmatch: a name, not a line
_NO_TRANSACTION = re.compile(r"--\s*escalation:\s*no-transaction\s*")  # fullmatch on a header line
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
# The index a CREATE INDEX CONCURRENTLY builds; a failed build leaves it behind INVALID.
_CONCURRENT_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.\"]+)", re.IGNORECASE
)
# A no-transaction migration is run statement by statement (several statements in one query string
# would run as one implicit transaction): each ends with ';' at the end of a line.
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|\Z)")
_DOLLAR_QUOTE = re.compile(r"[$]\w*[$]")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


class MigrationError(RuntimeError):
    """A migration file breaks the rules of docs/migrations.md (found before anything is applied)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    # False when the header has "-- escalation: no-transaction".
    transactional: bool = True

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration, comments removed, in file order."""
        body = _without_comments(self.sql)
        return [s.strip() for s in _STATEMENT_END.split(body) if s.strip()]

    def concurrent_indexes(self) -> list[str]:
        """Names (as written) of the indexes this migration builds with CREATE INDEX CONCURRENTLY."""
        return _CONCURRENT_INDEX.findall(self.sql)


def parse(filename: str, sql: str) -> Migration | None:
    """The migration in a file named ``NNNN_name.sql``; None for any other name.

    Raises MigrationError for a transactional migration that uses CONCURRENTLY (PostgreSQL would refuse
    it at deploy time) and for a no-transaction one with a dollar-quoted body (it could not be split
    into statements safely).
    """
    match = _FILENAME.fullmatch(filename)
    if not match:
        return None
    transactional = not any(_NO_TRANSACTION.fullmatch(line) for line in _leading_comments(sql))
    if transactional and _CONCURRENTLY.search(_without_comments(sql)):
        raise MigrationError(
            f"{filename}: CONCURRENTLY cannot run in a transaction; add the header line '-- escalation: no-transaction'"
        )
    if not transactional and _DOLLAR_QUOTE.search(_without_comments(sql)):
        raise MigrationError(f"{filename}: a no-transaction migration cannot contain dollar quoting")
    return Migration(int(match[1]), match[2], sql, transactional)


def _leading_comments(sql: str) -> list[str]:
    lines = []
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            break
        lines.append(stripped)
    return lines


def _without_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every migration in directory (default: the package's ``migrations/``), in version order.

    Raises MigrationError when versions are not 1..n without gaps or a file breaks parse()'s rules.
    """
    source = directory if directory is not None else resources.files("escalation.store").joinpath("migrations")
    found = []
    for entry in source.iterdir():
        migration = parse(entry.name, entry.read_text(encoding="utf-8"))
        if migration is not None:
            found.append(migration)
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, found {versions}")
    return found


async def migrate(
    conn: asyncpg.Connection,
    *,
    directory: Traversable | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> list[Migration]:
    """Applies pending migrations in version order under an advisory lock; returns those applied.

    conn must not be inside a transaction. A session-level advisory lock makes concurrent runs queue
    up: the next one sees the bookkeeping rows and applies nothing. lock_timeout is in seconds.
    Raises asyncpg.LockNotAvailableError when a migration cannot get its locks in time (nothing of
    that migration is recorded; running again is safe), and whatever a failing migration raises.
    """
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside a transaction")
    pending = migrations(directory)
    await _lock(conn)
    applied_now: list[Migration] = []
    try:
        await conn.execute(_BOOKKEEPING)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        setting = f"{round(lock_timeout * 1000)}ms"
        for migration in pending:
            if migration.version in done:
                continue
            log.info(
                "migration.apply", version=migration.version, name=migration.name, transactional=migration.transactional
            )
            if migration.transactional:
                await _apply_in_transaction(conn, migration, setting)
            else:
                await _apply_outside_transaction(conn, migration, setting)
            applied_now.append(migration)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now


async def _lock(conn: asyncpg.Connection) -> None:
    waiting = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK_KEY):
        if not waiting:
            log.info("migration.waiting_for_another_migrator")
            waiting = True
        await asyncio.sleep(_LOCK_POLL_SECONDS)


async def _apply_in_transaction(conn: asyncpg.Connection, migration: Migration, lock_timeout: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", lock_timeout)
        await conn.execute(migration.sql)
        await conn.execute(_RECORD, migration.version, migration.name)


async def _apply_outside_transaction(conn: asyncpg.Connection, migration: Migration, lock_timeout: str) -> None:
    """Runs each statement on its own; a re-run after a failure midway first drops what it left INVALID.

    Every statement must be safe to run again (IF NOT EXISTS: squawk's prefer-robust-stmts checks it),
    since a failure leaves the statements before it applied and the migration unrecorded.
    """
    previous = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute("SELECT set_config('lock_timeout', $1, false)", lock_timeout)
    try:
        for index in migration.concurrent_indexes():
            await _drop_if_invalid(conn, index)
        for statement in migration.statements():
            await conn.execute(statement)
        await conn.execute(_RECORD, migration.version, migration.name)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT set_config('lock_timeout', $1, false)", previous)


async def _drop_if_invalid(conn: asyncpg.Connection, index: str) -> None:
    # A CREATE INDEX CONCURRENTLY that failed (lock timeout, duplicate key, killed process) leaves its
    # index INVALID: never used by queries, still maintained by every write, and `IF NOT EXISTS` would
    # keep it forever. Nothing else builds this index: we hold the migration lock.
    invalid = await conn.fetchval("SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", index)
    if invalid:
        log.warning("migration.drop_invalid_index", index=index)
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
