"""Tickets to Kafka (SPEC §5, fourth line): close → ticket latency, and relay rate vs raw produce.

Close → ticket runs an ``escalation worker outbox`` process on the database of ``escalation serve``;
relay vs raw runs an OutboxRelay in this process on a database of its own, so the measurement
controls its statistics. Idempotence is off (the embedded broker lacks InitProducerId) and the topics
carry a prefix of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field

import asyncpg
import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition

from escalation.bus import kafka
from escalation.services.tickets import CONTENT_TYPE
from escalation.v1 import events_pb2, platform_pb2
from tests.bench.api import CLOSE, merchant_id
from tests.bench.env import BenchEnv, BenchError, Child, say
from tests.bench.load import Metadata, percentile, raw_unary
from tests.bench.sizes import Sizes
from workers.outbox import OutboxConfig, OutboxRelay

PARTITIONS = 6
RAW_TOPIC = "bench.raw-produce"
FLOOR_TOPIC = "bench.latency-floor"
# The measuring consumer polls with a short fetch wait: the embedded broker (unlike Apache Kafka) does
# not answer a waiting fetch when data arrives, so the default 500 ms would measure the instrument.
FETCH_MAX_WAIT_MS = 10


@dataclass
class CloseResult:
    closed: int
    failed: int
    received: int
    latencies: list[float] = field(default_factory=list)  # seconds: receive time − ticket close_time
    close_rpc: list[float] = field(default_factory=list)  # seconds: CloseSession round trip
    floor: list[float] = field(default_factory=list)  # seconds: raw produce → the same consumer
    first_error: str | None = None


@dataclass
class RelayResult:
    raw_messages: int
    raw_seconds: float
    relay_rows: int
    relay_seconds: float
    delivered: int  # of the relay's rows, how many are on the topic (distinct event ids)
    stale_rows: int  # published in the run with statistics from before the backlog …
    stale_seconds: float  # … and how long that run was given

    @property
    def stale_rate(self) -> float:
        return self.stale_rows / self.stale_seconds

    @property
    def raw_rate(self) -> float:
        return self.raw_messages / self.raw_seconds

    @property
    def relay_rate(self) -> float:
        return self.relay_rows / self.relay_seconds


class TicketsBench:
    def __init__(self, env: BenchEnv, database_url: str) -> None:
        self.env = env
        self.database_url = database_url
        self.kafka = kafka.KafkaSettings(
            bootstrap=env.bootstrap,
            idempotence=False,
            partitions=PARTITIONS,
            replication_factor=1,
            topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        )
        self._relay: Child | None = None

    @property
    def tickets_topic(self) -> str:
        return self.kafka.topic(kafka.TICKETS_TOPIC)

    async def start_relay(self) -> None:
        if self._relay is not None:
            return
        await kafka.ensure_topics(self.kafka, [kafka.TICKETS_TOPIC, kafka.WARNINGS_TOPIC, FLOOR_TOPIC])
        self._relay = await self.env.worker(
            "outbox-relay",
            "outbox",
            {
                "ESCALATION_DATABASE_URL": self.database_url,
                "ESCALATION_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
                "ESCALATION_KAFKA_IDEMPOTENCE": "false",
                "ESCALATION_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
                "ESCALATION_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
                "ESCALATION_KAFKA_REPLICATION_FACTOR": "1",
            },
        )

    def _relay_alive(self) -> None:
        if self._relay is not None:
            self._relay.check_alive()

    # --- 5. close → ticket on Kafka ------------------------------------------------------------

    async def close_to_ticket(
        self, channel: grpc.aio.Channel, metadata: Metadata, sizes: Sizes, session_ids: list[str]
    ) -> CloseResult:
        """Closes ``session_ids`` as ESCALATED at ``sizes.close_rate`` per second (open loop) over gRPC."""
        await self.start_relay()
        result = CloseResult(closed=0, failed=0, received=0)
        result.floor = await self._latency_floor(count=200, rate=sizes.close_rate)
        say(
            f"  instrument floor (aiokafka produce → this consumer, no database): "
            f"p50 {percentile(result.floor, 50) * 1000:.0f} ms, p99 {percentile(result.floor, 99) * 1000:.0f} ms"
        )
        wanted = set(session_ids)
        consumer = _consumer(self.kafka.bootstrap, "bench-tickets-consumer")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.tickets_topic, p) for p in range(PARTITIONS)])
            all_received = asyncio.Event()

            async def consume() -> None:
                while True:
                    batches = await consumer.getmany(timeout_ms=200)
                    now = time.time()
                    for records in batches.values():
                        for record in records:
                            ticket = events_pb2.ServiceTicket.FromString(record.value or b"")
                            if ticket.session_id in wanted:
                                wanted.discard(ticket.session_id)
                                result.received += 1
                                result.latencies.append(now - ticket.close_time.ToNanoseconds() / 1e9)
                    if result.received and not wanted:
                        all_received.set()

            reader = asyncio.create_task(consume())
            try:
                await self._close_steadily(channel, metadata, sizes, session_ids, result, wanted)
                say(f"  closes done: {result.closed} ok, {result.failed} failed; waiting for their tickets")
                if result.closed == 0:
                    raise BenchError(f"every CloseSession failed; first: {result.first_error}")
                try:
                    await asyncio.wait_for(all_received.wait(), 30)
                except TimeoutError:
                    self._relay_alive()
                    say(f"  only {result.received} of {result.closed} tickets arrived within 30 s")
            finally:
                reader.cancel()
        finally:
            await consumer.stop()
        return result

    async def _latency_floor(self, count: int, rate: float) -> list[float]:
        """Latency of plain produce → consume with the relay's producer settings and our consumer."""
        topic = self.kafka.topic(FLOOR_TOPIC)
        latencies: list[float] = []
        producer = kafka.producer(self.kafka)
        consumer = _consumer(self.kafka.bootstrap, "bench-floor-consumer")
        await producer.start()
        try:
            await consumer.start()
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])

            async def consume() -> None:
                while len(latencies) < count:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        now = time.time()
                        latencies.extend(now - float((r.value or b"0").decode()) for r in records)

            reader = asyncio.create_task(consume())
            try:
                await asyncio.sleep(0.5)  # let the consumer's first fetch start
                for n in range(count):
                    await producer.send(topic, value=repr(time.time()).encode(), key=merchant_id(n % 50).encode())
                    await asyncio.sleep(1 / rate)
                await asyncio.wait_for(reader, 10)
            except TimeoutError:
                raise BenchError(f"only {len(latencies)} of {count} latency-floor records arrived") from None
            finally:
                reader.cancel()
        finally:
            await consumer.stop()
            await producer.stop()
        return latencies

    async def _close_steadily(
        self,
        channel: grpc.aio.Channel,
        metadata: Metadata,
        sizes: Sizes,
        session_ids: list[str],
        result: CloseResult,
        wanted: set[str],
    ) -> None:
        call = raw_unary(channel, CLOSE)
        loop = asyncio.get_running_loop()

        async def close(session_id: str) -> None:
            request = platform_pb2.CloseSessionRequest(
                session_id=session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
            )
            began = loop.time()
            try:
                await call(request.SerializeToString(), metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                result.failed += 1
                wanted.discard(session_id)
                result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
            else:
                result.closed += 1
                result.close_rpc.append(loop.time() - began)

        start, last_report = loop.time(), loop.time()
        tasks = []
        for i, session_id in enumerate(session_ids):
            await asyncio.sleep(max(0.0, start + i / sizes.close_rate - loop.time()))
            tasks.append(asyncio.create_task(close(session_id)))
            if loop.time() - last_report >= 2.0:
                last_report = loop.time()
                say(f"  close → ticket: {i + 1:,} closes sent, {result.received:,} tickets received")
        await asyncio.gather(*tasks)

    # --- 6. relay rate vs raw produce ----------------------------------------------------------

    async def relay_vs_raw(self, sizes: Sizes) -> RelayResult:
        """Raw pipelined produce, then an in-process OutboxRelay (default config) draining pre-inserted rows.

        The relay runs twice on its own database: once after ANALYZE (statistics know the backlog), and
        once with the statistics of a quiet outbox (published rows only), as right after a sudden
        backlog; the second run is cut off after ``sizes.stale_relay_seconds``.
        """
        await kafka.ensure_topics(self.kafka, [kafka.TICKETS_TOPIC, kafka.WARNINGS_TOPIC, RAW_TOPIC])
        value = bytes(range(256)) * (sizes.value_bytes // 256)
        raw_seconds = await self._raw_produce(sizes.produce_messages, value)
        say(f"  raw produce: {sizes.produce_messages:,} in {raw_seconds:.2f} s")
        url = await self.env.create_database("bench_relay")
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        assert pool is not None
        relay = OutboxRelay(pool, self.kafka, OutboxConfig())
        try:
            await _insert_outbox(pool, 1, value)
            await relay.run_once()  # connects the producer: not part of the measurement
            first, last = await _insert_outbox(pool, sizes.produce_messages, value)
            await pool.execute("ANALYZE outbox")
            say(f"  outbox: {sizes.produce_messages:,} rows inserted and analyzed; the relay drains them")
            started = time.monotonic()
            published = await _with_progress(relay.run_once(), pool, first, last, limit=300)
            relay_seconds = time.monotonic() - started
            if published is None:
                raise BenchError(f"the relay did not drain {sizes.produce_messages:,} rows within 300 s")
            say(f"  relay: {published:,} rows in {relay_seconds:.2f} s; checking the topic")
            delivered = await self._delivered(pool, first, last)

            await pool.execute("ANALYZE outbox")  # the quiet steady state: nothing pending
            # Keeps autovacuum from re-analyzing mid-run, so the run measures one thing: statistics
            # that predate the backlog (autovacuum would notice after up to autovacuum_naptime, 1 min).
            await pool.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
            first, last = await _insert_outbox(pool, sizes.produce_messages, value)
            say(
                f"  outbox: {sizes.produce_messages:,} more rows, statistics from before them; "
                f"relay cut off after {sizes.stale_relay_seconds:.0f} s"
            )
            db_started = await pool.fetchval("SELECT clock_timestamp()")
            started = time.monotonic()
            drained = await _with_progress(relay.run_once(), pool, first, last, limit=sizes.stale_relay_seconds)
            stale_seconds = time.monotonic() - started if drained is not None else sizes.stale_relay_seconds
            # Rows whose batch committed by the cut-off (a batch cut off mid-way rolls back).
            stale_rows = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE id BETWEEN $1 AND $2 "
                "AND published_time <= $3::timestamptz + make_interval(secs => $4::float8)",
                first,
                last,
                db_started,
                stale_seconds,
            )
        finally:
            await relay.close()
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()
        return RelayResult(
            raw_messages=sizes.produce_messages,
            raw_seconds=raw_seconds,
            relay_rows=published,
            relay_seconds=relay_seconds,
            delivered=delivered,
            stale_rows=int(stale_rows),
            stale_seconds=stale_seconds,
        )

    async def _raw_produce(self, count: int, value: bytes) -> float:
        """aiokafka with the relay's producer settings (acks=all, linger 5 ms), every send pipelined."""
        producer = kafka.producer(self.kafka)
        await producer.start()
        try:
            topic = self.kafka.topic(RAW_TOPIC)
            keys = [merchant_id(m).encode() for m in range(50)]
            started = time.monotonic()
            pending = []
            for n in range(count):
                headers = [("event_id", uuid.uuid4().hex.encode()), ("content-type", CONTENT_TYPE.encode())]
                pending.append(await producer.send(topic, value=value, key=keys[n % len(keys)], headers=headers))
            await asyncio.wait_for(asyncio.gather(*pending), 120)
            return time.monotonic() - started
        finally:
            await producer.stop()

    async def _delivered(self, pool: asyncpg.Pool, first: int, last: int, within: float = 60) -> int:
        """How many of the outbox rows first..last are on the tickets topic (distinct event ids)."""
        wanted = {
            r["event_id"]
            for r in await pool.fetch("SELECT event_id FROM outbox WHERE id BETWEEN $1 AND $2", first, last)
        }
        found = 0
        consumer = _consumer(self.kafka.bootstrap, "bench-delivery-check")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.tickets_topic, p) for p in range(PARTITIONS)])
            give_up = time.monotonic() + within
            while wanted and time.monotonic() < give_up:
                for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for record in records:
                        event_id = dict(record.headers).get("event_id", b"").decode()
                        if event_id in wanted:
                            wanted.discard(event_id)
                            found += 1
        finally:
            await consumer.stop()
        return found


