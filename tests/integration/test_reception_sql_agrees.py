"""The SQL view agent_eligibility and escalation.domain.reception.eligible agree on generated shops."""

from __future__ import annotations

import random

import asyncpg
import pytest

from escalation.domain.reception import AgentFlags, eligible

pytestmark = pytest.mark.integration


def _random_shop(rng: random.Random, n: int) -> list[AgentFlags]:
    main = AgentFlags("main", True, rng.random() < 0.2, True, rng.random() < 0.2)
    subs = [
        AgentFlags(f"sub-{i}", False, rng.random() < 0.4, rng.random() < 0.7, rng.random() < 0.2)
        for i in range(rng.randint(0, 6))
    ]
    return [main, *subs]


async def test_sql_view_and_pure_rule_agree(pool: asyncpg.Pool) -> None:
    rng = random.Random(20261123)
    shops = {f"shop-{n}": _random_shop(rng, n) for n in range(150)}
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO merchants (merchant_id, display_name, main_account_id) VALUES ($1, $1, 'main')",
            [(m,) for m in shops],
        )
        await conn.executemany(
            "INSERT INTO agents (merchant_id, agent_id, display_name, main_account, reception_agent, im_permission,"
            " disabled) VALUES ($1, $2, $2, $3, $4, $5, $6)",
            [
                (m, a.agent_id, a.main_account, a.reception_agent, a.im_permission, a.disabled)
                for m, agents in shops.items()
                for a in agents
            ],
        )
    rows = await pool.fetch("SELECT merchant_id, agent_id FROM agent_eligibility WHERE eligible")
    from_sql: dict[str, set[str]] = {m: set() for m in shops}
    for row in rows:
        from_sql[row["merchant_id"]].add(row["agent_id"])
    assert from_sql == {m: eligible(agents) for m, agents in shops.items()}
