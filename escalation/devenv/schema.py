"""`make schema`: writes escalation/store/schema.sql, the declared schema, from the migrations.

schema.sql is what reviewers read to see the whole database at once; a test migrates a fresh
database and fails if its dump differs from this file, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import asyncpg

from escalation.devenv.ports import free_port
from escalation.devenv.postgres import EmbeddedPostgres, find_pg_bin, make_data_dir
from escalation.store.migrate import migrate

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "store" / "schema.sql"
HEADER = "-- The declared schema: `make schema` writes this file from the migrations; do not edit it.\n"


def dump(dsn: str) -> str:
    """pg_dump's schema-only output without the version- and session-specific noise."""
    out = subprocess.run(
        [str(find_pg_bin() / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    kept = [
        line
        for line in out.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict"))
    ]
    return HEADER + "\n".join(kept) + "\n"


async def _migrated(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def main() -> None:
    data_dir = make_data_dir()
    server = EmbeddedPostgres(data_dir / "pg", port=free_port(), fast=True)
    try:
        server.start()
        asyncio.run(_migrated(server.dsn("postgres")))
        SCHEMA_FILE.write_text(dump(server.dsn("postgres")))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
