"""Use cases of sessions: open (with assignment), messages both ways, close, read (SPEC R2–R6, R9).

Every write locks the session row first (or, to open one, the merchant row), so the rules hold with
any number of server replicas on one database.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog

from escalation import errors
from escalation.auth import Identity, Role
from escalation.config import Settings
from escalation.domain import assignment
from escalation.domain.session import CloseReason, Kind, Sender
from escalation.domain.tickets import DEFAULT_SLA
from escalation.observability import metrics
from escalation.services import callers, ending, records
from escalation.store import events, session_writes, signals
from escalation.store.queries import sql
from escalation.v1 import common_pb2

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SessionPolicy:
    """Settings the session rules need (from configuration)."""

    remind_before: timedelta = timedelta(seconds=60)
    ticket_sla: Mapping[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_SLA))
    # Development and tests only: replaces every merchant's reply timeout (seconds), so a session
    # times out in seconds instead of minutes. Never set in production.
    reply_timeout_override: float | None = None
    # Development and tests only, the same for the idle timeout (SPEC R12, seconds). Never in production.
    idle_timeout_override: float | None = None
    # A Connect stream counts as live while its server refreshed it this recently (seconds).
    presence_window: float = 45.0

    def first_due(self, reply_timeout: float) -> float:
        """Seconds from a platform message until the earliest instant its deadline or reminder can fall
        due (SPEC R5: the reminder, ``remind_before`` ahead of the deadline, never before the message)."""
        return max(0.0, reply_timeout - self.remind_before.total_seconds())

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionPolicy:
        return cls(
            remind_before=timedelta(seconds=settings.remind_before_seconds),
            ticket_sla=settings.ticket_sla,
            reply_timeout_override=settings.dev_override_reply_timeout_seconds,
            idle_timeout_override=settings.dev_override_idle_timeout_seconds,
        )


@dataclass(frozen=True)
class NewMessage:
    kind: Kind
    content: bytes
    client_msg_id: str | None = None
    template_id: str | None = None


@dataclass(frozen=True)
class OpenRequest:
    request_id: str
    request_hash: bytes
    merchant_id: str
    category: str
    order_id: str | None
    messages: Sequence[NewMessage]


@dataclass(frozen=True)
class Opened:
    """An OpenSession outcome: the sessions row and the opening messages' rows, and the same as the
    serialized escalation.v1.Session and Messages the database built (records.opened() reads those)."""

    session: asyncpg.Record
    messages: list[asyncpg.Record]
    replayed: bool
    session_pb: bytes
    message_pbs: list[bytes]


@dataclass(frozen=True)
class Scope:
    """R9: the sessions a caller may see, as the scoped queries' parameters (None = any)."""

    merchant_id: str | None = None
    assigned_agent_id: str | None = None
    platform_agent_id: str | None = None

    def params(self) -> tuple[str | None, str | None, str | None]:
        return self.merchant_id, self.assigned_agent_id, self.platform_agent_id


async def caller_scope(conn: asyncpg.Connection, caller: Identity, *, reading: bool) -> Scope:
    """The caller's scope as the directory says now, re-read on every call (SPEC R1, R9).

    Platform agents see the sessions they opened (``platform_supervisor``: all). A merchant agent is
    looked up in its shop: the main account sees the shop's sessions, a sub-account those assigned
    to it — so a main account moved away drops to its own at once. Raises AgentDisabled for a
    disabled agent (reads and writes alike), ImPermissionRequired for an agent the shop does not
    know and, when ``reading``, for one without IM permission (its sessions are IM conversations;
    writes check IM permission after the R4 replay lookup instead). Ops sees no session:
    SessionNotFound.
    """
    if caller.role is Role.PLATFORM_SUPERVISOR:
        return Scope()
    if caller.role is Role.PLATFORM:
        return Scope(platform_agent_id=caller.subject)
    if caller.role is not Role.MERCHANT:
        raise errors.SessionNotFound()
    standing = await callers.merchant_standing(conn, caller)
    if reading and not standing.im_permission:
        raise errors.ImPermissionRequired()
    if standing.main_account:
        return Scope(merchant_id=caller.merchant_id)
    return Scope(merchant_id=caller.merchant_id, assigned_agent_id=caller.subject)


async def _lock_visible(conn: asyncpg.Connection, caller: Identity, session_id: uuid.UUID) -> asyncpg.Record:
    """Locks the session for a write if it is in the caller's scope; SessionNotFound otherwise, having
    neither locked nor waited for a session outside it."""
    scope = await caller_scope(conn, caller, reading=False)
    s = await conn.fetchrow(sql("lock_session"), session_id, *scope.params())
    if s is None:
        raise errors.SessionNotFound()
    return s


