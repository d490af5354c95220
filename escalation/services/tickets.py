"""Service tickets (SPEC R7): what the ticket of a session that ended says, as Python.

The database writes tickets with their outbox rows in the transaction that ends the session
(``end_sessions_locked``, migrations/0010, run by services/ending.py); :func:`build` is the
specification it follows, and tests/integration/test_write_functions_agree.py holds the two equal.
The size bound of R7 is proved against it too (tests/unit/test_ticket_size_bound.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from escalation.domain import tickets as rules
from escalation.domain.session import CloseReason
from escalation.services import records
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
    ended: asyncpg.Record, transcript: Sequence[asyncpg.Record], reason: CloseReason, sla: Mapping[str, timedelta]
) -> Ticket:
    """The ticket for a session that just ended; ``ended`` is its sessions row after the end (SPEC R7)."""
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
        event.SerializeToString(),
        ended["close_time"],
    )
