"""Service tickets (SPEC R7): built in the transaction that ends the session, with their outbox row."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

import asyncpg

from escalation.domain import tickets as rules
from escalation.domain.session import CloseReason
from escalation.services import records
from escalation.store.queries import sql
from escalation.v1 import common_pb2, events_pb2

TOPIC = "escalation.service-tickets.v1"
CONTENT_TYPE = "application/x-protobuf; messageType=escalation.v1.ServiceTicket"


async def create(
    conn: asyncpg.Connection, ended: asyncpg.Record, reason: CloseReason, sla: Mapping[str, timedelta]
) -> uuid.UUID:
    """Inserts the ticket and its outbox row; ``ended`` is the row end_session returned."""
    transcript = [records.message(r) for r in await conn.fetch(sql("transcript"), ended["session_id"])]
    ticket_id = uuid.uuid4()
    handle_by = rules.handle_by(ended["close_time"], ended["category"], sla)
    digest = rules.transcript_digest(transcript)
    ticket = events_pb2.ServiceTicket(
        ticket_id=str(ticket_id),
        session_id=str(ended["session_id"]),
        merchant_id=ended["merchant_id"],
        assigned_agent_id=ended["assigned_agent_id"],
        platform_agent_id=ended["platform_agent_id"],
        order_id=ended["order_id"] or "",
        category=common_pb2.Category.Value(f"CATEGORY_{ended['category']}"),
        reason=common_pb2.CloseReason.Value(f"CLOSE_REASON_{reason.value}"),
        transcript=transcript,
        open_time=records.timestamp(ended["open_time"]),
        close_time=records.timestamp(ended["close_time"]),
        handle_by=records.timestamp(handle_by),
        transcript_digest=digest,
        digest_algorithm=rules.DIGEST_ALGORITHM,
        create_time=records.timestamp(ended["close_time"]),
    )
    payload = ticket.SerializeToString()
    await conn.execute(
        sql("insert_ticket"),
        ticket_id,
        ended["session_id"],
        ended["merchant_id"],
        reason.value,
        ended["category"],
        handle_by,
        digest,
        payload,
        ended["close_time"],
    )
    await conn.execute(
        sql("insert_outbox"), TOPIC, ended["merchant_id"].encode(), str(ticket_id), CONTENT_TYPE, payload
    )
    return ticket_id
