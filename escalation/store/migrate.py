"""Applies the numbered SQL migrations in ``migrations/``; safe to run from many processes at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK_KEY = 0x65736361  # "esca"
_FILENAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")  # fullmatch: a name, not a line

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("escalation.store").joinpath("migrations").iterdir():
        match = _FILENAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Applies pending migrations in one transaction under an advisory lock; returns those applied.

    The transaction-scoped advisory lock makes concurrent runs queue up: the second one sees the
    first one's bookkeeping rows and applies nothing.
    """
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            log.info("migration.apply", version=migration.version, name=migration.name)
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration)
    return applied_now
