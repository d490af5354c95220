"""What ending a session writes (SPEC R6, R7), once for every way a session ends.

A platform close ends one session and the deadline worker a batch; both hand the rows their end
statement returned to :func:`end_sessions`, in the transaction that ended them, so the two ways cannot
drift apart. The batch is the shape; one session is a batch of one (:func:`end_session`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from escalation.domain.session import CloseReason
from escalation.services import records, tickets
from escalation.store import events
from escalation.store.queries import sql

if TYPE_CHECKING:
    from escalation.services.sessions import SessionPolicy


@dataclass(frozen=True)
class Ended:
    """One ended session: its row as read back (``sessions_by_id``, with ``ticket_id``) and its ticket
    (None when the reason makes none, SPEC R7)."""

    session: asyncpg.Record
    ticket: tickets.Ticket | None


async def end_sessions(
    *, conn: asyncpg.Connection, sessions: Sequence[asyncpg.Record], reason: CloseReason, policy: SessionPolicy
) -> list[Ended]:
    """Writes what ending ``sessions`` means, in the caller's transaction (SPEC R6, R7).

    ``sessions`` are the rows an end statement (``end_session``, ``claim_due_sessions``) has just
    returned: each holds ``session_id``, ``merchant_id``, ``assigned_agent_id``, ``platform_agent_id``,
    ``order_id``, ``category``, ``open_time`` and ``close_time``, and the caller holds their locks. For
    each: a ticket with its outbox row (when ``reason.makes_ticket``; the outbox row carries the current
    span's traceparent, docs/tracing.md), the merchant's SessionClosed (and TicketCreated) events, and
    one open session less for its agent. Returns them in close-time order (``close_time``, then
    ``session_id``); an empty batch writes nothing. Raises only what the driver raises.
    """
    if not sessions:
        return []
    ids = [r["session_id"] for r in sessions]
    built: dict[uuid.UUID, tickets.Ticket] = {}
    if reason.makes_ticket:
        transcripts: dict[uuid.UUID, list[asyncpg.Record]] = {sid: [] for sid in ids}
        for row in await conn.fetch(sql("transcripts"), ids):
            transcripts[row["session_id"]].append(row)
        histories = {r["session_id"]: r["pb"] for r in await conn.fetch(sql("ticket_assignment_histories"), ids)}
        built = {
            r["session_id"]: tickets.build(
                r, transcripts[r["session_id"]], reason, policy.ticket_sla, histories[r["session_id"]]
            )
            for r in sessions
        }
        await tickets.insert(conn, list(built.values()))
    # Lock order: sessions (the caller's), merchants (events), agents — as everywhere else.
    closed = [Ended(row, built.get(row["session_id"])) for row in await conn.fetch(sql("sessions_by_id"), ids)]
    await events.append(
        conn=conn,
        events=[
            e
            for c in closed
            for e in events.session_closed(records.session(c.session), c.ticket.handle_by if c.ticket else None)
        ],
    )
    merchants = [r["merchant_id"] for r in sessions]
    agents = [r["assigned_agent_id"] for r in sessions]
    if len(set(zip(merchants, agents, strict=True))) > 1:
        # Several agents: lock them in one order first, so two batches never wait on each other.
        await conn.execute(sql("lock_agents"), merchants, agents)
    await conn.execute(sql("release_assignments"), merchants, agents)
    return closed


async def end_session(
    *, conn: asyncpg.Connection, session: asyncpg.Record, reason: CloseReason, policy: SessionPolicy
) -> Ended:
    """:func:`end_sessions` for one session (same rows, writes and errors)."""
    (ended,) = await end_sessions(conn=conn, sessions=[session], reason=reason, policy=policy)
    return ended
