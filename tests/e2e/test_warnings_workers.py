"""`escalation worker warnings` as real processes (SPEC R10, §4): two replicas on one database store one
warning and one outbox row per merchant and period, and stop cleanly."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import run
from tests.e2e.workers_harness import ESCALATION, clean_env, wait_for, wait_started, worker
from tests.integration.stats_harness import answered_sessions, make_shop

pytestmark = pytest.mark.e2e

FAST = {"ESCALATION_WARNING_INTERVAL_SECONDS": "0.2"}


async def test_two_warnings_workers_store_one_warning_and_one_outbox_row_per_merchant(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    now = await pool.fetchval("SELECT clock_timestamp()")
    slow = [f"slow-{n}" for n in range(4)]
    for merchant_id in slow:  # 60 % answered within 3 minutes
        await make_shop(pool, merchant_id)
        await answered_sessions(pool, merchant_id, now - timedelta(hours=2), [10, 10, 10, 200, 200])
    await make_shop(pool, "good")
    await answered_sessions(pool, "good", now - timedelta(hours=2), [10, 10, 10, 10, 10])

    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker("warnings", database_url, tmp_path, f"warnings-{n}", env=FAST)) for n in (1, 2)
        ]
        await asyncio.gather(*(wait_started(p) for p in workers))

        async def all_warned() -> bool:
            return bool(await pool.fetchval("SELECT count(DISTINCT merchant_id) FROM merchant_warnings") == len(slow))

        async def explain() -> str:
            return "\n".join(p.output() for p in workers)

        await wait_for(all_warned, 30, "every slow merchant warned", explain)
        await asyncio.sleep(2.0)  # ten more checks by each worker

        rows = await pool.fetch(
            "SELECT w.merchant_id, w.period_start, w.warning_id, count(o.id) AS events"
            " FROM merchant_warnings w LEFT JOIN outbox o ON o.event_id = w.warning_id::text"
            " GROUP BY w.merchant_id, w.period_start, w.warning_id"
        )
        periods = {r["period_start"] for r in rows}  # two only if the test straddled 00:00 UTC
        assert Counter(r["merchant_id"] for r in rows) == dict.fromkeys(slow, len(periods))
        assert all(r["events"] == 1 for r in rows), "exactly one outbox row per warning"
        assert await pool.fetchval("SELECT count(*) FROM outbox") == len(rows)

        created = [e for p in workers for e in p.events_named("warnings.created")]
        assert sorted(str(e["warning_id"]) for e in created) == sorted(str(r["warning_id"]) for r in rows)
        for process in workers:
            assert process.terminate() == 0, process.output()
            assert not process.events_named("worker.round_failed"), process.output()
            assert process.foreign_lines() == [], process.output()
            assert process.events_named("worker.stopped"), process.output()


def test_a_bad_threshold_stops_the_worker_with_one_line() -> None:
    env = clean_env(ESCALATION_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", ESCALATION_WARNING_MIN_SESSIONS="0")
    done = run([*ESCALATION, "worker", "warnings"], env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "escalation: configuration error: ESCALATION_WARNING_MIN_SESSIONS='0' is invalid: 1..1000000"
        " (0 is outside 1..1000000)"
    ]