async def _get_visible(conn: asyncpg.Connection, caller: Identity, session_id: uuid.UUID) -> asyncpg.Record:
    scope = await caller_scope(conn, caller, reading=True)
    row = await conn.fetchrow(sql("get_session_in_scope"), session_id, *scope.params())
    if row is None:
        raise errors.SessionNotFound()
    return row


# --- open ----------------------------------------------------------------------------------------


async def open_session(pool: asyncpg.Pool, caller: Identity, req: OpenRequest, policy: SessionPolicy) -> Opened:
    """Opens a session and assigns it (SPEC R2) with its opening messages, in one round trip.

    The same request_id replays the session as it is now (AIP-155), before any check of the merchant.
    Raises RequestIdReused, MerchantNotFound,
    MerchantDisabled, NoEligibleAgent or SessionFull (R7).
    """
    structlog.contextvars.bind_contextvars(merchant_id=req.merchant_id)
    async with pool.acquire() as conn:
        row = await session_writes.open_session(
            conn=conn,
            platform_agent_id=caller.subject,
            request_id=req.request_id,
            request_hash=req.request_hash,
            merchant_id=req.merchant_id,
            category=req.category,
            order_id=req.order_id,
            kinds=[m.kind.value for m in req.messages],
            contents=[m.content for m in req.messages],
            rule_version=assignment.RULE_VERSION,
            presence_window=policy.presence_window,
            reply_timeout_override=policy.reply_timeout_override or None,
            idle_timeout_override=policy.idle_timeout_override or None,
            remind_before=policy.remind_before.total_seconds(),
        )
    opened = Opened(
        row["opened_session"],
        list(row["opened_messages"]),
        replayed=row["replayed"],
        session_pb=row["session_pb"],
        message_pbs=list(row["message_pbs"]),
    )
    if not opened.replayed:
        signals.touch(
            pool, req.merchant_id, due_in=policy.first_due(row["reply_timeout_seconds"]) if req.messages else None
        )
        structlog.contextvars.bind_contextvars(session_id=str(opened.session["session_id"]))
        metrics.SESSIONS_OPENED.labels(category=req.category).inc()
        metrics.ASSIGNMENT_SATURATION.observe(row["saturation"])
    return opened


# --- messages ------------------------------------------------------------------------------------


async def add_message(
    pool: asyncpg.Pool,
    caller: Identity,
    session_id: uuid.UUID,
    message: NewMessage,
    policy: SessionPolicy,
) -> asyncpg.Record:
    """Appends a platform message (caller is platform) or a merchant reply (caller is a merchant), in
    one round trip (store/session_writes.py).

    A retried client_msg_id (scoped to the session and the verified sender, SPEC R4) returns the
    original message, even after the session ended, the template was deleted or IM permission was
    removed. Returns the messages row with ``message_pb`` (records.sent_message() reads it). Raises
    SessionNotFound (outside the caller's scope too, R9), AgentDisabled, ClientMsgIdReused,
    ImPermissionRequired, TemplateNotFound, SessionClosed (R6, with the ticket id), or SessionFull
    (SPEC R7: MAX_SESSION_MESSAGES / MAX_SESSION_CONTENT_BYTES).
    """
    structlog.contextvars.bind_contextvars(session_id=str(session_id))
    if caller.role is Role.MERCHANT:
        assert caller.merchant_id is not None, "a merchant token names its shop"
        sender, caller_merchant_id, platform_scope = Sender.MERCHANT, caller.merchant_id, None
    elif caller.role in (Role.PLATFORM, Role.PLATFORM_SUPERVISOR):
        sender, caller_merchant_id = Sender.PLATFORM, None
        platform_scope = caller.subject if caller.role is Role.PLATFORM else None
    else:
        raise errors.SessionNotFound()  # R9: ops sees no session
    async with pool.acquire() as conn:
        row = await session_writes.send_message(
            conn=conn,
            session_id=session_id,
            sender=sender.value,
            sender_id=caller.subject,
            caller_merchant_id=caller_merchant_id,
            scope_platform_agent_id=platform_scope,
            kind=message.kind.value,
            client_msg_id=message.client_msg_id,
            template_id=message.template_id,
            content=message.content,
            reply_timeout_override=policy.reply_timeout_override or None,
            idle_timeout_override=policy.idle_timeout_override or None,
            remind_before=policy.remind_before.total_seconds(),
        )
    signals.touch(
        pool,
        row["merchant_id"],
        due_in=policy.first_due(row["reply_timeout_seconds"]) if sender is Sender.PLATFORM else None,
    )
    if row["first_reply_seconds"] is not None:
        metrics.FIRST_REPLY.observe(row["first_reply_seconds"])
    return row


