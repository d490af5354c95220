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


async def append(*, conn: asyncpg.Connection, events: Sequence[Event]) -> list[int]:
    """Appends events (in order) to their merchants' logs, one statement per merchant; returns cursors.

    The stored payload leaves ``cursor`` and ``event_time`` unset: they are the row's columns, assigned
    by the statement itself, and readers put them into the event (``from_row``).
    """
    by_merchant: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_merchant[event.merchant_id].append(i)
    cursors = [0] * len(events)
    for merchant_id in sorted(by_merchant):
        batch = [events[i] for i in by_merchant[merchant_id]]
        payloads = []
        for event in batch:
            body = merchant_pb2.MerchantEvent()
            body.CopyFrom(event.body)
            if event.session_id is not None:
                body.session_id = str(event.session_id)
            payloads.append(body.SerializeToString())
        assigned = await conn.fetch(
            sql("append_events"),
            merchant_id,
            [e.kind for e in batch],
            [e.session_id for e in batch],
            [e.agent_id for e in batch],
            payloads,
        )
        assert len(assigned) == len(batch), f"merchant {merchant_id} vanished"
        for i, row in zip(by_merchant[merchant_id], sorted(r["cursor"] for r in assigned), strict=True):
            cursors[i] = row
    return cursors


def from_row(row: asyncpg.Record) -> merchant_pb2.MerchantEvent:
    """The event a merchant_events row holds, with its cursor and time."""
    event = merchant_pb2.MerchantEvent.FromString(row["payload"])
    event.cursor = row["cursor"]
    event.event_time.FromDatetime(row["event_time"])
    return event


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


def session_moved(session: common_pb2.Session, step: common_pb2.AssignmentStep) -> list[Event]:
    """A transfer or re-assignment (SPEC R13): SessionUnassigned for the agent it left, then
    SessionAssigned for the one that holds it now (``session.assigned_agent_id``)."""
    left = Event(
        session.merchant_id,
        uuid.UUID(session.session_id),
        step.from_agent_id,
        "session_unassigned",
        merchant_pb2.MerchantEvent(session_unassigned=merchant_pb2.SessionUnassigned(session=session, step=step)),
    )
    assigned = _event(
        session,
        "session_assigned",
        merchant_pb2.MerchantEvent(session_assigned=merchant_pb2.SessionAssigned(session=session, step=step)),
    )
    return [left, assigned]
