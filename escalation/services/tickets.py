"""Service tickets (SPEC R7): built in the transaction that ends the session, with their outbox row."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from escalation.domain import tickets as rules
from escalation.domain.session import CloseReason
from escalation.observability import tracing
from escalation.services import records
from escalation.store.queries import sql
from escalation.v1 import common_pb2, events_pb2

TOPIC = "escalation.service-tickets.v1"
CONTENT_TYPE = "application/x-protobuf; messageType=escalation.v1.ServiceTicket"


@dataclass(frozen=True)
class Ticket:
    ticket_id: uuid.UUID
    session_id: uuid.UUID
    merchant_id: str
    reason: CloseReason
    category: str
    handle_by: datetime
    digest: str
    payload: bytes
    create_time: datetime


def build(
    ended: asyncpg.Record,
    transcript: Sequence[asyncpg.Record],
    reason: CloseReason,
    sla: Mapping[str, timedelta],
    history_pb: bytes = b"",
) -> Ticket:
    """The ticket for a session that just ended; ``ended`` is the row its end statement returned.

    ``history_pb``: the session's assignment history as the database encodes it (SPEC R13,
    ``assignment_history_pb`` of migration 0013: ServiceTicket field 16 entries, appended to the value,
    where a serializer writes field 16 too)."""
    messages = [records.message(r) for r in transcript]
    ticket_id = uuid.uuid4()
    handle_by = rules.handle_by(ended["close_time"], ended["category"], sla)
    digest = rules.transcript_digest(messages)
    event = events_pb2.ServiceTicket(
        ticket_id=str(ticket_id),
        session_id=str(ended["session_id"]),
        merchant_id=ended["merchant_id"],
        assigned_agent_id=ended["assigned_agent_id"],
        platform_agent_id=ended["platform_agent_id"],
        order_id=ended["order_id"] or "",
        category=common_pb2.Category.Value(f"CATEGORY_{ended['category']}"),
        reason=common_pb2.CloseReason.Value(f"CLOSE_REASON_{reason.value}"),
        transcript=messages,
        open_time=records.timestamp(ended["open_time"]),
        close_time=records.timestamp(ended["close_time"]),
        handle_by=records.timestamp(handle_by),
        transcript_digest=digest,
        digest_algorithm=rules.DIGEST_ALGORITHM,
        create_time=records.timestamp(ended["close_time"]),
    )
    return Ticket(
        ticket_id,
        ended["session_id"],
        ended["merchant_id"],
        reason,
        ended["category"],
        handle_by,
        digest,
        event.SerializeToString() + history_pb,
        ended["close_time"],
    )


async def insert(conn: asyncpg.Connection, tickets: Sequence[Ticket]) -> None:
    """Stores the tickets and their outbox rows (the caller's transaction makes them atomic).

    Each outbox row keeps the traceparent of the span ending the session (None when not traced), so
    the ticket's Kafka record continues that trace (docs/tracing.md).
    """
    traceparent = tracing.current_traceparent()
    await conn.executemany(
        sql("insert_ticket"),
        [
            (
                t.ticket_id,
                t.session_id,
                t.merchant_id,
                t.reason.value,
                t.category,
                t.handle_by,
                t.digest,
                t.payload,
                t.create_time,
            )
            for t in tickets
        ],
    )
    await conn.executemany(
        sql("insert_outbox"),
        [(TOPIC, t.merchant_id.encode(), str(t.ticket_id), CONTENT_TYPE, t.payload, traceparent) for t in tickets],
    )
