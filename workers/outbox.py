"""The outbox relay (SPEC R7): publishes outbox rows to Kafka, at least once, in per-key order.

Each round claims a batch with ``FOR UPDATE SKIP LOCKED`` (never "id > last seen", which skips rows
that commit out of order), sends it pipelined, waits for the broker's acks (acks=all), and only then
marks the rows published and commits. A crash between the ack and the commit republishes those rows:
consumers dedupe by the ``event_id`` header. While Kafka is down rounds fail, back off and retry; the
rows wait in PostgreSQL, so no ticket is lost whatever Kafka does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from escalation.bus import kafka
from escalation.domain.limits import DEFAULT_BATCH_SIZE
from escalation.observability import metrics, tracing
from escalation.store import signals
from escalation.store.queries import sql
from workers.loop import Wakeup, run_forever

log = structlog.get_logger(__name__)

CHANNEL = signals.OUTBOX_CHANNEL


@dataclass(frozen=True)
class OutboxConfig:
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per claim
    poll_interval: float = 1.0  # seconds; the longest sleep when no NOTIFY arrives
    ack_timeout: float = 30.0  # seconds to wait for one batch's acks before giving the rows back
    # Failures of one row, in rounds where the broker acknowledged other rows, before it is parked.
    max_attempts: int = 5
    retention_seconds: float = 7 * 24 * 3600  # published rows are deleted after this
    purge_every: float = 60.0  # seconds between purges


class _Unsent(Exception):
    """Rows that were acknowledged but must be sent again after an earlier row of their key."""


@dataclass
class _Verdict:
    published: list[asyncpg.Record] = field(default_factory=list)
    parked: list[tuple[asyncpg.Record, BaseException]] = field(default_factory=list)
    failed: list[tuple[asyncpg.Record, BaseException]] = field(default_factory=list)
    held_back: list[asyncpg.Record] = field(default_factory=list)
    broker_healthy: bool = False


def _judge(rows: list[asyncpg.Record], outcomes: dict[int, BaseException | None], max_attempts: int) -> _Verdict:
    """Sorts a sent batch (in id order) into published, parked, failed (stays pending) and held back.

    - A record error (too large, corrupt, bad topic) parks the row at once: it would fail forever.
    - Any other error counts against the row only when the broker acknowledged another row in the same
      round (an outage fails every row and never parks one); after ``max_attempts`` such failures the
      row is parked.
    - A parked row does not hold its key back: later rows of the key flow (docs/delivery.md). A row
      that failed and stays pending does: later rows of its key are not marked published, even if
      acknowledged, so their last copy on the topic follows it (consumers dedupe by ``event_id``).
    """
    verdict = _Verdict(broker_healthy=any(r["id"] in outcomes and outcomes[r["id"]] is None for r in rows))
    waiting: set[bytes] = set()
    for row in rows:
        key = row["message_key"]
        if row["id"] not in outcomes:  # never handed to the producer: the round ran out of time
            waiting.add(key)
            verdict.held_back.append(row)
            continue
        error = outcomes[row["id"]]
        if error is None:
            if key in waiting:
                verdict.held_back.append(row)
            else:
                verdict.published.append(row)
        elif kafka.is_record_error(error) or (
            _counts_against_row(error, verdict.broker_healthy) and row["isolated_failures"] + 1 >= max_attempts
        ):
            verdict.parked.append((row, error))
        else:
            waiting.add(key)
            verdict.failed.append((row, error))
    return verdict


def _counts_against_row(error: BaseException, broker_healthy: bool) -> bool:
    """Whether a failure may count towards parking: only when the broker took other rows, and never for
    an error Kafka calls retriable (a partition without leader or in-sync replicas while the others
    accept writes) nor a timeout (ours or the producer's): those pass, and parking would reorder the key.
    """
    if not broker_healthy or isinstance(error, TimeoutError | KafkaTimeoutError):
        return False
    return not bool(getattr(error, "retriable", False))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def _retrieve(ack: asyncio.Future[object]) -> None:
    """Reads a dropped ack's outcome, so asyncio does not log "exception was never retrieved"."""
    if not ack.cancelled():
        ack.exception()


class OutboxRelay:
    def __init__(
        self, pool: asyncpg.Pool, kafka_settings: kafka.KafkaSettings, config: OutboxConfig | None = None
    ) -> None:
        self._pool = pool
        self._kafka = kafka_settings
        self.config = config or OutboxConfig()
        self._producer: AIOKafkaProducer | None = None
        self._topics_ready = False
        self._last_purge = 0.0

    async def _ready_producer(self) -> AIOKafkaProducer:
        if not self._topics_ready:
            await kafka.ensure_topics(self._kafka, [kafka.TICKETS_TOPIC, kafka.WARNINGS_TOPIC])
            self._topics_ready = True
        if self._producer is None:
            producer = kafka.producer(self._kafka)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def run_once(self) -> int:
        """Publishes every row that is pending now, batch by batch; returns how many were published.

        Raises the first retriable send error (after committing what the round settled), so the loop
        backs off; rows parked in the round do not make it fail (SPEC R7).
        """
        total = 0
        # Also before: while Kafka is down a round can wait ack_timeout, and the gauges should show the backlog.
        await self._update_backlog_metrics()
        try:
            while True:
                published, settled = await self._publish_batch()
                total += published
                if settled == 0:
                    break
        finally:
            await self._update_backlog_metrics()
        return total

    async def _publish_batch(self) -> tuple[int, int]:
        """One claimed batch: (rows published, rows settled = published or parked)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await self._claim(conn)
            if not rows:
                return 0, 0
            try:
                outcomes = await self._send(rows)
            except Exception as exc:
                # No producer (broker unreachable, topics not creatable): nobody's fault but the broker's.
                outcomes = {r["id"]: exc for r in rows}
            verdict = _judge(rows, outcomes, self.config.max_attempts)
            await conn.execute(sql("mark_published"), [r["id"] for r in verdict.published])
            for row, error in verdict.parked:
                counts = _counts_against_row(error, verdict.broker_healthy)
                await conn.execute(sql("park"), row["id"], _describe(error), counts)
            # An outage fails the whole batch the same way: one statement.
            by_error: dict[tuple[str, bool], list[int]] = {}
            for row, error in verdict.failed:
                key = (_describe(error), _counts_against_row(error, verdict.broker_healthy))
                by_error.setdefault(key, []).append(row["id"])
            for (text, counts), ids in by_error.items():
                await conn.execute(sql("record_failure"), ids, text, counts)
        for row in verdict.published:
            metrics.OUTBOX_PUBLISHED.labels(topic=row["topic"]).inc()
            if row["topic"] == kafka.TICKETS_TOPIC:
                metrics.TICKETS_PUBLISHED.inc()
        for row, error in verdict.parked:
            log.error(
                "outbox.parked",
                outbox_id=row["id"],
                topic=row["topic"],
                event_id=row["event_id"],
                payload_bytes=len(row["payload"]),
                attempts=row["attempts"] + 1,
                error=_describe(error),
                hint="escalation outbox retry --id N re-drives it once the cause is fixed",
            )
        if verdict.published:
            log.info("outbox.published", rows=len(verdict.published))
        if verdict.failed or verdict.held_back:
            first = verdict.failed[0][1] if verdict.failed else None
            raise first if first is not None else _Unsent(f"{len(verdict.held_back)} rows to send again")
        return len(verdict.published), len(verdict.published) + len(verdict.parked)

    async def _send(self, rows: list[asyncpg.Record]) -> dict[int, BaseException | None]:
        """Sends every row pipelined, each with its own ack: row id → None (acked) or the error.

        Rows not yet handed to the producer when ``ack_timeout`` runs out are left out of the answer.
        """
        producer = await self._ready_producer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ack_timeout
        acks: dict[int, asyncio.Future[object]] = {}
        outcomes: dict[int, BaseException | None] = {}
        for r in rows:
            if loop.time() >= deadline:
                break
            headers = [("event_id", r["event_id"].encode()), ("content-type", r["content_type"].encode())]
            try:
                # The send continues the trace of the close that wrote the row (docs/tracing.md).
                with tracing.continuing(r["traceparent"], headers):
                    ack = await asyncio.wait_for(
                        producer.send(
                            self._kafka.topic(r["topic"]), value=r["payload"], key=r["message_key"], headers=headers
                        ),
                        deadline - loop.time(),
                    )
            except Exception as exc:  # e.g. MessageSizeTooLargeError, raised before anything is sent
                outcomes[r["id"]] = exc
            else:
                acks[r["id"]] = ack
        if acks:
            await asyncio.wait(acks.values(), timeout=max(0.0, deadline - loop.time()))
        for row_id, ack in acks.items():
            if not ack.done():
                # Still in the producer: its late outcome is dropped (the row is sent again, deduped by event_id).
                ack.add_done_callback(_retrieve)
                # Kafka's own timeout type: a builtin TimeoutError would read as a database outage (db.translate).
                outcomes[row_id] = KafkaTimeoutError(f"no ack within {self.config.ack_timeout:g} s")
            elif ack.cancelled():
                outcomes[row_id] = asyncio.CancelledError("send cancelled")
            else:
                outcomes[row_id] = ack.exception()
        return outcomes

    async def _claim(self, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        """Locks a batch, keeping only rows no other relay's older row of the same key must precede.

        The rows left out stay locked until this transaction ends and are claimed again later.
        """
        claimed = await conn.fetch(sql("claim_outbox"), self.config.batch_size)
        if not claimed:
            return []
        keys = list({r["message_key"] for r in claimed})
        ids = [r["id"] for r in claimed]
        blocked = dict(await conn.fetch(sql("oldest_foreign_pending"), keys, ids, max(ids)))
        return [r for r in claimed if r["message_key"] not in blocked or r["id"] < blocked[r["message_key"]]]

    async def _update_backlog_metrics(self) -> None:
        backlog = await self._pool.fetchrow(sql("outbox_backlog"))
        if backlog is not None:
            metrics.OUTBOX_PENDING.set(backlog["pending"])
            metrics.OUTBOX_OLDEST_AGE.set(backlog["oldest_age"])
            metrics.OUTBOX_PARKED.set(backlog["parked"])

    async def purge_if_due(self) -> None:
        if time.monotonic() - self._last_purge >= self.config.purge_every:
            self._last_purge = time.monotonic()
            await self._pool.execute(sql("purge_published"), self.config.retention_seconds)

    async def _round(self) -> float:
        await self.run_once()
        await self.purge_if_due()
        return self.config.poll_interval

    async def run(self, stop: asyncio.Event, listen_dsn: str) -> None:
        try:
            await run_forever(name="outbox", stop=stop, wakeup=Wakeup(listen_dsn, CHANNEL), round_=self._round)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
