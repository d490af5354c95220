"""`escalation worker deadlines|outbox` and `escalation tickets tail` as real OS processes, for e2e tests.

Each worker gets its own free metrics port, JSON logs in files, and the Kafka settings of one test (its
own topic prefix); the context managers stop it (SIGTERM, then SIGKILL) and reap it whatever happened.
Also: opening sessions straight through the service layer, polling with a bound, reading a topic to
its end with a consumer that joins no group, and reading a process's /metrics.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from escalation.auth import Identity, Role
from escalation.bus.kafka import TICKETS_TOPIC
from escalation.domain.session import Kind
from escalation.services import directory, sessions
from escalation.v1 import common_pb2, events_pb2
from tests.e2e.harness import (
    ESCALATION,
    REPO,
    STOP_TIMEOUT,
    Process,
    clean_env,
    escalation,
    free_addr,
    started,
    wait_started,
)

__all__ = [
    "ESCALATION",
    "REPO",
    "STOP_TIMEOUT",
    "TICKETS_TOPIC",
    "Process",
    "clean_env",
    "free_addr",
    "started",
    "wait_started",
]

PLATFORM = Identity("pa-1", Role.PLATFORM)


# --- Kafka target ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaTarget:
    """One broker and the topic prefix a single test owns there."""

    bootstrap: str
    prefix: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:10]}.")
    partitions: int = 3

    @property
    def tickets_topic(self) -> str:
        return self.prefix + TICKETS_TOPIC

    def env(self) -> dict[str, str]:
        return {
            "ESCALATION_KAFKA_BOOTSTRAP": self.bootstrap,
            "ESCALATION_KAFKA_IDEMPOTENCE": "false",  # the embedded broker has no InitProducerId
            "ESCALATION_KAFKA_REPLICATION_FACTOR": "1",
            "ESCALATION_KAFKA_TOPIC_PARTITIONS": str(self.partitions),
            "ESCALATION_KAFKA_TOPIC_PREFIX": self.prefix,
        }


# --- processes -------------------------------------------------------------------------------------


@contextmanager
def worker(
    kind: str,
    database_url: str,
    logs: Path,
    name: str,
    *,
    kafka: KafkaTarget | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Process]:
    """``escalation worker <kind>`` (deadlines or outbox) on free ports with JSON logs, plus ``env``."""
    full_env = clean_env(
        ESCALATION_DATABASE_URL=database_url,
        ESCALATION_METRICS_ADDR=free_addr(),
        ESCALATION_LOG_FORMAT="json",
        **(kafka.env() if kafka is not None else {}),
        **(env or {}),
    )
    with escalation(("worker", kind), full_env, logs, name) as process:
        yield process


def _fetch_metrics(addr: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{addr}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def metrics(process: Process) -> dict[str, float]:
    """The process's /metrics: each sample name mapped to the sum of its values over all labels."""
    text = await asyncio.to_thread(_fetch_metrics, process.metrics_addr)
    samples: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] += sample.value
    return dict(samples)


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    explain: Callable[[], Awaitable[str]] | None = None,
) -> float:
    """Polls ``check`` until true; returns the seconds it took, fails with ``explain()`` after ``within``."""
    started_at = time.monotonic()
    while not await check():
        if time.monotonic() - started_at >= within:
            pytest.fail(f"{what}: not within {within:.0f} s\n{await explain() if explain else ''}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started_at


# --- sessions ----------------------------------------------------------------------------------------


def policy(timeout: float, remind_before: float = 1.0) -> sessions.SessionPolicy:
    return sessions.SessionPolicy(remind_before=timedelta(seconds=remind_before), reply_timeout_override=timeout)


async def make_shop(pool: asyncpg.Pool, merchant_id: str = "shop", agents: int = 3, capacity: int = 50) -> None:
    await directory.upsert_merchant(
        pool, merchant_id=merchant_id, display_name="", main_account_id=f"{merchant_id}-main", disabled=False
    )
    target = directory.MerchantScope(merchant_id, Identity("ops", Role.OPS))
    ids = [f"{merchant_id}-agent-{n}" for n in range(agents)]
    for agent_id in ids:
        await directory.upsert_agent(
            pool, target, agent_id=agent_id, display_name="", im_permission=True, disabled=False, capacity=capacity
        )
    await directory.set_reception_agents(pool, target, ids)


async def open_sessions(
    pool: asyncpg.Pool, count: int, session_policy: sessions.SessionPolicy, merchant_id: str = "shop"
) -> dict[uuid.UUID, datetime]:
    """``count`` sessions, each with one platform message: session id → its reply deadline as the opening
    transaction stored it (read there, because a running worker may end a session, clearing the column,
    before a later read on a loaded machine)."""
    content = common_pb2.MessageContent(text=common_pb2.Text(body="Can you ship today?")).SerializeToString()
    limit = asyncio.Semaphore(8)

    async def one(n: int) -> tuple[uuid.UUID, datetime]:
        async with limit:
            opened = await sessions.open_session(
                pool,
                PLATFORM,
                sessions.OpenRequest(
                    f"r-{uuid.uuid4()}",
                    b"h",
                    merchant_id,
                    "REFUND",
                    f"o-{n}",
                    [sessions.NewMessage(Kind.TEXT, content)],
                ),
                session_policy,
            )
        return opened.session["session_id"], opened.session["reply_deadline"]

    return dict(await asyncio.gather(*(one(n) for n in range(count))))


async def all_ended_and_published(pool: asyncpg.Pool, count: int) -> bool:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM sessions WHERE state = 'ENDED') AS ended,"
        " (SELECT count(*) FROM outbox) AS rows,"
        " (SELECT count(*) FROM outbox WHERE published_time IS NULL) AS pending"
    )
    assert row is not None
    return bool(row["ended"] == count and row["rows"] >= count and row["pending"] == 0)


