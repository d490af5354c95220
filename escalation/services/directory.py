"""Use cases of the merchant directory: merchants, agents, reception settings, reply templates.

Each function owns its transaction; store queries come from store/sql/directory.sql. Besides the
errors each docstring names, every function may raise DatabaseUnavailable (``UNAVAILABLE``) and
ConcurrentUpdate (``ABORTED``) through ``store/db.translate``. "Write errors" below means: AgentDisabled
or ImPermissionRequired for a merchant caller the directory no longer admits (services/callers.py),
MerchantNotFound, and NotMainAccount for a sub-account (only ops and the main account change settings).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from escalation import errors
from escalation.auth import Identity, Role
from escalation.domain.reception import DEFAULT_CAPACITY
from escalation.services import callers, moves
from escalation.store import signals
from escalation.store.queries import sql


@dataclass(frozen=True)
class MerchantScope:
    """The merchant a directory call acts on, resolved from the caller's identity."""

    merchant_id: str
    caller: Identity


def scope(caller: Identity, requested_merchant_id: str) -> MerchantScope:
    """Merchants act on their own shop (another shop's id is NOT_FOUND); ops must name one.

    Raises MerchantNotFound (another shop's id), InvalidArgument (ops without ``merchant_id``) and
    PermissionDenied (platform roles).
    """
    if caller.role is Role.MERCHANT:
        assert caller.merchant_id is not None
        if requested_merchant_id and requested_merchant_id != caller.merchant_id:
            raise errors.MerchantNotFound()
        return MerchantScope(caller.merchant_id, caller)
    if caller.role is Role.OPS:
        if not requested_merchant_id:
            raise errors.InvalidArgument([errors.FieldViolation("merchant_id", "is required for ops callers")])
        return MerchantScope(requested_merchant_id, caller)
    raise errors.PermissionDenied()


async def _merchant_for_write(conn: asyncpg.Connection, target: MerchantScope) -> asyncpg.Record:
    """Locks the merchant row; only ops or the shop's main account may change its settings."""
    await _current_caller(conn, target)
    merchant = await conn.fetchrow(sql("lock_merchant"), target.merchant_id)
    if merchant is None:
        raise errors.MerchantNotFound()
    if target.caller.role is Role.MERCHANT and merchant["main_account_id"] != target.caller.subject:
        raise errors.NotMainAccount()
    return merchant


async def _current_caller(conn: asyncpg.Connection, target: MerchantScope) -> None:
    """R1/R9: a merchant caller disabled or gone from the directory is refused at once (services/callers.py)."""
    if target.caller.role is Role.MERCHANT:
        await callers.merchant_standing(conn, target.caller)


async def _merchant_for_read(conn: asyncpg.Connection, target: MerchantScope) -> asyncpg.Record:
    await _current_caller(conn, target)
    merchant = await conn.fetchrow(sql("get_merchant"), target.merchant_id)
    if merchant is None:
        raise errors.MerchantNotFound()
    return merchant


# Who a directory change is recorded as in the assignment history when no caller is given (the
# development seed and tests call these functions directly).
DIRECT = Identity("directory", Role.OPS)


async def _reassign(conn: asyncpg.Connection, merchant_id: str, actor: Identity) -> moves.Reassigned:
    """SPEC R13: the open sessions of agents this change made ineligible go to eligible ones, in its transaction."""
    return await moves.reassign_ineligible(conn=conn, merchant_id=merchant_id, actor=actor)


async def _after_commit(pool: asyncpg.Pool, merchant_id: str, done: moves.Reassigned, actor: Identity) -> None:
    """The sessions a writer held during the change, re-assigned now in the usual lock order; then the
    wake-up of the merchant's streams for every move (store/signals.py: events are announced after the
    commit, SPEC R8)."""
    if done.held:
        await moves.reassign_held(pool, merchant_id=merchant_id, session_ids=done.held, actor=actor)
    if done.moved or done.held:
        signals.touch(pool, merchant_id)


async def upsert_merchant(
    pool: asyncpg.Pool,
    *,
    merchant_id: str,
    display_name: str,
    main_account_id: str,
    disabled: bool,
    actor: Identity = DIRECT,
) -> asyncpg.Record:
    """Creates or updates a merchant; its main account becomes an agent with IM permission.

    Account sync from the platform (ops only; the servicer checks the role). When the main account
    moves and the old one stops being eligible, its open sessions are re-assigned (SPEC R13; ``actor``
    is recorded in their history). Raises nothing of its own.
    """
    async with pool.acquire() as conn, conn.transaction():
        merchant = await conn.fetchrow(
            sql("upsert_merchant"), merchant_id, display_name or merchant_id, main_account_id, disabled
        )
        await conn.execute(sql("ensure_reception_settings"), merchant_id)
        await conn.execute(sql("demote_other_main_accounts"), merchant_id, main_account_id)
        await conn.execute(sql("upsert_main_account"), merchant_id, main_account_id)
        assert merchant is not None
        done = await _reassign(conn, merchant_id, actor)
    await _after_commit(pool, merchant_id, done, actor)
    return merchant


