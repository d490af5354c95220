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
from escalation.domain import assignment, limits
from escalation.domain.session import CloseReason, Kind, Sender, State
from escalation.domain.tickets import DEFAULT_SLA
from escalation.observability import metrics
from escalation.services import callers, ending, records
from escalation.store import events
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
    # A Connect stream counts as live while its server refreshed it this recently (seconds).
    presence_window: float = 45.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionPolicy:
        return cls(
            remind_before=timedelta(seconds=settings.remind_before_seconds),
            ticket_sla=settings.ticket_sla,
            reply_timeout_override=settings.dev_override_reply_timeout_seconds,
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
    session: asyncpg.Record
    messages: list[asyncpg.Record]
    replayed: bool


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
    s = await conn.fetchrow(sql("lock_session"), session_id, caller.subject, *scope.params())
    if s is None:
        raise errors.SessionNotFound()
    return s


async def _get_visible(conn: asyncpg.Connection, caller: Identity, session_id: uuid.UUID) -> asyncpg.Record:
    scope = await caller_scope(conn, caller, reading=True)
    row = await conn.fetchrow(sql("get_session_in_scope"), session_id, *scope.params())
    if row is None:
        raise errors.SessionNotFound()
    return row


def _closed(row: asyncpg.Record) -> errors.SessionClosed:
    ticket_id = row["ticket_id"]
    return errors.SessionClosed(metadata={"ticket_id": str(ticket_id)} if ticket_id else None)


# --- open ----------------------------------------------------------------------------------------


async def open_session(pool: asyncpg.Pool, caller: Identity, req: OpenRequest, policy: SessionPolicy) -> Opened:
    """Opens a session and assigns it (R2) in one transaction; the same request_id replays (AIP-155)."""
    structlog.contextvars.bind_contextvars(merchant_id=req.merchant_id)
    try:
        async with pool.acquire() as conn, conn.transaction():
            merchant = await conn.fetchrow(
                sql("lock_merchant_for_open"), req.merchant_id, caller.subject, req.request_id
            )
            if merchant is None:
                # Unknown merchant; but the request id may name a session opened for another one.
                existing = await conn.fetchrow(sql("find_session_by_request"), caller.subject, req.request_id)
                if existing is not None:
                    return await _replay(conn, caller, existing["session_id"], existing["request_hash"], req)
                raise errors.MerchantNotFound()
            if merchant["prior_session_id"] is not None:
                return await _replay(conn, caller, merchant["prior_session_id"], merchant["prior_hash"], req)
            if merchant["disabled"]:
                raise errors.MerchantDisabled()
            timeout = policy.reply_timeout_override or merchant["reply_timeout_seconds"]
            opened, saturation = await _assign_and_insert(conn, caller, req, timeout, policy)
    except asyncpg.UniqueViolationError as exc:
        # Same request_id, other merchant, at the same moment: the other transaction won the index.
        if exc.constraint_name != "sessions_request_id":
            raise
        async with pool.acquire() as conn:
            existing = await conn.fetchrow(sql("find_session_by_request"), caller.subject, req.request_id)
            assert existing is not None
            return await _replay(conn, caller, existing["session_id"], existing["request_hash"], req)
    structlog.contextvars.bind_contextvars(session_id=str(opened.session["session_id"]))
    metrics.SESSIONS_OPENED.labels(category=req.category).inc()
    metrics.ASSIGNMENT_SATURATION.observe(saturation)
    return opened


async def _replay(
    conn: asyncpg.Connection, caller: Identity, session_id: uuid.UUID, request_hash: bytes, req: OpenRequest
) -> Opened:
    if request_hash != req.request_hash:
        raise errors.RequestIdReused()
    session = await conn.fetchrow(sql("get_session"), session_id)
    messages = await conn.fetch(sql("list_messages"), session_id, 0, len(req.messages))
    return Opened(session, list(messages), replayed=True)


async def _assign_and_insert(
    conn: asyncpg.Connection, caller: Identity, req: OpenRequest, reply_timeout: float, policy: SessionPolicy
) -> tuple[Opened, float]:
    rows = await conn.fetch(sql("assignment_candidates"), req.merchant_id, policy.presence_window)
    if not rows:
        raise errors.NoEligibleAgent()
    candidates = [
        assignment.Candidate(r["agent_id"], r["open_sessions"], r["capacity"], r["last_assign_time"]) for r in rows
    ]
    winner = assignment.choose(candidates)
    await conn.execute(sql("take_assignment"), req.merchant_id, winner.agent_id)
    decision = common_pb2.AssignmentDecision(
        rule_version=assignment.RULE_VERSION,
        agent_id=winner.agent_id,
        # Recorded for audit (R1), never used to choose: online status is not considered.
        agent_connected=next(r["connected"] for r in rows if r["agent_id"] == winner.agent_id),
        candidates=[
            common_pb2.AssignmentCandidate(
                agent_id=c.agent_id,
                open_sessions=c.open_sessions,
                capacity=c.capacity,
                saturation=float(c.saturation),
                last_assign_time=records.timestamp(c.last_assign_time),
            )
            for c in sorted(candidates, key=lambda c: c.agent_id)
        ],
    )
    session_id = uuid.uuid4()
    decision.decide_time.GetCurrentTime()
    await conn.execute(
        sql("insert_session"),
        session_id,
        req.merchant_id,
        winner.agent_id,
        caller.subject,
        req.order_id,
        req.category,
        req.request_id,
        req.request_hash,
        decision.SerializeToString(),
    )
    messages = [
        await _append(conn, session_id, Sender.PLATFORM, caller.subject, m, reply_timeout, policy) for m in req.messages
    ]
    session = await conn.fetchrow(sql("get_session"), session_id)
    await events.append(
        conn=conn, events=events.session_assigned(records.session(session), [records.message(m) for m in messages])
    )
    return Opened(session, messages, replayed=False), float(winner.saturation)


# --- messages ------------------------------------------------------------------------------------


async def _append(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    sender: Sender,
    sender_id: str,
    message: NewMessage,
    reply_timeout: float,
    policy: SessionPolicy,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        sql("append_message"),
        session_id,
        sender.value,
        sender_id,
        message.kind.value,
        message.client_msg_id,
        reply_timeout,
        policy.remind_before.total_seconds(),
        message.template_id,
        message.content,
        limits.MAX_SESSION_MESSAGES,
        limits.MAX_SESSION_CONTENT_BYTES,
    )
    if row is None:
        # The caller holds the lock and saw the session open, so only the size bound refuses.
        raise await _full(conn, session_id, len(message.content))
    return row


async def _full(conn: asyncpg.Connection, session_id: uuid.UUID, adding: int) -> errors.SessionFull:
    """Which R7 bound refused a message of ``adding`` content bytes (read under the session lock)."""
    s = await conn.fetchrow(sql("session_size"), session_id)
    assert s is not None, "append_message on a missing session"
    if s["last_seq"] >= limits.MAX_SESSION_MESSAGES:
        return errors.SessionFull(
            f"the session already holds {limits.MAX_SESSION_MESSAGES} messages; close or escalate it",
            metadata={"limit": "messages", "max_messages": str(limits.MAX_SESSION_MESSAGES)},
        )
    return errors.SessionFull(
        f"this message ({adding} bytes) would take the session past {limits.MAX_SESSION_CONTENT_BYTES} content "
        "bytes; close or escalate it",
        metadata={"limit": "content_bytes", "max_content_bytes": str(limits.MAX_SESSION_CONTENT_BYTES)},
    )


async def add_message(
    pool: asyncpg.Pool,
    caller: Identity,
    session_id: uuid.UUID,
    message: NewMessage,
    policy: SessionPolicy,
) -> asyncpg.Record:
    """Appends a platform message (caller is platform) or a merchant reply (caller is a merchant).

    A retried client_msg_id (scoped to the session and the verified sender, SPEC R4) returns the
    original message, even after the session ended, the template was deleted or IM permission was
    removed. Raises SessionNotFound, ClientMsgIdReused, ImPermissionRequired, TemplateNotFound,
    SessionClosed, or SessionFull (SPEC R7: MAX_SESSION_MESSAGES / MAX_SESSION_CONTENT_BYTES).
    """
    sender = Sender.MERCHANT if caller.role is Role.MERCHANT else Sender.PLATFORM
    structlog.contextvars.bind_contextvars(session_id=str(session_id))
    first_reply: float | None = None
    async with pool.acquire() as conn, conn.transaction():
        try:
            s = await _lock_visible(conn, caller, session_id)
        except errors.SessionNotFound:
            # R4 after R13: the session may have moved to another agent since this sender's send;
            # the sender's own message is still the answer to its retry (it reveals nothing new).
            prior = await _own_prior(conn, session_id, sender, caller.subject, message)
            if prior is None:
                raise
            return prior
        structlog.contextvars.bind_contextvars(merchant_id=s["merchant_id"])
        # The replay comes before every check of current state (IM permission, template, open
        # session): a retry of a request that succeeded returns the original (AIP-155, issue 9 §7).
        if message.client_msg_id is not None:
            prior = await conn.fetchrow(
                sql("find_message_by_client_id"), session_id, sender.value, caller.subject, message.client_msg_id
            )
            if prior is not None:
                if not _same(prior, message):
                    raise errors.ClientMsgIdReused()
                return prior
        if sender is Sender.MERCHANT and not s["caller_may_im"]:
            raise errors.ImPermissionRequired()
        if message.template_id is not None:
            body = await conn.fetchval(sql("get_template_body"), s["merchant_id"], message.template_id)
            if body is None:
                raise errors.TemplateNotFound()
            message = NewMessage(
                Kind.TEXT,
                common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString(),
                message.client_msg_id,
                message.template_id,
            )
        if s["state"] == State.ENDED:
            raise _closed(s)
        timeout = policy.reply_timeout_override or s["reply_timeout_seconds"]
        row = await _append(conn, session_id, sender, caller.subject, message, timeout, policy)
        session = common_pb2.Session(
            session_id=str(session_id), merchant_id=s["merchant_id"], assigned_agent_id=s["assigned_agent_id"]
        )
        await events.append(conn=conn, events=[events.message_added(session, records.message(row))])
        if sender is Sender.MERCHANT and s["awaiting_first_reply"]:
            first_reply = (row["send_time"] - s["open_time"]).total_seconds()
    if first_reply is not None:
        metrics.FIRST_REPLY.observe(first_reply)
    return row


async def _own_prior(
    conn: asyncpg.Connection, session_id: uuid.UUID, sender: Sender, sender_id: str, message: NewMessage
) -> asyncpg.Record | None:
    """The sender's earlier message with this client_msg_id in the session, if it is a retry of it."""
    if message.client_msg_id is None:
        return None
    prior: asyncpg.Record | None = await conn.fetchrow(
        sql("find_message_by_client_id"), session_id, sender.value, sender_id, message.client_msg_id
    )
    if prior is not None and not _same(prior, message):
        raise errors.ClientMsgIdReused()
    return prior


def _same(prior: asyncpg.Record, message: NewMessage) -> bool:
    """Whether a stored message is what this retry asks for. A template reply is the same when it
    names the same template: its body is whatever the template said when the original was stored."""
    if message.template_id is not None:
        return bool(prior["template_id"] == message.template_id)
    return bool((prior["kind"], prior["content"], prior["template_id"]) == (message.kind.value, message.content, None))


async def mark_read(pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID, seq: int) -> None:
    """A merchant read receipt (R8): the read mark only moves forward; the platform sees it live."""
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


# --- ending --------------------------------------------------------------------------------------


async def end_locked(
    conn: asyncpg.Connection, session_id: uuid.UUID, reason: CloseReason, policy: SessionPolicy
) -> uuid.UUID | None:
    """Ends a session whose row the caller has locked (R6) and writes what that means (R7, see
    services/ending.py). Returns the ticket id, or None. Raises SessionClosed if it had ended."""
    row = await conn.fetchrow(sql("end_session"), session_id, reason.value)
    if row is None:
        raise errors.SessionClosed()
    ended = await ending.end_session(conn=conn, session=row, reason=reason, policy=policy)
    return ended.ticket.ticket_id if ended.ticket else None


async def close_session(
    pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID, reason: CloseReason, policy: SessionPolicy
) -> asyncpg.Record:
    async with pool.acquire() as conn:
        async with conn.transaction():
            s = await _lock_visible(conn, caller, session_id)
            if s["state"] == State.ENDED:
                raise _closed(s)
            await end_locked(conn, session_id, reason, policy)
        metrics.SESSIONS_CLOSED.labels(reason=reason.value).inc()
        session: asyncpg.Record = await conn.fetchrow(sql("get_session"), session_id)
        return session


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
    async with pool.acquire() as conn:
        await _get_visible(conn, caller, session_id)
        rows: list[asyncpg.Record] = await conn.fetch(sql("list_messages"), session_id, after_seq, limit)
        return rows
