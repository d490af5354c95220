"""Moving open sessions between agents of a shop (SPEC R13): what a transfer and a re-assignment write.

A move changes the session's agent and nothing else (messages, reply deadline and reminder stay), adds
a row to the assignment history, moves one open session from the old agent's count to the new one's,
and tells both agents (SessionUnassigned, SessionAssigned) — all in the caller's transaction.

Lock order (store/events.py): session rows, then the merchant row, then agent rows. TransferSession
takes them in that order. A directory change holds the merchant row from its start, so it re-assigns
only the sessions it can lock without waiting (``FOR UPDATE SKIP LOCKED``): a session another
transaction holds belongs to a writer that is itself about to wait for the merchant row. The
directory use case re-assigns those right after its commit, one session at a time and in the usual
order (:func:`reassign_held`). docs/sessions.md, "Transfer and re-assignment".
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from escalation.auth import Identity
from escalation.domain import assignment
from escalation.domain.assignment import MoveReason
from escalation.services import records
from escalation.services.sessions import SessionPolicy
from escalation.store import events
from escalation.store.queries import sql
from escalation.v1 import common_pb2

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Move:
    """One session to move from ``from_agent_id`` to ``to_agent_id`` of shop ``merchant_id``.

    ``decision``: the R2 decision of a re-assignment (None for a transfer). ``request_id`` and
    ``request_hash``: TransferSession's idempotency key (AIP-155), None for re-assignments.
    """

    session_id: uuid.UUID
    merchant_id: str
    from_agent_id: str
    to_agent_id: str
    reason: MoveReason
    decision: common_pb2.AssignmentDecision | None = None
    request_id: str | None = None
    request_hash: bytes | None = None


async def apply(
    *,
    conn: asyncpg.Connection,
    moves: Sequence[Move],
    actor: Identity,
    assigned_at: Mapping[str, datetime] | None = None,
) -> None:
    """Writes ``moves`` in the caller's transaction (SPEC R13).

    The caller holds every moved session's row (each open, assigned to its ``from_agent_id``) and the
    merchant row. Per agent, one statement moves the counts: ``from`` agents lose one open session per
    move, ``to`` agents gain one and count as assigned at ``assigned_at[agent_id]`` (absent: the
    database clock now, as OpenSession stamps it). Raises only what the driver raises (the unique index
    ``session_assignments_request_id`` when a concurrent transfer used the same request id).
    """
    if not moves:
        return
    ids = [m.session_id for m in moves]
    await conn.execute(sql("move_sessions"), ids, [m.to_agent_id for m in moves])
    stored = await conn.fetch(
        sql("insert_moves"),
        ids,
        [m.merchant_id for m in moves],
        [m.reason.value for m in moves],
        [m.from_agent_id for m in moves],
        [m.to_agent_id for m in moves],
        [actor.subject] * len(moves),
        [actor.role.value] * len(moves),
        [m.decision.SerializeToString() if m.decision is not None else None for m in moves],
        [m.request_id for m in moves],
        [m.request_hash for m in moves],
    )
    steps = {row["session_id"]: records.assignment_step(row) for row in stored}
    rows = {r["session_id"]: r for r in await conn.fetch(sql("sessions_by_id"), ids)}
    # Events before agent rows: the merchant row first, as every writer does (store/events.py).
    await events.append(
        conn=conn,
        events=[
            e for m in moves for e in events.session_moved(records.session(rows[m.session_id]), steps[m.session_id])
        ],
    )
    now = await conn.fetchval(sql("database_now"))
    merchants = [m.merchant_id for m in moves]
    touched = sorted({(m.merchant_id, a) for m in moves for a in (m.from_agent_id, m.to_agent_id)})
    await conn.execute(sql("lock_agents"), [t[0] for t in touched], [t[1] for t in touched])
    await conn.execute(sql("release_assignments"), merchants, [m.from_agent_id for m in moves])
    taken = Counter((m.merchant_id, m.to_agent_id) for m in moves)
    await conn.execute(
        sql("take_assignments"),
        [k[0] for k in taken],
        [k[1] for k in taken],
        list(taken.values()),
        [(assigned_at or {}).get(agent_id, now) for _, agent_id in taken],
    )


@dataclass(frozen=True)
class Reassigned:
    """What :func:`reassign_ineligible` did: ``moved`` sessions; ``held`` the ones another transaction
    held (to re-assign after the commit, :func:`reassign_held`); ``stranded`` the ones that stay because
    nobody is eligible (SPEC R13: the reply deadline remains their safety net)."""

    moved: int = 0
    held: tuple[uuid.UUID, ...] = ()
    stranded: int = 0


async def reassign_ineligible(
    *, conn: asyncpg.Connection, merchant_id: str, actor: Identity, only: Sequence[uuid.UUID] | None = None
) -> Reassigned:
    """Re-assigns the open sessions of shop ``merchant_id`` whose agent is not eligible (SPEC R1, R13).

    Run in the transaction of the directory change, which holds the merchant row: each session goes,
    oldest first, to the agent the R2 rule picks among the eligible ones (:func:`assignment.choose_in_turn`,
    the rule OpenSession applies), with its decision, history row and events (:func:`apply`). Sessions
    another transaction holds are skipped and returned in ``held``; ``only`` limits the work to these
    sessions. When nobody is eligible the sessions stay. Raises only what the driver raises.
    """
    holders = {r["agent_id"]: r for r in await conn.fetch(sql("ineligible_holders"), merchant_id)}
    if not holders:
        return Reassigned()
    agent_ids = sorted(holders)
    wanted = [r["session_id"] for r in await conn.fetch(sql("open_sessions_of"), merchant_id, agent_ids)]
    if only is not None:
        wanted = [s for s in wanted if s in set(only)]
    limit_to = None if only is None else list(only)
    locked = await conn.fetch(sql("lock_open_sessions_of"), merchant_id, agent_ids, limit_to)
    held = tuple(sorted(set(wanted) - {r["session_id"] for r in locked}))
    if not locked:
        return Reassigned(held=held)
    rows = await conn.fetch(sql("assignment_candidates"), merchant_id, SessionPolicy().presence_window)
    if not rows:
        log.info("reassignment.nobody_eligible", merchant_id=merchant_id, sessions=len(locked))
        return Reassigned(held=held, stranded=len(locked))
    connected = {r["agent_id"]: bool(r["connected"]) for r in rows}
    candidates = [
        assignment.Candidate(r["agent_id"], r["open_sessions"], r["capacity"], r["last_assign_time"]) for r in rows
    ]
    now = await conn.fetchval(sql("database_now"))
    picks, after = assignment.choose_in_turn(candidates, len(locked), now)
    moves = []
    for session, pick in zip(locked, picks, strict=True):
        old = holders[session["assigned_agent_id"]]
        decision = records.assignment_decision(pick.winner, pick.seen, connected=connected[pick.winner.agent_id])
        decision.decide_time.FromDatetime(now)
        moves.append(
            Move(
                session["session_id"],
                merchant_id,
                session["assigned_agent_id"],
                pick.winner.agent_id,
                assignment.why_ineligible(disabled=old["disabled"], im_permission=old["im_permission"]),
                decision,
            )
        )
    # Each winner's last assignment time as the rule left it, so the next pick sees the same order.
    stamps = {c.agent_id: c.last_assign_time for c in after if c.last_assign_time is not None}
    await apply(conn=conn, moves=moves, actor=actor, assigned_at=stamps)
    log.info("reassignment.done", merchant_id=merchant_id, sessions=len(moves), held=len(held))
    return Reassigned(moved=len(moves), held=held)


async def reassign_held(
    pool: asyncpg.Pool, *, merchant_id: str, session_ids: Sequence[uuid.UUID], actor: Identity
) -> int:
    """Re-assigns sessions a directory change skipped because a writer held them (see the module's
    docstring), one transaction each, locking the session and then the merchant row. A session that
    ended meanwhile, or whose agent is eligible again, is left alone. Returns how many moved."""
    moved = 0
    for session_id in session_ids:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchrow(sql("lock_session_for_move"), session_id, merchant_id) is None:
                continue
            await conn.execute(sql("lock_merchant"), merchant_id)
            done = await reassign_ineligible(conn=conn, merchant_id=merchant_id, actor=actor, only=[session_id])
            moved += done.moved
    return moved
