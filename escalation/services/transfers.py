"""TransferSession and the assignment history (SPEC R13); the moves themselves are services/moves.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from escalation import errors
from escalation.auth import Identity, Role
from escalation.domain.assignment import MoveReason
from escalation.domain.session import State
from escalation.services import callers, moves, sessions
from escalation.services.directory import MerchantScope
from escalation.store import signals
from escalation.store.queries import sql


@dataclass(frozen=True)
class TransferRequest:
    """Move ``session_id`` to ``agent_id``; ``request_id``/``request_hash`` are the AIP-155 key and
    the fingerprint of (session_id, agent_id)."""

    session_id: uuid.UUID
    agent_id: str
    request_id: str
    request_hash: bytes


@dataclass(frozen=True)
class SessionView:
    """A session row (``get_session``) with its moves (``session_moves`` rows, step order)."""

    session: asyncpg.Record
    moves: list[asyncpg.Record]


async def transfer_session(pool: asyncpg.Pool, target: MerchantScope, req: TransferRequest) -> SessionView:
    """Moves an open session of the shop to another eligible agent (SPEC R13), in one transaction.

    Only the shop's main account or ops. The same request_id (per shop and caller) returns the session
    as it is now without moving it again, whatever changed since (AIP-155: the lookup comes before
    every check of the session's and the target's state, after the caller's own standing and
    authority). Raises AgentDisabled /
    ImPermissionRequired (the caller's standing), RequestIdReused, MerchantNotFound, NotMainAccount,
    SessionNotFound (no such session in this shop), SessionClosed (with ticket_id), AgentNotFound,
    AgentNotEligible (SPEC R1), AlreadyAssigned (the target holds it already).
    """
    caller = target.caller
    structlog.contextvars.bind_contextvars(merchant_id=target.merchant_id, session_id=str(req.session_id))
    try:
        async with pool.acquire() as conn, conn.transaction():
            if caller.role is Role.MERCHANT:
                await callers.merchant_standing(conn, caller)
            merchant = await conn.fetchrow(sql("get_merchant"), target.merchant_id)
            if merchant is None:
                raise errors.MerchantNotFound()
            # The caller's authority comes first, replays included: a former main account sees no more.
            _main_account_or_ops(caller, merchant)
            prior = await _replayed(conn, target, req)
            if prior is not None:
                return prior
            # Lock order: the session, then the merchant row, then agent rows (services/moves.py).
            s = await conn.fetchrow(sql("lock_session_for_move"), req.session_id, target.merchant_id)
            if s is None:
                raise errors.SessionNotFound()
            # A twin of this request may have committed while we waited for the session.
            prior = await _replayed(conn, target, req)
            if prior is not None:
                return prior
            if s["state"] == State.ENDED:
                ticket_id = s["ticket_id"]
                raise errors.SessionClosed(metadata={"ticket_id": str(ticket_id)} if ticket_id else None)
            merchant = await conn.fetchrow(sql("lock_merchant"), target.merchant_id)
            assert merchant is not None, "merchants are never deleted while they have sessions"
            _main_account_or_ops(caller, merchant)  # again: the main account may have moved meanwhile
            agent = await conn.fetchrow(sql("get_agent"), target.merchant_id, req.agent_id)
            if agent is None:
                raise errors.AgentNotFound()
            if not agent["eligible"]:
                raise errors.AgentNotEligible(metadata={"agent_id": req.agent_id})
            if s["assigned_agent_id"] == req.agent_id:
                raise errors.AlreadyAssigned(metadata={"agent_id": req.agent_id})
            move = moves.Move(
                req.session_id,
                target.merchant_id,
                s["assigned_agent_id"],
                req.agent_id,
                MoveReason.TRANSFERRED,
                request_id=req.request_id,
                request_hash=req.request_hash,
            )
            await moves.apply(conn=conn, moves=[move], actor=caller)
            view = await _view(conn, req.session_id)
    except asyncpg.UniqueViolationError as exc:
        # The same request id for another session at the same moment: the other transaction won.
        if exc.constraint_name != "session_assignments_request_id":
            raise
        async with pool.acquire() as conn:
            prior = await _replayed(conn, target, req)
            assert prior is not None, "the row that won the index is committed"
            return prior
    else:
        # After the commit: both agents' streams and the platform's WatchSession hear of it now (R8).
        signals.touch(pool, target.merchant_id)
        return view


def _main_account_or_ops(caller: Identity, merchant: asyncpg.Record) -> None:
    if caller.role is Role.MERCHANT and merchant["main_account_id"] != caller.subject:
        raise errors.NotMainAccount("only the shop's main account may transfer sessions")


async def _replayed(conn: asyncpg.Connection, target: MerchantScope, req: TransferRequest) -> SessionView | None:
    prior = await conn.fetchrow(
        sql("find_transfer_by_request"), target.merchant_id, target.caller.subject, req.request_id
    )
    if prior is None:
        return None
    if prior["request_hash"] != req.request_hash:
        raise errors.RequestIdReused()
    return await _view(conn, prior["session_id"])


async def _view(conn: asyncpg.Connection, session_id: uuid.UUID) -> SessionView:
    session = await conn.fetchrow(sql("get_session"), session_id)
    assert session is not None
    return SessionView(session, list(await conn.fetch(sql("session_moves"), [session_id])))


async def get_session(pool: asyncpg.Pool, caller: Identity, session_id: uuid.UUID) -> SessionView:
    """GetSession: the session the caller may see now, with its assignment history's moves (SPEC R9,
    R13). Raises as sessions.get_session."""
    session = await sessions.get_session(pool, caller, session_id)
    return SessionView(session, list(await pool.fetch(sql("session_moves"), [session_id])))
