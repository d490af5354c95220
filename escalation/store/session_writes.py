"""The session write path as one server-side function call each (issue 13; migrations/0010).

Each function below is one statement, run by the caller on its own (an implicit transaction: no
BEGIN/COMMIT round trips). A rule the function refuses comes back as its domain error, translated by
store/db.py ``translate()``; anything else the driver raises propagates unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from escalation import errors
from escalation.domain import limits
from escalation.store import db
from escalation.store.queries import sql


def _refused(exc: asyncpg.PostgresError) -> errors.EscalationError | None:
    return db.translate(exc) if exc.sqlstate == db.REFUSAL_STATE else None


async def send_message(
    *,
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    sender: str,
    sender_id: str,
    caller_merchant_id: str | None,
    scope_platform_agent_id: str | None,
    kind: str,
    client_msg_id: str | None,
    template_id: str | None,
    content: bytes,
    reply_timeout_override: float | None,
    remind_before: float,
    idle_timeout_override: float | None = None,
) -> asyncpg.Record:
    """Appends one message with its event, or replays a retried ``client_msg_id`` (SPEC R3–R5, R7–R9).

    ``sender`` is ``PLATFORM`` or ``MERCHANT``; ``caller_merchant_id`` the shop of a merchant caller
    (its standing is read in the same call), ``scope_platform_agent_id`` limits a platform caller to
    the sessions it opened (None: a supervisor). ``remind_before`` and ``reply_timeout_override`` are
    seconds. Returns the messages row's columns plus ``message_pb`` (serialized escalation.v1.Message),
    ``first_reply_seconds`` (float, or None unless this is the session's first merchant message), the
    session's ``merchant_id`` and ``reply_timeout_seconds`` (the timeout in force, seconds).
    Raises ImPermissionRequired, AgentDisabled, SessionNotFound, ClientMsgIdReused, TemplateNotFound,
    SessionClosed (with the ticket id, SPEC R6) or SessionFull (R7).
    """
    try:
        row: asyncpg.Record = await conn.fetchrow(
            sql("send_message"),
            session_id,
            sender,
            sender_id,
            caller_merchant_id,
            scope_platform_agent_id,
            kind,
            client_msg_id,
            template_id,
            content,
            reply_timeout_override,
            remind_before,
            limits.MAX_SESSION_MESSAGES,
            limits.MAX_SESSION_CONTENT_BYTES,
            idle_timeout_override,  # SPEC R12 dev override, seconds; None: the merchant's setting
        )
    except asyncpg.PostgresError as exc:
        if (refusal := _refused(exc)) is not None:
            raise refusal from None
        raise
    return row


async def open_session(
    *,
    conn: asyncpg.Connection,
    platform_agent_id: str,
    request_id: str,
    request_hash: bytes,
    merchant_id: str,
    category: str,
    order_id: str | None,
    kinds: Sequence[str],
    contents: Sequence[bytes],
    rule_version: str,
    presence_window: float,
    reply_timeout_override: float | None,
    remind_before: float,
    idle_timeout_override: float | None = None,
) -> asyncpg.Record:
    """Opens and assigns a session with its opening messages and events, or replays ``request_id``.

    SPEC R2 (pick + count increment under the merchant row lock, exact saturation, the tie-breaks),
    R4/R5 (messages and deadline, database clock), R8 (events), AIP-155 (replay). ``kinds`` and
    ``contents`` are the opening messages (parallel); ``presence_window``, ``remind_before`` and
    ``reply_timeout_override`` are seconds. Returns ``replayed``, ``opened_session`` (the sessions row),
    ``session_pb`` (serialized escalation.v1.Session), ``opened_messages`` (messages rows),
    ``message_pbs`` (serialized escalation.v1.Message each), ``saturation`` (the winner's, before the
    open) and ``reply_timeout_seconds`` (the timeout in force; both None on a replay). Raises
    RequestIdReused, MerchantNotFound, MerchantDisabled, NoEligibleAgent, SessionFull.
    """
    try:
        row: asyncpg.Record = await conn.fetchrow(
            sql("open_session"),
            platform_agent_id,
            request_id,
            request_hash,
            merchant_id,
            category,
            order_id,
            list(kinds),
            list(contents),
            rule_version,
            presence_window,
            reply_timeout_override,
            remind_before,
            limits.MAX_SESSION_MESSAGES,
            limits.MAX_SESSION_CONTENT_BYTES,
            idle_timeout_override,  # SPEC R12 dev override, seconds; None: the merchant's setting
        )
    except asyncpg.PostgresError as exc:
        if (refusal := _refused(exc)) is not None:
            raise refusal from None
        raise
    return row


def _sla_arrays(sla: Mapping[str, timedelta]) -> tuple[list[str], list[float]]:
    categories = sorted(sla)
    return categories, [sla[c].total_seconds() for c in categories]


@dataclass(frozen=True)
class TicketOutput:
    """Where a ticket goes and what it says it is (services/tickets.py owns the values): the SLA per
    category, the digest algorithm's name, the outbox topic and content type, and the traceparent of
    the span ending the session (None when not traced, docs/tracing.md)."""

    sla: Mapping[str, timedelta]
    digest_algorithm: str
    topic: str
    content_type: str
    traceparent: str | None


async def close_session(
    *,
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    scope_platform_agent_id: str | None,
    reason: str,
    makes_ticket: bool,
    ticket: TicketOutput,
) -> asyncpg.Record:
    """Ends a session in the platform caller's scope as ``reason`` and writes what that means, in one
    round trip (SPEC R6, R7, R9): ticket and outbox row when ``makes_ticket`` (the reason's, a domain
    rule), events, the agent's count. Returns the ended session (``ticket_id``, ``handle_by``,
    ``session_pb``). Raises SessionNotFound or SessionClosed (with the ticket id).
    """
    categories, seconds = _sla_arrays(ticket.sla)
    try:
        row: asyncpg.Record = await conn.fetchrow(
            sql("close_session"),
            session_id,
            scope_platform_agent_id,
            reason,
            makes_ticket,
            categories,
            seconds,
            ticket.digest_algorithm,
            ticket.topic,
            ticket.content_type,
            ticket.traceparent,
        )
    except asyncpg.PostgresError as exc:
        if (refusal := _refused(exc)) is not None:
            raise refusal from None
        raise
    return row


async def end_sessions_locked(
    *,
    conn: asyncpg.Connection,
    session_ids: Sequence[uuid.UUID],
    reason: str,
    makes_ticket: bool,
    ticket: TicketOutput,
) -> list[asyncpg.Record]:
    """What ending means for sessions the caller's statement has just ended and still holds (SPEC R6,
    R7): tickets with outbox rows when ``makes_ticket``, events, released counts, in the
    caller's transaction. Returns the sessions in close order, as close_session does. Raises only what
    the driver raises.
    """
    categories, seconds = _sla_arrays(ticket.sla)
    rows: list[asyncpg.Record] = await conn.fetch(
        sql("end_sessions_locked"),
        list(session_ids),
        reason,
        makes_ticket,
        categories,
        seconds,
        ticket.digest_algorithm,
        ticket.topic,
        ticket.content_type,
        ticket.traceparent,
    )
    return rows