async def mark_read(pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID, seq: int) -> None:
    """A merchant read receipt (R8): the read mark only moves forward; the platform sees it live.

    Raises SessionNotFound (outside the caller's scope, R9) and, for a merchant caller the directory no
    longer admits, AgentDisabled or ImPermissionRequired.
    """
    async with pool.acquire() as conn, conn.transaction():
        s = await _lock_visible(conn, caller, session_id)
        marked = await conn.fetchrow(sql("mark_read"), session_id, seq)
        if marked is None:
            return
        session = common_pb2.Session(
            session_id=str(session_id), merchant_id=s["merchant_id"], assigned_agent_id=s["assigned_agent_id"]
        )
        receipt = common_pb2.ReadReceipt(
            session_id=str(session_id),
            seq=marked["merchant_read_seq"],
            reader=common_pb2.SENDER_MERCHANT,
            reader_id=caller.subject,
            read_time=records.timestamp(marked["at"]),
        )
        await events.append(conn=conn, events=[events.read_receipt(session, receipt)])
    signals.touch(pool, s["merchant_id"])


# --- ending --------------------------------------------------------------------------------------


async def close_session(
    pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID, reason: CloseReason, policy: SessionPolicy
) -> asyncpg.Record:
    """The platform ends a session (SPEC R6: RESOLVED, or ESCALATED into a ticket, R7), in one round trip.

    What ending writes is services/ending.py's rule (the function both ways of ending run). Returns the
    ended session with ``ticket_id`` and ``session_pb`` (records.closed_session() reads it). Raises
    SessionNotFound (outside the caller's scope too, R9) or SessionClosed (with the ticket id).
    """
    structlog.contextvars.bind_contextvars(session_id=str(session_id))
    if caller.role not in (Role.PLATFORM, Role.PLATFORM_SUPERVISOR):
        raise errors.SessionNotFound()  # R3: only the platform ends sessions; nothing else is in scope
    async with pool.acquire() as conn:
        row = await session_writes.close_session(
            conn=conn,
            session_id=session_id,
            scope_platform_agent_id=caller.subject if caller.role is Role.PLATFORM else None,
            reason=reason.value,
            makes_ticket=reason.makes_ticket,
            ticket=ending.ticket_output(policy),
        )
    signals.touch(pool, row["merchant_id"], outbox=reason.makes_ticket)
    metrics.SESSIONS_CLOSED.labels(reason=reason.value).inc()
    return row


# --- reads ---------------------------------------------------------------------------------------


async def get_session(pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID) -> asyncpg.Record:
    """The session, if the caller may see it now (R9); raises SessionNotFound, AgentDisabled or
    ImPermissionRequired (see caller_scope)."""
    async with pool.acquire() as conn:
        return await _get_visible(conn, caller, session_id)


@dataclass(frozen=True)
class SessionFilter:
    merchant_id: str | None
    state: str | None
    open_time_start: datetime | None
    open_time_end: datetime | None


async def list_sessions(
    pool: asyncpg.Pool,
    caller: Identity,
    where: SessionFilter,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first, scoped to what the caller may see now (R9; errors as caller_scope)."""
    if caller.role is Role.MERCHANT and where.merchant_id not in (None, caller.merchant_id):
        return []
    if caller.role not in (Role.MERCHANT, Role.PLATFORM, Role.PLATFORM_SUPERVISOR):
        return []
    async with pool.acquire() as conn:
        scope = await caller_scope(conn, caller, reading=True)
        rows: list[asyncpg.Record] = await conn.fetch(
            sql("list_sessions"),
            scope.merchant_id or where.merchant_id,
            scope.assigned_agent_id,
            scope.platform_agent_id,
            where.state,
            where.open_time_start,
            where.open_time_end,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return rows


async def list_messages(
    pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID, *, after_seq: int, limit: int
) -> list[asyncpg.Record]:
    """A session's messages with ``seq`` > ``after_seq`` in seq order, at most ``limit`` (AIP-158).

    Raises what :func:`get_session` raises (SessionNotFound outside the caller's scope, R9).
    """
    async with pool.acquire() as conn:
        await _get_visible(conn, caller, session_id)
        rows: list[asyncpg.Record] = await conn.fetch(sql("list_messages"), session_id, after_seq, limit)
        return rows