async def progress(pool: asyncpg.Pool) -> str:
    rows = await pool.fetch("SELECT state, count(*) FROM sessions GROUP BY state")
    outbox = await pool.fetchrow(
        "SELECT count(*) AS rows, count(*) FILTER (WHERE published_time IS NULL) AS pending,"
        " max(attempts) AS attempts, max(last_error) AS last_error FROM outbox"
    )
    return f"sessions {dict((r[0], r[1]) for r in rows)}; outbox {dict(outbox) if outbox else None}"


# --- Kafka -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def event_id(self) -> str:
        return dict(self.headers)["event_id"].decode()

    def ticket(self) -> events_pb2.ServiceTicket:
        return events_pb2.ServiceTicket.FromString(self.value)


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    # No group: partitions are assigned by hand, so there is no join (and no rebalance) to wait for.
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )


async def list_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _wait_topic(bootstrap: str, topic: str, within: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + within
        while topic not in await admin.list_topics():
            if time.monotonic() >= deadline:
                pytest.fail(f"topic {topic} does not exist after {within:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _assigned_consumer(bootstrap: str, topic: str, within: float) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of ``topic``, waiting up to ``within`` for it to exist.

    The topic is looked for first: a started consumer only refreshes metadata of topics it already
    tracks, so it would never see one created after its start.
    """
    await _wait_topic(bootstrap, topic, within)
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        found = consumer.partitions_for_topic(topic)
        assert found, f"{topic} listed but without partitions"
        tps = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool] | None = None,
    within: float = 30.0,
) -> list[Record]:
    """Every record of ``topic`` from the beginning.

    Without ``until``: up to the end offsets as of the call. With it: until ``until(records)`` holds,
    failing after ``within`` seconds.
    """
    deadline = time.monotonic() + within
    consumer = await _assigned_consumer(bootstrap, topic, within)
    got: list[Record] = []
    try:
        tps = sorted(consumer.assignment())
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps) if until is None else {}
        while True:
            if until is None:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    return got
            elif until(got):
                return got
            if time.monotonic() >= deadline:
                pytest.fail(f"reading {topic}: condition not met within {within:.0f} s ({len(got)} records read)")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [Record(r.partition, r.offset, r.key, r.value or b"", tuple(r.headers or ())) for r in records]
    finally:
        await consumer.stop()


def event_ids(records: list[Record]) -> set[str]:
    return {r.event_id for r in records}


def assert_event_id_is_ticket_id(records: list[Record]) -> None:
    """Every record's ``event_id`` header names the ticket its value carries (so dedupe by it is safe)."""
    for r in records:
        assert r.event_id == r.ticket().ticket_id, (r.partition, r.offset)
