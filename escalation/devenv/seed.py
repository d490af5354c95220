"""The demo merchant `make run` starts with: a main account, three designated sub-accounts and the
quick replies the workbench offers them (`make demo`, docs/clients.md)."""

from __future__ import annotations

import asyncpg

from escalation.auth import Identity, Role
from escalation.services import directory

DEMO_MERCHANT = "demo-shop"
DEMO_MAIN_ACCOUNT = "demo-main"
DEMO_AGENTS = ("demo-agent-1", "demo-agent-2", "demo-agent-3")
# (title, text) of the demo shop's quick replies (SPEC R11).
DEMO_TEMPLATES = (
    ("Ships today", "Yes, it ships today. The tracking number follows within the hour."),
    ("Refund approved", "The refund is approved; the buyer gets it back in 1-3 working days."),
    ("Checking", "Let me check with the warehouse; I will answer within two minutes."),
    ("Exchange OK", "Yes, we exchange it: please ask the buyer to send it back with the order number."),
)


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
    # Only into a shop without any: a re-run must not duplicate them, nor undo the main account's edits.
    if not await directory.list_reply_templates(pool, target, after=None, limit=1):
        for title, text in DEMO_TEMPLATES:
            await directory.create_reply_template(pool, target, title=title, body=text)
