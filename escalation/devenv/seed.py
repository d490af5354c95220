"""The demo merchant `make run` starts with: a main account and three designated sub-accounts."""

from __future__ import annotations

import asyncpg

from escalation.auth import Identity, Role
from escalation.services import directory

DEMO_MERCHANT = "demo-shop"
DEMO_MAIN_ACCOUNT = "demo-main"
DEMO_AGENTS = ("demo-agent-1", "demo-agent-2", "demo-agent-3")


async def seed_demo(pool: asyncpg.Pool) -> None:
    """Idempotent: re-running leaves the same directory (and keeps any sessions)."""
    await directory.upsert_merchant(
        pool,
        merchant_id=DEMO_MERCHANT,
        display_name="Demo Shop",
        main_account_id=DEMO_MAIN_ACCOUNT,
        disabled=False,
    )
    target = directory.MerchantScope(DEMO_MERCHANT, Identity("seed", Role.OPS))
    for n, agent_id in enumerate(DEMO_AGENTS, start=1):
        await directory.upsert_agent(
            pool,
            target,
            agent_id=agent_id,
            display_name=f"Demo agent {n}",
            im_permission=True,
            disabled=False,
            capacity=10,
        )
    await directory.set_reception_agents(pool, target, list(DEMO_AGENTS))
