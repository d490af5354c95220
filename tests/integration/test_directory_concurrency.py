"""R1 under concurrency: the shop's settings never end up as a mix of two concurrent changes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from escalation import errors
from escalation.auth import Identity, Role
from escalation.services import directory

pytestmark = pytest.mark.integration

OPS = Identity("ops-1", Role.OPS)


async def _shop(pool: asyncpg.Pool, agents: int) -> directory.MerchantScope:
    await directory.upsert_merchant(pool, merchant_id="shop", display_name="", main_account_id="main", disabled=False)
    target = directory.MerchantScope("shop", OPS)
    for n in range(agents):
        await directory.upsert_agent(
            pool, target, agent_id=f"a{n}", display_name="", im_permission=True, disabled=False, capacity=10
        )
    return target


async def test_concurrent_designations_never_mix(pool: asyncpg.Pool) -> None:
    target = await _shop(pool, 10)
    choices = [[f"a{i}" for i in range(k, 10, 3)] for k in range(3)] * 8
    await asyncio.gather(*(directory.set_reception_agents(pool, target, ids) for ids in choices))
    final = await directory.get_reception_settings(pool, target)
    assert sorted(final["reception_agent_ids"]) in [sorted(c) for c in choices]


async def test_concurrent_main_account_changes_leave_exactly_one_main_account(pool: asyncpg.Pool) -> None:
    await asyncio.gather(
        *(
            directory.upsert_merchant(
                pool, merchant_id="shop", display_name="", main_account_id=f"m{n}", disabled=False
            )
            for n in range(20)
        )
    )
    mains = await pool.fetch("SELECT agent_id FROM agents WHERE merchant_id = 'shop' AND main_account")
    declared = await pool.fetchval("SELECT main_account_id FROM merchants WHERE merchant_id = 'shop'")
    assert [r["agent_id"] for r in mains] == [declared]


async def test_im_permission_removed_during_designation_leaves_agent_ineligible(pool: asyncpg.Pool) -> None:
    target = await _shop(pool, 4)
    for _ in range(10):
        designation: object
        designation, _ = await asyncio.gather(
            directory.set_reception_agents(pool, target, ["a0", "a1"]),
            directory.upsert_agent(
                pool, target, agent_id="a1", display_name="", im_permission=False, disabled=False, capacity=10
            ),
            return_exceptions=True,
        )
        # Either order is fine: rejected because IM was already gone, or accepted and then made ineligible.
        assert not isinstance(designation, BaseException) or isinstance(designation, errors.AgentNoImPermission)
        settings = await directory.get_reception_settings(pool, target)
        assert "a1" not in settings["eligible_agent_ids"]
        await directory.upsert_agent(
            pool, target, agent_id="a1", display_name="", im_permission=True, disabled=False, capacity=10
        )
