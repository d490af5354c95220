"""Gauges read from the database, refreshed by every server process (they all report the same value)."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from escalation.observability import metrics
from escalation.store.queries import sql

log = structlog.get_logger(__name__)


async def refresh_forever(pool: asyncpg.Pool, every: float = 15.0) -> None:
    """Keeps escalation_sessions_open current; a failed read keeps the last value and retries."""
    while True:
        try:
            metrics.SESSIONS_OPEN.set(await pool.fetchval(sql("sessions_open")))
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("gauges.refresh_failed", error=str(exc))
        await asyncio.sleep(every)
