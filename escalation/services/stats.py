"""Reply-timeliness figures (SPEC R10) from the database; definitions in escalation.domain.timeliness."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from google.protobuf import duration_pb2

from escalation import errors
from escalation.domain import timeliness
from escalation.domain.timeliness import Figures
from escalation.store.queries import sql


@dataclass(frozen=True)
class Window:
    """Sessions opened in [start, end), optionally only those assigned to one agent."""

    start: datetime
    end: datetime
    agent_id: str | None = None


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    """A mean as a protobuf Duration; None (unset) when there was nothing to average."""
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


async def figures_by_merchant(
    conn: asyncpg.Connection, merchant_ids: Sequence[str], window: Window, *, as_of: datetime
) -> dict[str, Figures]:
    """Each merchant's figures over ``window`` as known at ``as_of``; merchants without sessions get zeros."""
    rows = await conn.fetch(
        sql("response_figures"),
        list(merchant_ids),
        window.agent_id,
        window.start,
        window.end,
        as_of,
        timeliness.REPLY_LIMIT.total_seconds(),
    )
    found = {r["merchant_id"]: Figures.of(r) for r in rows}
    return {m: found.get(m, Figures()) for m in merchant_ids}


async def response_stats(pool: asyncpg.Pool, merchant_id: str, window: Window) -> tuple[Figures, datetime]:
    """One merchant's (or one of its agents') figures, and the database-clock instant they are as of.

    An unknown merchant, or an agent that is not the merchant's, is NOT_FOUND.
    """
    async with pool.acquire() as conn:
        if await conn.fetchrow(sql("get_merchant"), merchant_id) is None:
            raise errors.MerchantNotFound()
        if window.agent_id is not None and await conn.fetchrow(sql("get_agent"), merchant_id, window.agent_id) is None:
            raise errors.AgentNotFound()
        as_of: datetime = await conn.fetchval(sql("database_now"))
        figures = await figures_by_merchant(conn, [merchant_id], window, as_of=as_of)
    return figures[merchant_id], as_of
