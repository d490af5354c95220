"""Scripted timelines for the reply-timeliness tests: sessions and messages at chosen instants.

Rows are inserted straight into the tables (the services stamp everything with the database clock,
which a test cannot move); each helper also returns the pure ``Timeline`` the rows describe, so a
test can compare the SQL figures with ``escalation.domain.timeliness``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from escalation.auth import Identity, Role
from escalation.domain import timeliness
from escalation.domain.session import CloseReason, Sender
from escalation.services import directory

P, M = Sender.PLATFORM, Sender.MERCHANT


async def make_shop(pool: asyncpg.Pool, merchant_id: str = "shop", agents: Sequence[str] = ("a1", "a2")) -> None:
    """A merchant (main account ``<merchant_id>-main``) with the given agents."""
    await directory.upsert_merchant(
        pool, merchant_id=merchant_id, display_name="", main_account_id=f"{merchant_id}-main", disabled=False
    )
    target = directory.MerchantScope(merchant_id, Identity("ops", Role.OPS))
    for agent_id in agents:
        await directory.upsert_agent(
            pool, target, agent_id=agent_id, display_name="", im_permission=True, disabled=False, capacity=50
        )


async def add_session(
    pool: asyncpg.Pool,
    *,
    merchant_id: str = "shop",
    agent_id: str = "a1",
    open_time: datetime,
    messages: Sequence[tuple[Sender, float]],
    close: tuple[CloseReason, float] | None = None,
) -> timeliness.Timeline:
    """A session opened at ``open_time`` with messages (sender, seconds after open), optionally closed
    (reason, seconds after open); a ticket is stored when the reason makes one."""
    sid = uuid.uuid4()
    at = [open_time + timedelta(seconds=offset) for _, offset in messages]
    reason, close_time = (close[0], open_time + timedelta(seconds=close[1])) if close else (None, None)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO sessions (session_id, merchant_id, assigned_agent_id, platform_agent_id, category, state,"
            " close_reason, open_time, close_time, last_seq, request_id, request_hash, assignment)"
            " VALUES ($1, $2, $3, 'pa-1', 'REFUND', $4, $5, $6, $7, $8, $9, '\\x00', '')",
            sid,
            merchant_id,
            agent_id,
            "OPEN" if reason is None else "ENDED",
            None if reason is None else reason.value,
            open_time,
            close_time,
            len(messages),
            str(sid),
        )
        await conn.executemany(
            "INSERT INTO messages (session_id, seq, sender, sender_id, kind, content, send_time)"
            " VALUES ($1, $2, $3, $4, 'TEXT', '', $5)",
            [
                (sid, seq, sender.value, "pa-1" if sender is P else agent_id, when)
                for seq, ((sender, _), when) in enumerate(zip(messages, at, strict=True), start=1)
            ],
        )
        if reason is not None and reason.makes_ticket:
            assert close_time is not None
            await conn.execute(
                "INSERT INTO tickets (ticket_id, session_id, merchant_id, reason, category, handle_by,"
                " transcript_digest, payload, create_time) VALUES ($1, $2, $3, $4, 'REFUND', $5, '', '', $5)",
                uuid.uuid4(),
                sid,
                merchant_id,
                reason.value,
                close_time,
            )
    return timeliness.Timeline(
        [
            timeliness.Message(seq, sender, when)
            for seq, ((sender, _), when) in enumerate(zip(messages, at, strict=True), start=1)
        ],
        close_reason=reason,
        close_time=close_time,
        has_ticket=reason is not None and reason.makes_ticket,
    )


async def answered_sessions(
    pool: asyncpg.Pool,
    merchant_id: str,
    opened: datetime,
    reply_after: Sequence[float],
    *,
    agent_id: str = "a1",
) -> None:
    """One resolved session per delay: a platform question, the merchant's reply that many seconds later."""
    for n, delay in enumerate(reply_after):
        await add_session(
            pool,
            merchant_id=merchant_id,
            agent_id=agent_id,
            open_time=opened + timedelta(minutes=n),
            messages=[(P, 0), (M, delay)],
            close=(CloseReason.RESOLVED, delay + 10),
        )
