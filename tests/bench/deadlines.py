"""100,000 pending reply deadlines plus a burst of 10,000 due in one second (SPEC §5, third line).

The sessions are inserted with SQL (one transaction; each with one opening message, so tickets carry
a transcript), their deadlines spread evenly over a window by the database clock. Their reminders are
already past (a session in its last 60 s has been reminded), so ``remind_time`` is NULL. The original
deadline of each session is kept in a side table ``bench_due`` because ending a session clears
``reply_deadline``. ``escalation worker deadlines`` processes (default settings) then end them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from escalation.v1 import common_pb2
from tests.bench.api import OPENING_TEXT, PLATFORM_AGENT, make_merchants
from tests.bench.env import BenchEnv, BenchError, Child, say
from tests.bench.load import percentile
from tests.bench.sizes import Sizes

_CREATE_DUE = """
CREATE TABLE bench_due (
    n        integer PRIMARY KEY,
    session_id uuid NOT NULL DEFAULT gen_random_uuid(),
    due      timestamptz NOT NULL,
    burst    boolean NOT NULL
)
"""

# $1 window start, $2 window seconds, $3 sessions in the window, $4 burst second start, $5 burst sessions
_FILL_DUE = """
INSERT INTO bench_due (n, due, burst)
SELECT i, $1::timestamptz + make_interval(secs => (i - 1) * $2::float8 / $3), false
FROM generate_series(1, $3::int) AS i
UNION ALL
SELECT $3 + j, $4::timestamptz + make_interval(secs => (j - 1)::float8 / $5), true
FROM generate_series(1, $5::int) AS j
"""

# $1 merchants, $2 agents per merchant, $3 platform agent; ids as tests/bench/api.py names them.
_INSERT_SESSIONS = """
INSERT INTO sessions (session_id, merchant_id, assigned_agent_id, platform_agent_id, order_id, category,
                      open_time, reply_deadline, remind_time, last_seq, request_id, request_hash, assignment)
SELECT d.session_id, m.id, m.id || '-sub-' || (1 + (d.n / $1) % $2), $3, 'order-' || d.n, 'ORDER_OPERATION',
       d.due - interval '180 seconds', d.due, NULL, 1, 'bench-deadline-' || d.n, '\\x00'::bytea, ''::bytea
FROM bench_due d, LATERAL (SELECT 'bench-m' || lpad((d.n % $1)::text, 3, '0') AS id) m
"""

_INSERT_MESSAGES = """
INSERT INTO messages (session_id, seq, sender, sender_id, kind, content, send_time)
SELECT d.session_id, 1, 'PLATFORM', $1, 'TEXT', $2, d.due - interval '180 seconds' FROM bench_due d
"""

_COUNT_OPEN_SESSIONS = """
UPDATE agents a SET open_sessions = c.n
FROM (SELECT merchant_id, assigned_agent_id, count(*) AS n FROM sessions WHERE state = 'OPEN' GROUP BY 1, 2) c
WHERE a.merchant_id = c.merchant_id AND a.agent_id = c.assigned_agent_id
"""

# Cheap progress probes on the partial index sessions_due.
_PENDING = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE reply_deadline >= $1 AND reply_deadline < $1 + interval '1 second') AS burst
FROM sessions WHERE reply_deadline IS NOT NULL
"""

_OUTCOME = """
SELECT d.burst, extract(epoch FROM s.close_time - d.due)::float8 AS lateness,
       extract(epoch FROM d.due - $1::timestamptz)::float8 AS due_after_burst_start,
       extract(epoch FROM s.close_time - $1::timestamptz)::float8 AS after_burst_start,
       s.state, s.close_reason, t.ticket_id IS NOT NULL AS has_ticket
FROM bench_due d JOIN sessions s USING (session_id) LEFT JOIN tickets t USING (session_id)
"""


@dataclass
class DeadlineResult:
    workers: int
    sessions: int
    burst_sessions: int
    insert_seconds: float
    lateness: list[float]  # seconds, the uniformly spread sessions
    burst_lateness: list[float]
    early: int
    burst_cleared_after: float  # seconds from the start of the burst second to its last close
    # The spread sessions not due while the burst was being cleared (their own steady-state lateness).
    unaffected_lateness: list[float]
    problems: list[str]

    @property
    def all_lateness(self) -> list[float]:
        return self.lateness + self.burst_lateness


async def run_deadlines(env: BenchEnv, sizes: Sizes) -> DeadlineResult:
    url = await env.create_database("bench_deadlines")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    try:
        await make_merchants(pool, sizes)
        workers = [
            await env.worker(f"deadlines-worker-{i}", "deadlines", {"ESCALATION_DATABASE_URL": url})
            for i in range(sizes.deadline_workers)
        ]
        say(f"  {len(workers)} `escalation worker deadlines` processes running; inserting sessions")
        window_start, burst_start, insert_seconds = await _insert(pool, sizes)
        total = sizes.deadline_sessions + sizes.burst_sessions
        say(
            f"  inserted {total:,} sessions in {insert_seconds:.1f} s; deadlines from "
            f"{window_start:%H:%M:%S} over {sizes.deadline_window:.0f} s, burst second {burst_start:%H:%M:%S}"
        )
        await _wait_all_ended(pool, burst_start, workers_alive=lambda: _check_all(workers))
        return await _outcome(pool, burst_start, len(workers), insert_seconds)
    finally:
        await pool.close()
        for worker in [c for c in env.children if c.name.startswith("deadlines-worker-")]:
            env.stop_child(worker)


