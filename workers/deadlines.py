"""The deadline worker (SPEC R5–R7, R12): ends sessions whose reply deadline passed (a ticket each),
closes answered sessions whose idle deadline passed (IDLE, no ticket) and sends reminders.

Deadlines live in PostgreSQL and are judged by its clock, so a restart of every process loses none
and no replica's clock can fire one early. Each round claims a batch with one ``FOR UPDATE SKIP
LOCKED`` statement and, in that transaction, ends the sessions, writes their tickets and outbox rows.
Any number of replicas may run: a row one of them holds is skipped by the others, and a reply that
holds a session's lock first wins (the worker looks again next round and finds nothing due).

Idle deadlines (R12) take the same path: their own claim (``claim_idle_sessions``, its own partial
index), the same ending (services/ending.py), the same metrics.

Between rounds it sleeps until the nearest deadline, idle deadline or reminder, woken early by NOTIFY on
``escalation_deadline`` when a nearer one may have been written, and never longer than ``poll_interval``.
The writers send that NOTIFY after their commit (store/signals.py, issue 13 §1); a lost one costs at
most ``poll_interval`` of lateness, and only for a deadline or reminder written less than that ahead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import structlog
from opentelemetry import trace

from escalation.domain.limits import DEFAULT_BATCH_SIZE
from escalation.domain.session import CloseReason
from escalation.observability import metrics, tracing
from escalation.services import ending, records
from escalation.services.sessions import SessionPolicy
from escalation.store import events, signals
from escalation.store.queries import sql
from escalation.v1 import merchant_pb2
from workers.loop import Wakeup, run_forever

log = structlog.get_logger(__name__)

CHANNEL = signals.DEADLINE_CHANNEL
# The span of a round's closes: its traceparent goes with each ticket's outbox row (docs/tracing.md).
CLOSE_SPAN = "deadlines.end_sessions"


@dataclass(frozen=True)
class DeadlineConfig:
    batch_size: int = DEFAULT_BATCH_SIZE  # sessions (and, separately, reminders) per transaction
    poll_interval: float = 2.0  # seconds; the longest sleep when nothing nearer is known
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    event_retention_seconds: float = 72 * 3600  # merchant events older than this are deleted
    housekeeping_every: float = 60.0  # seconds between deletions of expired events and stale presence


@dataclass(frozen=True)
class _Claim:
    """One way the worker ends sessions: the claim query, the reason it writes, and the column (returned
    by the claim) holding the instant each session was due, which the lateness histogram measures from."""

    query: str
    reason: CloseReason
    due_column: str


TIMEOUT = _Claim("claim_due_sessions", CloseReason.MERCHANT_TIMEOUT, "reply_deadline")  # SPEC R5, R6
IDLE = _Claim("claim_idle_sessions", CloseReason.IDLE, "idle_deadline")  # SPEC R12


@dataclass
class RoundResult:
    ended: int = 0  # MERCHANT_TIMEOUT: a ticket each
    reminded: int = 0
    idled: int = 0  # IDLE: no ticket


class DeadlineWorker:
    def __init__(self, pool: asyncpg.Pool, config: DeadlineConfig | None = None) -> None:
        self._pool = pool
        self.config = config or DeadlineConfig()
        self._last_housekeeping = 0.0

    async def run_once(self, now: datetime | None = None) -> RoundResult:
        """One round: every due reminder and every due session, batch by batch, until none is due.

        ``now`` is the instant that decides what is due and becomes the close time; None (production)
        is the database clock at each claim. Tests pass one instead of sleeping until it.

        A batch smaller than ``batch_size`` was everything due when it was claimed, so the round
        stops there rather than claim again to find nothing (what comes due later is the next round's).
        """
        result = RoundResult()
        while True:
            n = await self._remind_batch(now)
            result.reminded += n
            if n < self.config.batch_size:
                break
        while True:
            n = await self._end_batch(now, TIMEOUT)
            result.ended += n
            if n < self.config.batch_size:
                break
        while True:
            n = await self._end_batch(now, IDLE)
            result.idled += n
            if n < self.config.batch_size:
                break
        return result

    async def _end_batch(self, now: datetime | None, claim: _Claim) -> int:
        """Ends one batch of sessions ``claim`` finds due; traced from the claim to the commit when it ended any.

        A round that finds nothing due leaves no span: it would be one every poll interval.
        """
        started = time.time_ns()
        span: trace.Span | None = None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                claimed = await conn.fetch(sql(claim.query), self.config.batch_size, now)
                if not claimed:
                    return 0
                span = tracing.tracer().start_span(
                    CLOSE_SPAN,
                    start_time=started,
                    attributes={
                        "escalation.sessions_ended": len(claimed),
                        "escalation.close_reason": claim.reason.value,
                    },
                )
                with trace.use_span(span):
                    # In the claim's transaction: tickets with their outbox rows (for MERCHANT_TIMEOUT),
                    # events, released capacity.
                    await ending.end_sessions(
                        conn=conn, sessions=claimed, reason=claim.reason, policy=self.config.policy
                    )
        finally:
            if span is not None:
                span.end()
        signals.touch(self._pool, *{r["merchant_id"] for r in claimed}, outbox=claim.reason.makes_ticket)
        for row in claimed:
            metrics.DEADLINE_LATENESS.observe((row["close_time"] - row[claim.due_column]).total_seconds())
        metrics.SESSIONS_CLOSED.labels(reason=claim.reason.value).inc(len(claimed))
        log.info("deadlines.ended", sessions=len(claimed), reason=claim.reason.value)
        return len(claimed)

    async def _remind_batch(self, now: datetime | None) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(sql("claim_due_reminders"), self.config.batch_size, now)
            if not due:
                return 0
            await events.append(
                conn=conn,
                events=[
                    events.Event(
                        merchant_id=r["merchant_id"],
                        session_id=r["session_id"],
                        agent_id=r["assigned_agent_id"],
                        kind="reply_reminder",
                        body=merchant_pb2.MerchantEvent(
                            reply_reminder=merchant_pb2.ReplyReminder(
                                session_id=str(r["session_id"]),
                                reply_deadline=records.timestamp(r["reply_deadline"]),
                            )
                        ),
                    )
                    for r in due
                ],
            )
        signals.touch(self._pool, *{r["merchant_id"] for r in due})
        log.info("deadlines.reminded", sessions=len(due))
        return len(due)

    async def seconds_until_next(self, now: datetime | None = None) -> float:
        """Seconds from ``now`` (None: the database clock) until the nearest deadline, idle deadline or
        reminder, at most the poll interval (which is also the answer when none is pending)."""
        seconds = await self._pool.fetchval(sql("next_wakeup"), now)
        if seconds is None:
            return self.config.poll_interval
        return max(0.0, min(float(seconds), self.config.poll_interval))

    async def run(self, stop: asyncio.Event, listen_dsn: str) -> None:
        """Rounds until ``stop`` is set; errors are logged and retried, never fatal."""
        await run_forever(
            name="deadlines", stop=stop, wakeup=Wakeup(listen_dsn, CHANNEL, self._nearer), round_=self._round
        )

    async def housekeeping(self) -> None:
        """Deletes events past retention (resuming from before them is CURSOR_EXPIRED) and stale presence."""
        await self._pool.execute(sql("purge_events"), self.config.event_retention_seconds)
        await self._pool.execute(sql("presence_purge_stale"))

    async def _round(self) -> float:
        await self.run_once()
        if time.monotonic() - self._last_housekeeping >= self.config.housekeeping_every:
            self._last_housekeeping = time.monotonic()
            await self.housekeeping()
        return await self.seconds_until_next()

    def _nearer(self, payload: str) -> float | None:
        """A NOTIFY payload is the epoch second something becomes due; wake then, if sooner."""
        try:
            return max(0.0, float(payload) - time.time())
        except ValueError:
            return 0.0
