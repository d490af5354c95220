"""Issue 13 §1: no hot-path transaction issues NOTIFY; wake-ups leave after the commit, from a statement
that writes nothing, and a lost one costs latency, never an event (store/signals.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from escalation.bus import kafka
from escalation.services.sessions import SessionPolicy
from escalation.store import signals
from escalation.store.queries import sql
from escalation.v1 import merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import bearer, running_server, settings
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text
from tests.integration.test_realtime import MAIN, live, next_event, open_session, send
from workers.deadlines import DeadlineConfig, DeadlineWorker
from workers.outbox import OutboxConfig, OutboxRelay

pytestmark = pytest.mark.integration

# Tables every hot write touches (open, message, reply, close, deadline close, reminder, outbox insert).
HOT_TABLES = ["sessions", "messages", "merchant_events", "tickets", "outbox", "merchants", "agents"]
# The access-change signals (0003, 0008) fire only on directory columns, never on a hot write.
DIRECTORY_SIGNALS = {"notify_agent_access", "notify_merchant_access"}
CHANNELS = [signals.EVENTS_CHANNEL, signals.OUTBOX_CHANNEL, signals.DEADLINE_CHANNEL]


async def test_no_function_or_hot_table_trigger_issues_notify(pool: asyncpg.Pool) -> None:
    notifying = {
        r["proname"]
        for r in await pool.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " AND prosrc ~* '(pg_notify|\\mnotify\\M)'"
        )
    }
    assert notifying <= DIRECTORY_SIGNALS, f"functions that NOTIFY: {sorted(notifying - DIRECTORY_SIGNALS)}"
    triggers = await pool.fetch(
        "SELECT t.tgrelid::regclass::text AS tbl, t.tgname, p.proname, t.tgattr::int2[] AS columns"
        " FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " WHERE NOT t.tgisinternal AND t.tgrelid::regclass::text = ANY($1::text[])",
        HOT_TABLES,
    )
    for t in triggers:
        if t["proname"] in DIRECTORY_SIGNALS:
            # Only UPDATE OF named directory columns: never last_event_cursor, open_sessions & co.
            names = await pool.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum = ANY($2::int2[])",
                t["tbl"],
                t["columns"],
            )
            assert {n["attname"] for n in names} <= {
                "main_account_id",
                "im_permission",
                "disabled",
                "reception_agent",
                "main_account",
            }, t["tgname"]
            assert t["columns"], f"{t['tgname']} fires on every update"


class Received:
    """Notifications on the wake-up channels, as a listener on its own connection receives them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.got: list[tuple[str, str]] = []

    def __call__(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self.got.append((channel, payload))

    async def settle(self) -> list[tuple[str, str]]:
        """Everything committed before this call has been delivered (a round trip on the listener)."""
        await self.conn.execute("SELECT 1")
        for _ in range(5):
            await asyncio.sleep(0)
        return self.got


@pytest.mark.parametrize("merchants", [["shop-a"], ["shop-a", "shop-b"]])
async def test_a_burst_of_writes_notifies_nothing_until_it_has_committed(
    pool: asyncpg.Pool, database_url: str, merchants: list[str]
) -> None:
    listener = await asyncpg.connect(database_url)
    received = Received(listener)
    for name in CHANNELS:
        await listener.add_listener(name, received)
    notifier = signals.notifier(pool)
    try:
        async with running_server(pool) as channel:
            for m in merchants:
                await make_shop(channel, m)
            await received.settle()
            received.got.clear()
            notifier.pause()  # as if every writer died right after its commits
            platform = platform_pb2_grpc.PlatformServiceStub(channel)
            merchant: Any = merchant_pb2_grpc.MerchantServiceStub(channel)
            ids = []
            for m in merchants:
                for _ in range(3):
                    opened = await platform.OpenSession(open_request(m), metadata=PLATFORM)
                    ids.append(opened.session.session_id)
                    agent = bearer("merchant", opened.session.assigned_agent_id, m)
                    await merchant.Reply(
                        merchant_pb2.ReplyRequest(session_id=opened.session.session_id, content=text("on it")),
                        metadata=agent,
                    )
            for sid in ids:
                await send(channel, sid, "still there?")
            await platform.CloseSession(
                platform_pb2.CloseSessionRequest(
                    session_id=ids[0], outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
                ),
                metadata=PLATFORM,
            )
            # The deadline worker's reminders, then its closes (a clock moved past the reminders, then the deadlines).
            worker = DeadlineWorker(pool)
            now = await pool.fetchval("SELECT now()")
            assert (await worker.run_once(now=now + timedelta(seconds=150))).reminded == len(ids) - 1
            assert (await worker.run_once(now=now + timedelta(hours=1))).ended == len(ids) - 1
            assert await pool.fetchval("SELECT count(*) FROM outbox") == len(ids)

            assert await received.settle() == [], "a writing transaction issued NOTIFY"

            statements = notifier.statements
            notifier.resume()
            await notifier.drain()
            assert notifier.statements == statements + 1, "one statement for the whole burst"
            got = await received.settle()
            assert sorted(p for c, p in got if c == signals.EVENTS_CHANNEL) == sorted(merchants)
            assert [p for c, p in got if c == signals.OUTBOX_CHANNEL] == [""]
            assert len([p for c, p in got if c == signals.DEADLINE_CHANNEL]) == 1
    finally:
        await listener.close()


async def test_the_wake_up_statement_writes_nothing(pool: asyncpg.Pool, database_url: str) -> None:
    listener = await asyncpg.connect(database_url)
    received = Received(listener)
    await listener.add_listener(signals.EVENTS_CHANNEL, received)
    try:
        async with pool.acquire() as conn, conn.transaction():
            sent = await conn.fetchval(sql("send_signals"), [signals.EVENTS_CHANNEL] * 2, ["shop-x", "shop-y"])
            assert sent == 2
            # No transaction id: nothing written, so no WAL to flush at commit while the notify lock is held.
            assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
            assert await received.settle() == [], "delivered only at commit"
        assert sorted(p for _, p in await received.settle()) == ["shop-x", "shop-y"]
    finally:
        await listener.close()


async def test_a_lost_wake_up_delays_an_event_never_loses_it(pool: asyncpg.Pool) -> None:
    """The hub's head poll (limits.SIGNAL_POLL_SECONDS) delivers what no wake-up announced."""
    notifier = signals.notifier(pool)
    async with running_server(pool) as a, running_server(pool) as b:
        await make_shop(b, agents={"shop-a-sub-1": 10})
        call = await live(pool, a, MAIN)
        notifier.pause()  # the writer died between its commit and the wake-up
        session = await open_session(b)
        await send(b, session.session_id, "anyone?")
        got = [await next_event(call, wait=10.0) for _ in range(3)]
        assert [e.WhichOneof("kind") for e in got] == ["session_assigned", "message_added", "message_added"]
        assert got[0].session_assigned.session.session_id == session.session_id
        notifier.resume()
        call.cancel()


async def test_the_deadline_worker_is_woken_by_the_post_commit_signal(pool: asyncpg.Pool, database_url: str) -> None:
    """A reminder due at once (remind_before ≥ the reply timeout) is sent long before the 60 s poll interval:
    the open's post-commit signal woke the sleeping worker."""
    config = replace(settings(), remind_before_seconds=600)
    policy = SessionPolicy(remind_before=timedelta(seconds=600))
    worker = DeadlineWorker(pool, DeadlineConfig(poll_interval=60.0, policy=policy))
    stop = asyncio.Event()
    async with running_server(pool, config=config) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        running = asyncio.create_task(worker.run(stop, database_url))
        try:
            call = await live(pool, channel, MAIN)
            await _listening(pool, signals.DEADLINE_CHANNEL)  # from now on it sleeps 60 s
            session = await open_session(channel)
            got = [await next_event(call, wait=10.0) for _ in range(3)]
            assert [e.WhichOneof("kind") for e in got] == ["session_assigned", "message_added", "reply_reminder"]
            assert got[2].reply_reminder.session_id == session.session_id
            call.cancel()
        finally:
            stop.set()
            await running


async def _listening(pool: asyncpg.Pool, channel: str) -> None:
    """Returns once a worker's LISTEN connection on ``channel`` is up (its first round is done)."""
    async with asyncio.timeout(10.0):
        while not await pool.fetchval(  # noqa: ASYNC110 (the condition is in the database)
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", f"escalation-wakeup-{channel}"
        ):
            await asyncio.sleep(0.05)


async def test_the_relay_is_woken_by_the_closes_post_commit_signal(
    pool: asyncpg.Pool, database_url: str, kafka_settings: kafka.KafkaSettings
) -> None:
    """An escalated close's ticket is published long before the relay's 60 s poll interval."""
    relay = OutboxRelay(pool, kafka_settings, OutboxConfig(ack_timeout=10, poll_interval=60.0))
    stop = asyncio.Event()
    async with running_server(pool) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        session = await open_session(channel)
        running = asyncio.create_task(relay.run(stop, database_url))
        try:
            await _listening(pool, signals.OUTBOX_CHANNEL)
            await platform_pb2_grpc.PlatformServiceStub(channel).CloseSession(
                platform_pb2.CloseSessionRequest(
                    session_id=session.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
                ),
                metadata=PLATFORM,
            )
            async with asyncio.timeout(10.0):
                while not await pool.fetchval(  # noqa: ASYNC110 (the condition is in the database)
                    "SELECT count(*) FROM outbox WHERE published_time IS NOT NULL"
                ):
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
