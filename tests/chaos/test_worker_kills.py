"""SPEC R5–R7 under repeated crashes: deadline workers and relays SIGKILLed again and again.

Two deadline workers and two relays (real `escalation worker` processes) run while sessions fall due
in waves; every ~0.7 s one of them is SIGKILLed (no shutdown code runs) and a fresh one takes its
place. Afterwards: every due session ended exactly once and not before its deadline, one ticket each,
and every ticket on the topic. ``make test`` kills a few; ``make chaos`` (ESCALATION_CHAOS_ROUNDS)
many more.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.workers_harness import (
    KafkaTarget,
    Process,
    all_ended_and_published,
    assert_event_id_is_ticket_id,
    event_ids,
    make_shop,
    open_sessions,
    policy,
    progress,
    read_topic,
    wait_for,
    wait_started,
    worker,
)

pytestmark = pytest.mark.e2e

ROUNDS = int(os.environ.get("ESCALATION_CHAOS_ROUNDS", "1"))
KILLS = 4 * ROUNDS
FAST = {
    "ESCALATION_REMIND_BEFORE_SECONDS": "1",
    "ESCALATION_DEADLINE_POLL_SECONDS": "0.5",
    "ESCALATION_OUTBOX_POLL_SECONDS": "0.5",
}


@pytest.mark.timeout(120 + 3 * KILLS)
async def test_workers_and_relays_killed_repeatedly_end_each_session_once_and_publish_every_ticket(
    database_url: str, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path
) -> None:
    timeout, wave = 1.5, 10
    kafka = KafkaTarget(kafka_bootstrap)
    env = {**FAST, "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS": str(timeout)}
    await make_shop(pool)
    ids: list[uuid.UUID] = []
    due: dict[uuid.UUID, object] = {}
    generation = itertools.count()

    def spawn(stack: ExitStack, kind: str) -> Process:
        name = f"{kind}-{next(generation)}"
        return stack.enter_context(
            worker(kind, database_url, tmp_path, name, kafka=kafka if kind == "outbox" else None, env=env)
        )

    with ExitStack() as stack:
        slots = [spawn(stack, kind) for kind in ("deadlines", "deadlines", "outbox", "outbox")]
        await asyncio.gather(*(wait_started(p) for p in slots))
        for kill in range(KILLS):
            opened = await open_sessions(pool, wave, policy(timeout))
            ids += opened
            due.update(opened)
            await asyncio.sleep(0.7)
            victim = kill % len(slots)
            slots[victim].kill()
            kind = "deadlines" if victim < 2 else "outbox"
            slots[victim] = spawn(stack, kind)
            await wait_started(slots[victim])

        async def explain() -> str:
            return await progress(pool) + "\n" + "\n".join(p.output() for p in slots)

        await wait_for(
            lambda: all_ended_and_published(pool, len(ids)), 60, "every session ended and published", explain
        )

    rows = await pool.fetch(
        "SELECT s.session_id, s.close_reason, s.close_time, count(t.ticket_id) AS tickets"
        " FROM sessions s LEFT JOIN tickets t USING (session_id) GROUP BY s.session_id"
    )
    assert {r["session_id"] for r in rows} == set(ids)
    for r in rows:
        assert (r["close_reason"], r["tickets"]) == ("MERCHANT_TIMEOUT", 1), r
        assert r["close_time"] >= due[r["session_id"]], f"{r['session_id']} ended before its deadline"
    records = await read_topic(kafka.bootstrap, kafka.tickets_topic)
    assert_event_id_is_ticket_id(records)
    tickets = {str(r["ticket_id"]) for r in await pool.fetch("SELECT ticket_id FROM tickets")}
    assert event_ids(records) == tickets, "every ticket on the topic, and nothing else"
    print(f"\n{KILLS} kills, {len(ids)} sessions, {len(records)} records ({len(records) - len(ids)} redelivered)")