async def upsert_agent(
    pool: asyncpg.Pool,
    target: MerchantScope,
    *,
    agent_id: str,
    display_name: str,
    im_permission: bool,
    disabled: bool,
    capacity: int,
) -> asyncpg.Record:
    """Creates or updates an agent of the shop. Removing IM permission makes it ineligible at once (R1).

    Raises the write errors, and MainAccountImRequired when the main account would lose IM permission.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _merchant_for_write(conn, target)
        await conn.execute(
            sql("upsert_agent"),
            target.merchant_id,
            agent_id,
            display_name or agent_id,
            im_permission,
            disabled,
            capacity or DEFAULT_CAPACITY,
        )
        done = await _reassign(conn, target.merchant_id, target.caller)
        agent = await conn.fetchrow(sql("get_agent"), target.merchant_id, agent_id)
        assert agent is not None
    await _after_commit(pool, target.merchant_id, done, target.caller)
    return agent


async def list_agents(
    pool: asyncpg.Pool, target: MerchantScope, *, after_agent_id: str | None, limit: int
) -> list[asyncpg.Record]:
    """The shop's agents ordered by id, after ``after_agent_id``; at most ``limit`` rows (AIP-158).

    Raises AgentDisabled/ImPermissionRequired for a merchant caller no longer admitted, MerchantNotFound.
    """
    async with pool.acquire() as conn:
        await _merchant_for_read(conn, target)
        rows: list[asyncpg.Record] = await conn.fetch(sql("list_agents"), target.merchant_id, after_agent_id, limit)
        return rows


async def set_reception_agents(pool: asyncpg.Pool, target: MerchantScope, agent_ids: list[str]) -> asyncpg.Record:
    """Replaces the designated reception agents (SPEC R1); each needs IM permission.

    Raises the write errors, AgentNotFound (every unknown id in metadata ``agent_ids``) and
    AgentNoImPermission (``FAILED_PRECONDITION``, every such id in metadata).
    """
    async with pool.acquire() as conn, conn.transaction():
        # The merchant row lock serialises concurrent designation changes of one shop.
        await _merchant_for_write(conn, target)
        found = {
            r["agent_id"]: r["im_permission"]
            for r in await conn.fetch(sql("agents_by_id"), target.merchant_id, agent_ids)
        }
        missing = [a for a in agent_ids if a not in found]
        if missing:
            raise errors.AgentNotFound(
                f"no such agent in this shop: {', '.join(missing)}", metadata={"agent_ids": ",".join(missing)}
            )
        without_im = [a for a in agent_ids if not found[a]]
        if without_im:
            raise errors.AgentNoImPermission(
                f"agents without IM permission cannot be reception agents: {', '.join(without_im)}; "
                "enable IM permission in the shop's account management first",
                metadata={"agent_ids": ",".join(without_im)},
            )
        await conn.execute(sql("set_reception_agents"), target.merchant_id, agent_ids)
        await conn.execute(sql("touch_reception_settings"), target.merchant_id)
        done = await _reassign(conn, target.merchant_id, target.caller)
        settings = await _settings(conn, target.merchant_id)
    await _after_commit(pool, target.merchant_id, done, target.caller)
    return settings


async def _settings(conn: asyncpg.Connection, merchant_id: str) -> asyncpg.Record:
    settings = await conn.fetchrow(sql("get_reception_settings"), merchant_id)
    if settings is None:
        raise errors.MerchantNotFound()
    return settings


async def get_reception_settings(pool: asyncpg.Pool, target: MerchantScope) -> asyncpg.Record:
    """The shop's reception settings: designated and eligible agents, reply timeout (SPEC R1, R5).

    Raises AgentDisabled/ImPermissionRequired for a merchant caller no longer admitted, MerchantNotFound.
    """
    async with pool.acquire() as conn:
        await _current_caller(conn, target)
        return await _settings(conn, target.merchant_id)


async def update_reply_timeout(pool: asyncpg.Pool, target: MerchantScope, seconds: int) -> asyncpg.Record:
    """Sets the shop's reply timeout in seconds (SPEC R5: 120–180, validated by the servicer).

    Applies to deadlines started afterwards. Raises the write errors.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _merchant_for_write(conn, target)
        await conn.execute(sql("update_reply_timeout"), target.merchant_id, seconds)
        return await _settings(conn, target.merchant_id)


async def update_idle_timeout(pool: asyncpg.Pool, target: MerchantScope, seconds: int) -> asyncpg.Record:
    """Sets the shop's idle timeout in seconds (SPEC R12: 300–7200, validated by the servicer).

    Like the reply timeout, applies to idle deadlines started afterwards (by the next merchant
    message); those already running keep their instant. Raises the write errors.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _merchant_for_write(conn, target)
        await conn.execute(sql("update_idle_timeout"), target.merchant_id, seconds)
        return await _settings(conn, target.merchant_id)


async def create_reply_template(pool: asyncpg.Pool, target: MerchantScope, *, title: str, body: str) -> asyncpg.Record:
    """Adds a quick-reply template (SPEC R11); returns its row with a new id. Raises the write errors."""
    async with pool.acquire() as conn, conn.transaction():
        await _merchant_for_write(conn, target)
        template = await conn.fetchrow(sql("create_reply_template"), str(uuid.uuid4()), target.merchant_id, title, body)
        assert template is not None
        return template


async def delete_reply_template(pool: asyncpg.Pool, target: MerchantScope, template_id: str) -> None:
    """Deletes a template (SPEC R11). Raises the write errors and TemplateNotFound."""
    async with pool.acquire() as conn, conn.transaction():
        await _merchant_for_write(conn, target)
        status = await conn.execute(sql("delete_reply_template"), target.merchant_id, template_id)
        if status == "DELETE 0":
            raise errors.TemplateNotFound()


async def list_reply_templates(
    pool: asyncpg.Pool, target: MerchantScope, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    """Templates oldest first after the (create_time, template_id) key ``after``; ≤ ``limit`` rows.

    Any agent of the shop may list them (SPEC R11). Raises AgentDisabled/ImPermissionRequired for a
    merchant caller no longer admitted, MerchantNotFound.
    """
    async with pool.acquire() as conn:
        await _merchant_for_read(conn, target)
        rows: list[asyncpg.Record] = await conn.fetch(
            sql("list_reply_templates"),
            target.merchant_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return rows