def _consumer(bootstrap: str, client_id: str) -> AIOKafkaConsumer:
    """A group-less consumer; the caller assigns partitions (new topics: from their beginning)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        client_id=client_id,
    )


async def _insert_outbox(pool: asyncpg.Pool, count: int, value: bytes) -> tuple[int, int]:
    """``count`` ticket-like outbox rows (50 keys, ``value`` as payload) in one transaction; their id range."""
    row = await pool.fetchrow(
        """
        WITH ins AS (
            INSERT INTO outbox (topic, message_key, event_id, content_type, payload)
            SELECT $1, convert_to('bench-m' || lpad((i % 50)::text, 3, '0'), 'UTF8'), gen_random_uuid()::text, $2, $3
            FROM generate_series(1, $4::int) AS i
            RETURNING id
        )
        SELECT min(id) AS first, max(id) AS last FROM ins
        """,
        kafka.TICKETS_TOPIC,
        CONTENT_TYPE,
        value,
        count,
    )
    assert row is not None
    return int(row["first"]), int(row["last"])


async def _with_progress(
    work: Awaitable[int], pool: asyncpg.Pool, first: int, last: int, *, limit: float
) -> int | None:
    """Awaits ``work`` with a progress line every 2 s; after ``limit`` seconds cancels it and returns None."""
    task = asyncio.ensure_future(work)
    give_up = time.monotonic() + limit
    while True:
        done, _ = await asyncio.wait({task}, timeout=min(2.0, max(0.0, give_up - time.monotonic())))
        if done:
            return task.result()
        if time.monotonic() >= give_up:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        pending = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE id BETWEEN $1 AND $2 AND published_time IS NULL", first, last
        )
        say(f"  outbox: {pending:,} of {last - first + 1:,} rows pending")
