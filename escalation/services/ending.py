"""What ending a session writes (SPEC R6, R7), once for every way a session ends.

The rule itself is one server-side function, ``end_sessions_locked`` (migrations/0010): a platform
close runs it inside its one-round-trip ``close_session`` (services/sessions.py), the deadline worker
after its claim statement, through :func:`end_sessions`. services/tickets.py ``build()`` stays the
specification of the ticket it writes (the integration tests compare both).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from escalation.domain import tickets as ticket_rules
from escalation.domain.session import CloseReason
from escalation.observability import tracing
from escalation.services import tickets
from escalation.store import session_writes

if TYPE_CHECKING:
    from escalation.services.sessions import SessionPolicy


@dataclass(frozen=True)
class Ended:
    """One ended session as read back after its end (``session_id``, ``merchant_id``, ``close_time``, …,
    ``session_pb``), and its ticket id (None when the reason makes none, SPEC R7)."""

    session: asyncpg.Record
    ticket_id: uuid.UUID | None


def ticket_output(policy: SessionPolicy) -> session_writes.TicketOutput:
    """Where the tickets of sessions ended now go: the SLA table, the topic and the current span."""
    return session_writes.TicketOutput(
        sla=policy.ticket_sla,
        digest_algorithm=ticket_rules.DIGEST_ALGORITHM,
        topic=tickets.TOPIC,
        content_type=tickets.CONTENT_TYPE,
        traceparent=tracing.current_traceparent(),
    )


async def end_sessions(
    *, conn: asyncpg.Connection, sessions: Sequence[asyncpg.Record], reason: CloseReason, policy: SessionPolicy
) -> list[Ended]:
    """Writes what ending ``sessions`` means, in the caller's transaction (SPEC R6, R7).

    ``sessions`` are the rows an end statement (``claim_due_sessions``) has just returned (each with a
    ``session_id``), and the caller holds their locks. For each: a ticket with its outbox row (when
    ``reason.makes_ticket``; the outbox row carries the current span's traceparent, docs/tracing.md),
    the merchant's SessionClosed (and TicketCreated) events, and one open session less for its agent.
    Returns them in close-time order (``close_time``, then ``session_id``); an empty batch writes
    nothing. Raises only what the driver raises.
    """
    if not sessions:
        return []
    rows = await session_writes.end_sessions_locked(
        conn=conn,
        session_ids=[r["session_id"] for r in sessions],
        reason=reason.value,
        makes_ticket=reason.makes_ticket,
        ticket=ticket_output(policy),
    )
    return [Ended(row, row["ticket_id"]) for row in rows]
