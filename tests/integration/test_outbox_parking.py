"""SPEC R7: a row that cannot be published is parked and never delays the others; an outage parks nothing.

Against the real broker. Tansu accepts any record size whatever the topic's ``max.message.bytes`` (it
does not honour that setting), so "too large for the topic" comes from the producer's
``max_request_size``: that is also what refuses a too-large ticket in production, before sending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY

from escalation.auth import Identity, Role
from escalation.bus import kafka
from escalation.devenv.broker import EmbeddedBroker
from escalation.devenv.ports import free_port
from escalation.domain.limits import KAFKA_MAX_REQUEST_BYTES
from escalation.domain.session import Kind
from escalation.services import directory, sessions
from escalation.v1 import common_pb2, events_pb2
from workers.deadlines import DeadlineConfig, DeadlineWorker
from workers.outbox import OutboxConfig, OutboxRelay

pytestmark = pytest.mark.integration

INSERT = "INSERT INTO outbox (topic, message_key, event_id, content_type, payload) VALUES ($1, $2, $3, 'x', $4)"


async def _consume(settings: kafka.KafkaSettings, topic: str, count: int) -> list[tuple[bytes, str, bytes]]:
    """(key, event_id, value) of the first ``count`` records of ``topic``; fails after 20 s."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.bootstrap,
        group_id=None,  # no group to join: reads every partition at once
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    got: list[tuple[bytes, str, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    got += [(r.key or b"", dict(r.headers)["event_id"].decode(), r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return got


def _parked_gauge() -> float | None:
    return REGISTRY.get_sample_value("escalation_outbox_parked")


async def _row(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT id, attempts, isolated_failures, last_error, parked_time, published_time FROM outbox"
        " WHERE event_id = $1",
        event_id,
    )
    assert row is not None
    return row


@pytest.mark.parametrize(
    ("limit", "topic", "oversize"),
    [
        pytest.param(
            KAFKA_MAX_REQUEST_BYTES, kafka.TICKETS_TOPIC, KAFKA_MAX_REQUEST_BYTES + 1, id="ticket-at-production-limit"
        ),
        pytest.param(20_000, kafka.WARNINGS_TOPIC, 20_001, id="warning-just-over"),
        pytest.param(20_000, kafka.TICKETS_TOPIC, 400_000, id="ticket-20x-over"),
    ],
)
async def test_a_row_too_large_for_the_topic_is_parked_and_the_others_flow_in_the_same_round(
    pool: asyncpg.Pool, kafka_settings: kafka.KafkaSettings, limit: int, topic: str, oversize: int
) -> None:
    settings = dataclasses.replace(kafka_settings, max_request_bytes=limit)
    other = kafka.WARNINGS_TOPIC if topic == kafka.TICKETS_TOPIC else kafka.TICKETS_TOPIC
    await pool.executemany(
        INSERT,
        [
            (topic, b"big", "big-1", os.urandom(oversize)),  # oldest: it used to block every later row
            (topic, b"shop-a", "a-1", b"small"),
            (topic, b"big", "big-2", b"small"),  # a later row of the parked row's key flows (docs/delivery.md)
            (other, b"shop-b", "b-1", b"small"),
        ],
    )
    relay = OutboxRelay(pool, settings, OutboxConfig(ack_timeout=10))
    try:
        assert await relay.run_once() == 3, "one round publishes every other row and does not fail"
        parked = await _row(pool, "big-1")
        assert parked["parked_time"] is not None
        assert parked["published_time"] is None
        assert parked["last_error"].startswith("MessageSizeTooLargeError"), parked["last_error"]
        assert _parked_gauge() == 1
        assert await relay.run_once() == 0, "a parked row is not sent again by the relay"
        assert (await _row(pool, "big-1"))["attempts"] == 1
    finally:
        await relay.close()
    assert sorted(e for _, e, _ in await _consume(settings, topic, 2)) == ["a-1", "big-2"]
    assert [e for _, e, _ in await _consume(settings, other, 1)] == ["b-1"]


async def _merchant(pool: asyncpg.Pool, merchant_id: str) -> None:
    await directory.upsert_merchant(
        pool, merchant_id=merchant_id, display_name="", main_account_id=f"{merchant_id}-main", disabled=False
    )
    target = directory.MerchantScope(merchant_id, Identity("ops", Role.OPS))
    await directory.upsert_agent(
        pool, target, agent_id=f"{merchant_id}-agent", display_name="", im_permission=True, disabled=False, capacity=5
    )
    await directory.set_reception_agents(pool, target, [f"{merchant_id}-agent"])


async def _ticket_of_a_session(pool: asyncpg.Pool, policy: sessions.SessionPolicy, merchant_id: str, body: str) -> str:
    """Opens a session whose only message is ``body``; returns its session id (its deadline ends it)."""
    content = common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()
    opened = await sessions.open_session(
        pool,
        Identity("pa-1", Role.PLATFORM),
        sessions.OpenRequest(
            f"r-{uuid.uuid4()}", b"h", merchant_id, "REFUND", "o-1", [sessions.NewMessage(Kind.TEXT, content)]
        ),
        policy,
    )
    return str(opened.session["session_id"])


def _escalation(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "escalation", *args],
        env={**os.environ, "ESCALATION_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_an_unpublishable_ticket_is_parked_another_merchants_arrives_and_outbox_retry_redrives_it(
    pool: asyncpg.Pool, database_url: str, kafka_settings: kafka.KafkaSettings
) -> None:
    # A producer limit of 4 KB stands for a topic the tickets outgrew; the real bound is domain/limits.py.
    small = dataclasses.replace(kafka_settings, max_request_bytes=4_000)
    policy = sessions.SessionPolicy(remind_before=timedelta(seconds=0.2), reply_timeout_override=0.3)
    for merchant in ("shop-a", "shop-b"):
        await _merchant(pool, merchant)
    big_session = await _ticket_of_a_session(pool, policy, "shop-a", "退款" * 1500)
    small_session = await _ticket_of_a_session(pool, policy, "shop-b", "ship today?")
    await asyncio.sleep(0.4)
    assert (await DeadlineWorker(pool, DeadlineConfig(policy=policy)).run_once()).ended == 2

    relay = OutboxRelay(pool, small, OutboxConfig(ack_timeout=10))
    try:
        assert await relay.run_once() == 1
    finally:
        await relay.close()
    [(key, _, value)] = await _consume(small, kafka.TICKETS_TOPIC, 1)
    assert (key, events_pb2.ServiceTicket.FromString(value).session_id) == (b"shop-b", small_session)
    parked_id = await pool.fetchval("SELECT id FROM outbox WHERE parked_time IS NOT NULL")

    nothing = _escalation(database_url, "outbox", "retry", "--id", str(parked_id + 1000))
    assert (nothing.returncode, "is not parked" in nothing.stdout) == (1, True), nothing.stdout + nothing.stderr
    redriven = _escalation(database_url, "outbox", "retry", "--id", str(parked_id))
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert "re-drove 1 parked outbox row" in redriven.stdout
    assert f"outbox row {parked_id}:" in redriven.stdout
    assert "MessageSizeTooLargeError" in redriven.stdout
    assert (await _row_by_id(pool, parked_id))["parked_time"] is None

    # The cause fixed (a larger limit), the re-driven ticket is published.
    relay = OutboxRelay(pool, kafka_settings, OutboxConfig(ack_timeout=10))
    try:
        assert await relay.run_once() == 1
    finally:
        await relay.close()
    assert _parked_gauge() == 0
    tickets = await _consume(kafka_settings, kafka.TICKETS_TOPIC, 2)
    assert {events_pb2.ServiceTicket.FromString(v).session_id for _, _, v in tickets} == {big_session, small_session}
    again = _escalation(database_url, "outbox", "retry")
    assert (again.returncode, again.stdout.strip()) == (0, "no parked outbox rows; nothing done")


async def _row_by_id(pool: asyncpg.Pool, row_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT parked_time, published_time FROM outbox WHERE id = $1", row_id)
    assert row is not None
    return row


@pytest.fixture
async def own_broker() -> AsyncIterator[EmbeddedBroker]:
    """A broker this test alone may freeze."""
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()


async def test_a_frozen_broker_fails_rounds_but_parks_nothing_even_at_one_allowed_attempt(
    pool: asyncpg.Pool, own_broker: EmbeddedBroker, kafka_topic: str
) -> None:
    settings = kafka.KafkaSettings(
        bootstrap=own_broker.bootstrap,
        idempotence=False,
        partitions=2,
        replication_factor=1,
        topic_prefix=f"{kafka_topic}.",
    )
    relay = OutboxRelay(pool, settings, OutboxConfig(ack_timeout=0.5, max_attempts=1))
    try:
        await pool.execute(INSERT, kafka.TICKETS_TOPIC, b"shop-a", "warm-up", b"v")
        assert await relay.run_once() == 1, "healthy first: producer and topics ready"
        await pool.executemany(INSERT, [(kafka.TICKETS_TOPIC, f"shop-{i}".encode(), f"e-{i}", b"v") for i in range(4)])
        assert own_broker.pid is not None
        os.kill(own_broker.pid, signal.SIGSTOP)
        for _ in range(3):
            with pytest.raises(KafkaTimeoutError):
                await relay.run_once()
        rows = await pool.fetch("SELECT attempts, isolated_failures, parked_time FROM outbox WHERE event_id LIKE 'e-%'")
        assert [(r["attempts"], r["isolated_failures"], r["parked_time"]) for r in rows] == [(3, 0, None)] * 4
        assert _parked_gauge() == 0
        os.kill(own_broker.pid, signal.SIGCONT)
        assert await relay.run_once() == 4, "the broker back, every row is published"
    finally:
        if own_broker.pid is not None:
            os.kill(own_broker.pid, signal.SIGCONT)  # before close: a frozen broker would hang the producer's stop
        await relay.close()
