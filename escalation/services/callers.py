"""Where a merchant caller stands in its shop's directory, read on every call (SPEC R1, R9).

Nothing about a merchant agent is taken from its token beyond who it is: whether it is still an agent
of the shop, disabled, allowed IM, or the main account is read now, so that a change ops or the main
account makes applies to the very next call (docs/sessions.md, "Every unary call re-reads the caller").
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from escalation import errors
from escalation.auth import Identity, Role
from escalation.store.queries import sql


@dataclass(frozen=True)
class Standing:
    """A merchant agent's current standing: may it use IM, is it the shop's main account."""

    im_permission: bool
    main_account: bool


async def merchant_standing(conn: asyncpg.Connection, caller: Identity) -> Standing:
    """The standing of a ``merchant`` caller in its own shop (one indexed row).

    Raises AgentDisabled (PERMISSION_DENIED ``AGENT_DISABLED``) for a disabled agent and
    ImPermissionRequired (``IM_PERMISSION_REQUIRED``, as Connect answers) for an agent the shop does
    not know — never an agent of it, or its merchant_id claim names another shop.
    """
    assert caller.role is Role.MERCHANT
    row = await conn.fetchrow(sql("merchant_caller"), caller.merchant_id, caller.subject)
    if row is None:
        raise errors.ImPermissionRequired("this agent is not in the shop's account directory")
    if row["disabled"]:
        raise errors.AgentDisabled()
    return Standing(im_permission=bool(row["im_permission"]), main_account=bool(row["main_account"]))
