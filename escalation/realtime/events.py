"""The durable per-merchant event log (SPEC R8): gapless cursors assigned in the writer's transaction.

Lock order, everywhere: session rows, then merchant rows (here, in merchant_id order), then agent rows.
Keeping to it is what makes the deadline worker, replies and OpenSession deadlock-free together.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from escalation.store.queries import sql
from escalation.v1 import common_pb2, merchant_pb2


@dataclass(frozen=True)
class Event:
    merchant_id: str
    session_id: uuid.UUID | None
    # The session's assigned agent, so a sub-account's stream can be filtered to its own sessions.
    agent_id: str | None
    # Which field of MerchantEvent.kind is set; also stored as merchant_events.kind.
    kind: str
    body: merchant_pb2.MerchantEvent


async def append(conn: asyncpg.Connection, events: Sequence[Event]) -> list[int]:
    """Appends events (in order) to their merchants' logs; returns their cursors."""
    by_merchant: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_merchant[event.merchant_id].append(i)
    cursors = [0] * len(events)
    rows = []
    for merchant_id in sorted(by_merchant):
        indexes = by_merchant[merchant_id]
        bumped = await conn.fetchrow(sql("allocate_event_cursors"), merchant_id, len(indexes))
        assert bumped is not None, f"merchant {merchant_id} vanished"
        first = bumped["last_event_cursor"] - len(indexes) + 1
        for offset, i in enumerate(indexes):
            event = events[i]
            body = merchant_pb2.MerchantEvent()
            body.CopyFrom(event.body)
            body.cursor = first + offset
            body.event_time.FromDatetime(bumped["at"])
            if event.session_id is not None:
                body.session_id = str(event.session_id)
            cursors[i] = body.cursor
            rows.append(
                (
                    merchant_id,
                    body.cursor,
                    event.session_id,
                    event.agent_id,
                    event.kind,
                    body.SerializeToString(),
                    bumped["at"],
                )
            )
    await conn.executemany(sql("insert_event"), rows)
    return cursors


def _event(session: common_pb2.Session, kind: str, body: merchant_pb2.MerchantEvent) -> Event:
    return Event(session.merchant_id, uuid.UUID(session.session_id), session.assigned_agent_id, kind, body)


def session_assigned(session: common_pb2.Session, messages: Sequence[common_pb2.Message]) -> list[Event]:
    """A new session for its agent, followed by its opening messages."""
    assigned = _event(
        session,
        "session_assigned",
        merchant_pb2.MerchantEvent(session_assigned=merchant_pb2.SessionAssigned(session=session)),
    )
    return [assigned, *(message_added(session, m) for m in messages)]


def message_added(session: common_pb2.Session, message: common_pb2.Message) -> Event:
    return _event(
        session, "message_added", merchant_pb2.MerchantEvent(message_added=merchant_pb2.MessageAdded(message=message))
    )


def session_closed(session: common_pb2.Session, handle_by: datetime | None) -> list[Event]:
    """The end of a session and, when it became one, its ticket."""
    closed = [
        _event(
            session,
            "session_closed",
            merchant_pb2.MerchantEvent(session_closed=merchant_pb2.SessionClosed(session=session)),
        )
    ]
    if session.ticket_id:
        created = merchant_pb2.TicketCreated(session_id=session.session_id, ticket_id=session.ticket_id)
        if handle_by is not None:
            created.handle_by.FromDatetime(handle_by)
        closed.append(_event(session, "ticket_created", merchant_pb2.MerchantEvent(ticket_created=created)))
    return closed


def read_receipt(session: common_pb2.Session, receipt: common_pb2.ReadReceipt) -> Event:
    return _event(session, "read_receipt", merchant_pb2.MerchantEvent(read_receipt=receipt))
