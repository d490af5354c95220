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
from dataclasses import dataclass

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from escalation.bus import kafka
from escalation.observability import metrics
from escalation.store.queries import sql
from workers.loop import Wakeup, run_forever

log = structlog.get_logger(__name__)

CHANNEL = "escalation_outbox"


@dataclass(frozen=True)
class OutboxConfig:
    batch_size: int = 500  # rows per claim
    poll_interval: float = 1.0  # seconds; the longest sleep when no NOTIFY arrives
    ack_timeout: float = 30.0  # seconds to wait for one batch's acks before giving the rows back
    retention_seconds: float = 7 * 24 * 3600  # published rows are deleted after this
    purge_every: float = 60.0  # seconds between purges


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
        """Publishes every row that is pending now, batch by batch; returns how many were published."""
        total = 0
        # Also before: while Kafka is down a round can wait ack_timeout, and the gauges should show the backlog.
        await self._update_backlog_metrics()
        try:
            while (n := await self._publish_batch()) > 0:
                total += n
        finally:
            await self._update_backlog_metrics()
        return total

    async def _publish_batch(self) -> int:
        failed: Exception | None = None
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                rows = await self._claim(conn)
                if not rows:
                    return 0
                try:
                    producer = await self._ready_producer()
                    sends = [
                        await producer.send(
                            self._kafka.topic(r["topic"]),
                            value=r["payload"],
                            key=r["message_key"],
                            headers=[
                                ("event_id", r["event_id"].encode()),
                                ("content-type", r["content_type"].encode()),
                            ],
                        )
                        for r in rows
                    ]
                    await asyncio.wait_for(asyncio.gather(*sends), self.config.ack_timeout)
                except Exception as exc:
                    failed = exc
                else:
                    await conn.execute(sql("mark_published"), [r["id"] for r in rows])
            if failed is not None:
                # The claim was rolled back; note the failure on the rows for operators, then retry later.
                await conn.execute(
                    sql("record_failure"), [r["id"] for r in rows], f"{type(failed).__name__}: {failed}"[:500]
                )
                raise failed
        for row in rows:
            metrics.OUTBOX_PUBLISHED.labels(topic=row["topic"]).inc()
            if row["topic"] == kafka.TICKETS_TOPIC:
                metrics.TICKETS_PUBLISHED.inc()
        log.info("outbox.published", rows=len(rows))
        return len(rows)

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
