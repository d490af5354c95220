"""Merchant warnings (SPEC R10): the worker's rule and period, exactly one warning and one outbox row per
merchant and period however many workers run, publication on Kafka, and OpsService.ListWarnings."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from escalation.bus import kafka
from escalation.domain import paging
from escalation.domain.session import CloseReason
from escalation.domain.timeliness import Figures, WarningKind, WarningRule
from escalation.services import warnings
from escalation.v1 import events_pb2, ops_pb2, ops_pb2_grpc
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.stats_harness import P, add_session, answered_sessions, make_shop
from workers.outbox import OutboxRelay
from workers.warnings import WarningsConfig, WarningsWorker

pytestmark = pytest.mark.integration

CHECK = datetime(2025, 6, 10, 23, 0, tzinfo=UTC)
OPENED = CHECK - timedelta(hours=3)
DAY = timedelta(days=1)
Kind = events_pb2.MerchantWarning.Kind


def _worker(pool: asyncpg.Pool, at: datetime) -> WarningsWorker:
    return WarningsWorker(pool, WarningsConfig(clock=lambda: at))


async def _slow_shop(pool: asyncpg.Pool, merchant_id: str) -> None:
    """Five sessions, three answered within 3 minutes (60 %), average response 86 s."""
    await make_shop(pool, merchant_id)
    await answered_sessions(pool, merchant_id, OPENED, [10, 10, 10, 200, 200])


async def _warnings(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT w.warning_id, w.merchant_id, w.period_start, w.period_end, w.kinds, w.payload, w.create_time,"
        " o.topic, o.message_key, o.event_id, o.content_type, o.payload AS event"
        " FROM merchant_warnings w LEFT JOIN outbox o ON o.event_id = w.warning_id::text"
        " ORDER BY w.merchant_id, w.period_start"
    )
    return rows


async def test_a_merchant_below_the_rate_threshold_is_warned_once_per_period(pool: asyncpg.Pool) -> None:
    await _slow_shop(pool, "slow")
    first = await _worker(pool, CHECK).run_once()
    assert [(w.merchant_id, list(w.kinds)) for w in first.created] == [("slow", [WarningKind.LOW_REPLY_RATE])]
    assert (await _worker(pool, CHECK + timedelta(minutes=30)).run_once()).created == [], "same UTC day"
    next_day = await _worker(pool, CHECK + timedelta(hours=2)).run_once()  # 01:00 the next day, same sessions
    assert [w.merchant_id for w in next_day.created] == ["slow"]

    rows = await _warnings(pool)
    assert [(r["period_start"], r["period_end"]) for r in rows] == [
        (datetime(2025, 6, 10, tzinfo=UTC), datetime(2025, 6, 11, tzinfo=UTC)),
        (datetime(2025, 6, 11, tzinfo=UTC), datetime(2025, 6, 12, tzinfo=UTC)),
    ]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2, "exactly one outbox row per warning"
    row = rows[0]
    assert (row["topic"], row["message_key"], row["event_id"]) == (
        "escalation.merchant-warnings.v1",
        b"slow",
        str(row["warning_id"]),
    )
    assert row["content_type"] == "application/x-protobuf; messageType=escalation.v1.MerchantWarning"
    assert row["event"] == row["payload"]
    assert row["kinds"] == ["LOW_REPLY_RATE"]
    event = events_pb2.MerchantWarning.FromString(row["payload"])
    assert (event.warning_id, event.merchant_id, list(event.kinds)) == (
        str(row["warning_id"]),
        "slow",
        [Kind.KIND_LOW_REPLY_RATE],
    )
    assert event.period_start.ToDatetime(UTC) == datetime(2025, 6, 10, tzinfo=UTC)
    assert (event.window_start.ToDatetime(UTC), event.window_end.ToDatetime(UTC)) == (
        CHECK - timedelta(hours=24),
        CHECK,
    )
    assert event.create_time.ToDatetime(UTC) == CHECK == row["create_time"]
    assert (event.sessions, event.sessions_rated, event.sessions_answered_in_3m) == (5, 5, 3)
    assert event.session_reply_rate_3m == pytest.approx(0.6)
    assert event.reply_rate_threshold == pytest.approx(0.8)
    assert event.min_sessions == 5
    assert event.average_response.ToTimedelta() == timedelta(seconds=86)
    assert event.average_response_threshold.ToTimedelta() == timedelta(seconds=90)


async def test_merchants_at_or_above_the_threshold_or_with_too_few_sessions_are_not_warned(pool: asyncpg.Pool) -> None:
    # Exactly 80 % within 3 minutes: not below the threshold.
    await make_shop(pool, "good")
    await answered_sessions(pool, "good", OPENED, [10, 10, 10, 10, 200])
    # Every session late, but only four of them.
    await make_shop(pool, "few")
    await answered_sessions(pool, "few", OPENED, [200, 200, 200, 200])
    # Five sessions opened, four late, but one the platform closed before the merchant could answer:
    # four rated sessions are too few.
    await make_shop(pool, "unrated")
    await answered_sessions(pool, "unrated", OPENED, [200, 200, 200, 200])
    await add_session(
        pool, merchant_id="unrated", open_time=OPENED, messages=[(P, 0)], close=(CloseReason.RESOLVED, 30)
    )
    # Five late sessions, opened more than 24 hours before the check.
    await make_shop(pool, "old")
    await answered_sessions(pool, "old", CHECK - timedelta(hours=25), [200, 200, 200, 200, 200])

    result = await _worker(pool, CHECK).run_once()
    assert result.created == []
    assert result.checked == 2, "only merchants with at least min_sessions sessions in the window are judged"
    assert await pool.fetchval("SELECT count(*) FROM merchant_warnings") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_slow_average_response_alone_triggers_a_warning(pool: asyncpg.Pool) -> None:
    await make_shop(pool, "steady")
    await answered_sessions(pool, "steady", OPENED, [100, 100, 100, 100, 100])  # all within 3 min, 100 s each
    await make_shop(pool, "borderline")
    await answered_sessions(pool, "borderline", OPENED, [90, 90, 90, 90, 90])  # exactly 90 s: not above
    result = await _worker(pool, CHECK).run_once()
    assert [(w.merchant_id, list(w.kinds)) for w in result.created] == [("steady", [WarningKind.SLOW_AVERAGE_RESPONSE])]
    [row] = await _warnings(pool)
    event = events_pb2.MerchantWarning.FromString(row["payload"])
    assert list(event.kinds) == [Kind.KIND_SLOW_AVERAGE_RESPONSE]
    assert event.session_reply_rate_3m == 1.0
    assert event.average_response.ToTimedelta() == timedelta(seconds=100)


async def test_thresholds_of_the_worker_config_are_applied(pool: asyncpg.Pool) -> None:
    await make_shop(pool, "shop")
    await answered_sessions(pool, "shop", OPENED, [10, 10, 200])
    strict = WarningRule(reply_rate_threshold=0.9, min_sessions=3, average_response=timedelta(seconds=300))
    result = await WarningsWorker(pool, WarningsConfig(rule=strict, clock=lambda: CHECK)).run_once()
    assert [(w.merchant_id, list(w.kinds)) for w in result.created] == [("shop", [WarningKind.LOW_REPLY_RATE])]


async def test_two_workers_at_once_store_one_warning_and_one_outbox_row_per_merchant(pool: asyncpg.Pool) -> None:
    slow = [f"slow-{n}" for n in range(6)]
    for merchant_id in slow:
        await _slow_shop(pool, merchant_id)
    await make_shop(pool, "good")
    await answered_sessions(pool, "good", OPENED, [10] * 6)
    workers = [_worker(pool, CHECK), _worker(pool, CHECK)]
    created = []
    for _ in range(3):
        results = await asyncio.gather(*(w.run_once() for w in workers))
        created += [w for r in results for w in r.created]
    assert sorted(w.merchant_id for w in created) == slow
    rows = await _warnings(pool)
    assert [r["merchant_id"] for r in rows] == slow
    assert [r["event_id"] for r in rows] == [str(r["warning_id"]) for r in rows]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == len(slow)


async def test_recording_one_period_concurrently_stores_one_warning_and_one_outbox_row(pool: asyncpg.Pool) -> None:
    """The guarantee beneath the worker: racing inserts for one merchant and period, one wins, the rest
    insert nothing at all (not even an outbox row)."""
    await make_shop(pool, "slow")
    figures = Figures(sessions=5, sessions_rated=5)
    racing = [
        warnings.build("slow", figures, [WarningKind.LOW_REPLY_RATE], WarningRule(), CHECK + timedelta(seconds=n))
        for n in range(8)
    ]

    async def record(w: warnings.MerchantWarning) -> bool:
        async with pool.acquire() as conn:
            return await warnings.record(conn, w)

    won = await asyncio.gather(*(record(w) for w in racing))
    assert sum(won) == 1
    winner = racing[won.index(True)]
    rows = await _warnings(pool)
    assert [(r["warning_id"], r["event_id"]) for r in rows] == [(winner.warning_id, str(winner.warning_id))]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


# --- on Kafka ------------------------------------------------------------------------------------


async def test_a_warning_is_published_with_its_event_id_content_type_and_merchant_key(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    await _slow_shop(pool, "slow")
    [created] = (await _worker(pool, CHECK).run_once()).created
    assert await relay.run_once() == 1
    consumer = AIOKafkaConsumer(
        kafka_settings.topic(kafka.WARNINGS_TOPIC),
        bootstrap_servers=kafka_settings.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    got: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while not got:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    got += records
    finally:
        await consumer.stop()
    [record] = got
    assert record.key == b"slow"
    assert {k: v.decode() for k, v in record.headers} == {
        "event_id": str(created.warning_id),
        "content-type": "application/x-protobuf; messageType=escalation.v1.MerchantWarning",
    }
    assert record.value == created.payload
    assert events_pb2.MerchantWarning.FromString(record.value).warning_id == str(created.warning_id)


# --- ListWarnings --------------------------------------------------------------------------------


async def _stored(pool: asyncpg.Pool) -> list[warnings.MerchantWarning]:
    """Six warnings of three merchants over three days; m1 and m2 share a create_time on day one."""
    figures = Figures(sessions=5, sessions_rated=5)
    made = []
    for merchant_id, days in (("m1", (0, 1, 2)), ("m2", (0, 2)), ("m3", (1,))):
        await make_shop(pool, merchant_id, agents=())
        for day in days:
            w = warnings.build(merchant_id, figures, [WarningKind.LOW_REPLY_RATE], WarningRule(), CHECK + day * DAY)
            async with pool.acquire() as conn:
                assert await warnings.record(conn, w)
            made.append(w)
    return sorted(made, key=lambda w: (w.create_time, w.warning_id), reverse=True)


async def _pages(ops: ops_pb2_grpc.OpsServiceAsyncStub, merchant_id: str, size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = await ops.ListWarnings(
            ops_pb2.ListWarningsRequest(merchant_id=merchant_id, page_size=size, page_token=token), metadata=OPS
        )
        pages.append([w.warning_id for w in response.warnings])
        token = response.next_page_token
        if not token:
            return pages


async def test_list_warnings_pages_newest_first_and_filters_by_merchant(pool: asyncpg.Pool) -> None:
    stored = await _stored(pool)
    ids = [str(w.warning_id) for w in stored]
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        assert await _pages(ops, "", 0) == [ids], "default page size holds them all"
        assert await _pages(ops, "", 2) == [ids[0:2], ids[2:4], ids[4:6]]
        assert await _pages(ops, "", 4) == [ids[0:4], ids[4:6]]
        m1 = [str(w.warning_id) for w in stored if w.merchant_id == "m1"]
        assert await _pages(ops, "m1", 2) == [m1[0:2], m1[2:3]]
        assert await _pages(ops, "m3", 1) == [[str(w.warning_id) for w in stored if w.merchant_id == "m3"]]
        await make_shop(pool, "quiet", agents=())
        assert await _pages(ops, "quiet", 10) == [[]]
        first = await ops.ListWarnings(ops_pb2.ListWarningsRequest(page_size=1), metadata=OPS)
        assert first.warnings[0] == events_pb2.MerchantWarning.FromString(stored[0].payload), "as published"


async def test_list_warnings_bad_input(pool: asyncpg.Pool) -> None:
    await _stored(pool)
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        m1_token = (
            await ops.ListWarnings(ops_pb2.ListWarningsRequest(merchant_id="m1", page_size=1), metadata=OPS)
        ).next_page_token
        assert m1_token
        filters = ["warnings", ""]
        cases = [
            (ops_pb2.ListWarningsRequest(page_size=-1), {"page_size"}),
            (ops_pb2.ListWarningsRequest(page_size=1001), {"page_size"}),
            (ops_pb2.ListWarningsRequest(merchant_id="m 1"), {"merchant_id"}),
            (ops_pb2.ListWarningsRequest(page_token="not-a-token"), {"page_token"}),
            (ops_pb2.ListWarningsRequest(merchant_id="m2", page_token=m1_token), {"page_token"}),
            (ops_pb2.ListWarningsRequest(page_token=m1_token), {"page_token"}),
            (
                ops_pb2.ListWarningsRequest(page_token=paging.encode(["yesterday", str(uuid.uuid4())], filters)),
                {"page_token"},
            ),
            (ops_pb2.ListWarningsRequest(page_token=paging.encode([CHECK.isoformat(), "x"], filters)), {"page_token"}),
            (ops_pb2.ListWarningsRequest(page_token=paging.encode([1, 2, 3], filters)), {"page_token"}),
            (
                ops_pb2.ListWarningsRequest(merchant_id="m 1", page_size=-5, page_token="%%%"),
                {"merchant_id", "page_size", "page_token"},
            ),
        ]
        for request, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ops.ListWarnings(request, metadata=OPS)
            got = failure(caught.value)
            assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS"), request
            assert set(got.field_violations) == fields, request
        # A well-formed key the service never issued only moves the caller's own position.
        forged = paging.encode([CHECK.isoformat(), str(uuid.UUID(int=0))], filters)
        assert (await ops.ListWarnings(ops_pb2.ListWarningsRequest(page_token=forged), metadata=OPS)).warnings == []

        for request, metadata, code, reason in [
            (ops_pb2.ListWarningsRequest(merchant_id="nobody"), OPS, grpc.StatusCode.NOT_FOUND, "MERCHANT_NOT_FOUND"),
            (
                ops_pb2.ListWarningsRequest(),
                bearer("merchant", "m1-main", "m1"),
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ops.ListWarnings(request, metadata=metadata)
            got = failure(caught.value)
            assert (got.code, got.reason) == (code, reason)