def _check_all(children: list[Child]) -> None:
    for child in children:
        child.check_alive()


async def _insert(pool: asyncpg.Pool, sizes: Sizes) -> tuple[datetime, datetime, float]:
    content = common_pb2.MessageContent(text=common_pb2.Text(body=OPENING_TEXT)).SerializeToString()
    started = time.monotonic()
    async with pool.acquire() as conn:
        async with conn.transaction():
            window_start: datetime = await conn.fetchval(
                "SELECT date_trunc('second', clock_timestamp()) + make_interval(secs => $1::float8)",
                sizes.deadline_lead,
            )
            burst_start: datetime = await conn.fetchval(
                "SELECT $1::timestamptz + make_interval(secs => $2::float8)", window_start, sizes.burst_offset
            )
            await conn.execute(_CREATE_DUE)
            await conn.execute(
                _FILL_DUE,
                window_start,
                sizes.deadline_window,
                sizes.deadline_sessions,
                burst_start,
                sizes.burst_sessions,
            )
            await conn.execute(_INSERT_SESSIONS, sizes.merchants, sizes.agents_per_merchant, PLATFORM_AGENT)
            await conn.execute(_INSERT_MESSAGES, PLATFORM_AGENT, content)
            await conn.execute(_COUNT_OPEN_SESSIONS)
        committed: datetime = await conn.fetchval("SELECT clock_timestamp()")
        # Steady state has statistics for these tables; a bulk load into empty ones does not yet.
        await conn.execute("ANALYZE sessions, messages, agents, merchants")
        first_due: datetime = await conn.fetchval("SELECT min(due) FROM bench_due")
        ready: datetime = await conn.fetchval("SELECT clock_timestamp()")
    if ready >= first_due or committed >= first_due:
        raise BenchError(
            f"the insert ended at {ready:%H:%M:%S.%f}, after the first deadline {first_due:%H:%M:%S.%f}: "
            "raise Sizes.deadline_lead"
        )
    return window_start, burst_start, time.monotonic() - started


async def _wait_all_ended(pool: asyncpg.Pool, burst_start: datetime, workers_alive: Callable[[], None]) -> None:
    seconds_left = await pool.fetchval("SELECT extract(epoch FROM max(due) - clock_timestamp())::float8 FROM bench_due")
    give_up = time.monotonic() + float(seconds_left) + 120.0
    while True:
        workers_alive()
        row = await pool.fetchrow(_PENDING, burst_start)
        assert row is not None
        pending, burst = int(row["pending"]), int(row["burst"])
        say(f"  deadlines: {pending:,} pending ({burst:,} of the burst)")
        if pending == 0:
            return
        if time.monotonic() > give_up:
            raise BenchError(f"{pending:,} sessions still pending 120 s after the last deadline")
        await asyncio.sleep(2.0)


async def _outcome(pool: asyncpg.Pool, burst_start: datetime, workers: int, insert_seconds: float) -> DeadlineResult:
    rows = await pool.fetch(_OUTCOME, burst_start)
    problems: list[str] = []
    wrong = [r for r in rows if r["state"] != "ENDED" or r["close_reason"] != "MERCHANT_TIMEOUT" or not r["has_ticket"]]
    if wrong:
        problems.append(f"{len(wrong)} sessions did not end as MERCHANT_TIMEOUT with a ticket")
    if await pool.fetchval("SELECT count(*) FROM agents WHERE open_sessions <> 0"):
        problems.append("some agents still count open sessions after every session ended")
    lateness = [r["lateness"] for r in rows if not r["burst"]]
    burst_lateness = [r["lateness"] for r in rows if r["burst"]]
    cleared = max((r["after_burst_start"] for r in rows if r["burst"]), default=math.nan)
    unaffected = [r["lateness"] for r in rows if not r["burst"] and not 0 <= r["due_after_burst_start"] <= cleared]
    return DeadlineResult(
        workers=workers,
        sessions=len(lateness),
        burst_sessions=len(burst_lateness),
        insert_seconds=insert_seconds,
        lateness=lateness,
        burst_lateness=burst_lateness,
        early=sum(1 for r in rows if r["lateness"] < 0),
        burst_cleared_after=cleared,
        unaffected_lateness=unaffected,
        problems=problems,
    )


def describe(result: DeadlineResult) -> str:
    def stats(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 50) * 1000:.0f} ms, p99 {percentile(values, 99) * 1000:.0f} ms, "
            f"max {max(values, default=math.nan) * 1000:.0f} ms"
        )

    return (
        f"lateness of the {result.sessions:,} spread: {stats(result.lateness)}; of the "
        f"{result.burst_sessions:,} burst: {stats(result.burst_lateness)}; early: {result.early}; burst cleared "
        f"{result.burst_cleared_after:.2f} s after its second began"
    )
