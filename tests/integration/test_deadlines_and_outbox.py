"""R5–R7 end to end in one process: deadlines by the database clock, tickets, the outbox relay, Kafka."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from escalation import errors
from escalation.auth import Identity, Role
from escalation.bus import kafka
from escalation.domain.session import Kind
from escalation.domain.tickets import transcript_digest
from escalation.services import directory, sessions
from escalation.store.queries import sql
from escalation.v1 import common_pb2, events_pb2, merchant_pb2
from workers.deadlines import DeadlineConfig, DeadlineWorker
from workers.outbox import OutboxRelay

pytestmark = pytest.mark.integration

PLATFORM = Identity("pa-1", Role.PLATFORM)
AGENT = Identity("agent-1", Role.MERCHANT, "shop")
TIMEOUT = 1.0  # seconds: the dev override, far below the production 120–180 s


def _policy(timeout: float = TIMEOUT, remind_before: float = 0.5) -> sessions.SessionPolicy:
    return sessions.SessionPolicy(remind_before=timedelta(seconds=remind_before), reply_timeout_override=timeout)


def _text(body: str) -> sessions.NewMessage:
    return sessions.NewMessage(
        Kind.TEXT, common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()
    )


async def _shop(pool: asyncpg.Pool) -> None:
    await directory.upsert_merchant(pool, merchant_id="shop", display_name="", main_account_id="main", disabled=False)
    target = directory.MerchantScope("shop", Identity("ops", Role.OPS))
    await directory.upsert_agent(
        pool, target, agent_id="agent-1", display_name="", im_permission=True, disabled=False, capacity=50
    )
    await directory.set_reception_agents(pool, target, ["agent-1"])


async def _open(pool: asyncpg.Pool, policy: sessions.SessionPolicy, n: int = 0) -> uuid.UUID:
    opened = await sessions.open_session(
        pool,
        PLATFORM,
        sessions.OpenRequest(f"r-{uuid.uuid4()}", b"h", "shop", "REFUND", f"o-{n}", [_text("ship today?")]),
        policy,
    )
    sid: uuid.UUID = opened.session["session_id"]
    return sid


async def _consume(
    settings: kafka.KafkaSettings, count: int, wait: float = 20
) -> list[tuple[bytes | None, dict[str, str], bytes]]:
    consumer = AIOKafkaConsumer(
        settings.topic(kafka.TICKETS_TOPIC),
        bootstrap_servers=settings.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    got: list[tuple[bytes | None, dict[str, str], bytes]] = []
    try:
        async with asyncio.timeout(wait):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    got += [(r.key, {k: v.decode() for k, v in r.headers}, r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return got


async def test_unanswered_session_becomes_exactly_one_ticket_on_the_topic(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    await _shop(pool)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=_policy()))
    sid = await _open(pool, _policy())
    assert (await worker.run_once()).ended == 0, "nothing fires before the deadline"
    deadline = await pool.fetchval("SELECT reply_deadline FROM sessions WHERE session_id = $1", sid)
    assert (await worker.run_once(now=deadline - timedelta(microseconds=1))).ended == 0, "not a microsecond early"
    assert (await worker.run_once(now=deadline)).ended == 1
    assert (await worker.run_once(now=deadline + timedelta(hours=1))).ended == 0, "each deadline fires once"
    row = await pool.fetchrow("SELECT state, close_reason, close_time FROM sessions WHERE session_id = $1", sid)
    assert row is not None
    assert (row["state"], row["close_reason"]) == ("ENDED", "MERCHANT_TIMEOUT")
    assert row["close_time"] >= deadline, "never early by the database clock"
    assert await pool.fetchval("SELECT open_sessions FROM agents WHERE agent_id = 'agent-1'") == 0

    assert await relay.run_once() == 1
    [(key, headers, value)] = await _consume(kafka_settings, 1)
    ticket = events_pb2.ServiceTicket.FromString(value)
    assert key == b"shop"
    assert headers == {
        "event_id": ticket.ticket_id,
        "content-type": "application/x-protobuf; messageType=escalation.v1.ServiceTicket",
    }
    assert (
        ticket.session_id,
        ticket.merchant_id,
        ticket.assigned_agent_id,
        ticket.platform_agent_id,
        ticket.order_id,
    ) == (
        str(sid),
        "shop",
        "agent-1",
        "pa-1",
        "o-0",
    )
    assert ticket.reason == common_pb2.CLOSE_REASON_MERCHANT_TIMEOUT
    assert ticket.category == common_pb2.CATEGORY_REFUND
    assert [m.content.text.body for m in ticket.transcript] == ["ship today?"]
    assert ticket.transcript_digest == transcript_digest(ticket.transcript)
    assert ticket.handle_by.ToDatetime() - ticket.close_time.ToDatetime() == timedelta(hours=2)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_time IS NULL") == 0


async def test_merchant_reply_clears_the_deadline_and_the_next_platform_message_starts_one(pool: asyncpg.Pool) -> None:
    await _shop(pool)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=_policy()))
    sid = await _open(pool, _policy())
    deadline = await pool.fetchval("SELECT reply_deadline FROM sessions WHERE session_id = $1", sid)
    await sessions.add_message(pool, AGENT, sid, _text("yes"), _policy())
    # Long past the cleared deadline, but within the idle timeout (30 min by default, SPEC R12).
    assert (await worker.run_once(now=deadline + timedelta(minutes=10))).ended == 0
    await sessions.add_message(pool, PLATFORM, sid, _text("and tomorrow?"), _policy())
    deadline = await pool.fetchval("SELECT reply_deadline FROM sessions WHERE session_id = $1", sid)
    assert deadline is not None, "the next platform message starts a deadline"
    assert (await worker.run_once(now=deadline - timedelta(microseconds=1))).ended == 0
    assert (await worker.run_once(now=deadline)).ended == 1
    with pytest.raises(errors.SessionClosed) as caught:
        await sessions.add_message(pool, AGENT, sid, _text("too late"), _policy())
    ticket_id = await pool.fetchval("SELECT ticket_id FROM tickets WHERE session_id = $1", sid)
    assert caught.value.metadata == {"ticket_id": str(ticket_id)}


async def test_reminder_event_reaches_the_merchant_log_before_the_deadline(pool: asyncpg.Pool) -> None:
    await _shop(pool)
    policy = _policy(timeout=1.5, remind_before=1.0)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=policy))
    sid = await _open(pool, policy)
    assert (await worker.run_once()).reminded == 0
    remind_time = await pool.fetchval("SELECT remind_time FROM sessions WHERE session_id = $1", sid)
    assert (await worker.run_once(now=remind_time - timedelta(microseconds=1))).reminded == 0
    result = await worker.run_once(now=remind_time)
    assert (result.reminded, result.ended) == (1, 0)
    rows = await pool.fetch(
        "SELECT cursor, kind, agent_id, payload FROM merchant_events WHERE merchant_id = 'shop' ORDER BY cursor"
    )
    reminders = [r for r in rows if r["kind"] == "reply_reminder"]
    assert len(reminders) == 1
    event = merchant_pb2.MerchantEvent.FromString(reminders[0]["payload"])
    assert (event.session_id, event.reply_reminder.session_id, reminders[0]["agent_id"]) == (
        str(sid),
        str(sid),
        "agent-1",
    )
    assert [r["cursor"] for r in rows] == list(range(1, len(rows) + 1)), "cursors are gapless"
    assert (await worker.run_once(now=remind_time)).reminded == 0, "one reminder per deadline"


async def test_reply_racing_the_deadline_never_both_never_neither(pool: asyncpg.Pool) -> None:
    """Hundreds of sessions; replies land around their deadline while a worker ends due sessions."""
    await _shop(pool)
    policy = _policy(timeout=1.0)
    ids = [await _open(pool, policy, n) for n in range(200)]
    deadlines = dict(await pool.fetch("SELECT session_id, reply_deadline FROM sessions"))
    worker = DeadlineWorker(pool, DeadlineConfig(batch_size=50, policy=policy))
    stop = asyncio.Event()

    async def work() -> None:
        while not stop.is_set():
            await worker.run_once()
            await asyncio.sleep(0.005)

    now = await pool.fetchval("SELECT clock_timestamp()")
    loop_start = asyncio.get_running_loop().time()

    async def reply(i: int, sid: uuid.UUID) -> str:
        # Spread replies over deadline − 50 ms … deadline + 50 ms (database clock).
        at = (deadlines[sid] - now).total_seconds() + (i % 11 - 5) / 100
        await asyncio.sleep(max(0.0, loop_start + at - asyncio.get_running_loop().time()))
        try:
            await sessions.add_message(pool, AGENT, sid, _text("here"), policy)
        except errors.SessionClosed:
            return "closed"
        return "replied"

    worker_task = asyncio.create_task(work())
    outcomes = dict(zip(ids, await asyncio.gather(*(reply(i, s) for i, s in enumerate(ids))), strict=True))
    await asyncio.sleep(1.2)
    stop.set()
    await worker_task
    await worker.run_once()
    tickets = {r["session_id"] for r in await pool.fetch("SELECT session_id FROM tickets")}
    states = dict(await pool.fetch("SELECT session_id, state FROM sessions"))
    replied = {r["session_id"] for r in await pool.fetch("SELECT session_id FROM messages WHERE sender = 'MERCHANT'")}
    for sid, outcome in outcomes.items():
        if outcome == "replied":
            assert (sid in replied, sid in tickets, states[sid]) == (True, False, "OPEN"), sid
        else:
            assert (sid in replied, sid in tickets, states[sid]) == (False, True, "ENDED"), sid
    assert {"replied", "closed"} == set(outcomes.values()), "the race should have gone both ways"


async def test_outbox_rows_committing_out_of_order_are_not_skipped(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute(
            "INSERT INTO outbox (topic, message_key, event_id, content_type, payload)"
            " VALUES ($1, 'k1', 'first', 'x', 'a')",
            kafka.TICKETS_TOPIC,
        )
        await pool.execute(
            "INSERT INTO outbox (topic, message_key, event_id, content_type, payload)"
            " VALUES ($1, 'k2', 'second', 'x', 'b')",
            kafka.TICKETS_TOPIC,
        )
        assert await relay.run_once() == 1, "the committed later row goes first"
        await tx.commit()
    finally:
        await pool.release(slow)
    assert await relay.run_once() == 1, "the earlier row that committed later is not skipped"
    got = await _consume(kafka_settings, 2)
    assert sorted(h["event_id"] for _, h, _ in got) == ["first", "second"]


async def test_per_key_order_is_kept(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    await pool.executemany(
        "INSERT INTO outbox (topic, message_key, event_id, content_type, payload) VALUES ($1, $2, $3, 'x', 'v')",
        [(kafka.TICKETS_TOPIC, f"m{i % 3}".encode(), f"e{i:03d}") for i in range(60)],
    )
    assert await relay.run_once() == 60
    got = await _consume(kafka_settings, 60)
    for key in (b"m0", b"m1", b"m2"):
        ids = [h["event_id"] for k, h, _ in got if k == key]
        assert ids == sorted(ids)


async def test_a_row_waits_while_another_relay_holds_an_older_row_of_its_key(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    await pool.executemany(
        "INSERT INTO outbox (topic, message_key, event_id, content_type, payload) VALUES ($1, $2, $3, 'x', 'v')",
        [(kafka.TICKETS_TOPIC, key, event_id) for key, event_id in ((b"k", "k-1"), (b"k", "k-2"), (b"j", "j-1"))],
    )
    other_relay = await pool.acquire()
    try:
        tx = other_relay.transaction()
        await tx.start()
        await other_relay.execute("SELECT id FROM outbox WHERE event_id = 'k-1' FOR UPDATE")
        assert await relay.run_once() == 1, "only j-1: k-2 must not overtake k-1, which another relay holds"
        await tx.rollback()
    finally:
        await pool.release(other_relay)
    assert await relay.run_once() == 2
    got = await _consume(kafka_settings, 3)
    assert [h["event_id"] for k, h, _ in got if k == b"k"] == ["k-1", "k-2"]


@pytest.mark.parametrize(("due", "batch_size"), [(0, 2), (1, 2), (2, 2), (3, 2), (5, 2), (4, 3)])
async def test_a_round_stops_claiming_once_a_batch_comes_back_short(
    database_url: str, due: int, batch_size: int
) -> None:
    """A batch below the limit was everything due: no extra empty claim (issue 12 §2)."""
    claims: list[str] = []
    watched = {sql("claim_due_sessions"): "sessions", sql("claim_due_reminders"): "reminders"}

    def count(query: asyncpg.connection.LoggedQuery) -> None:
        if query.query in watched:
            claims.append(watched[query.query])

    async def log_claims(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(count)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=log_claims)
    assert pool is not None
    try:
        await _shop(pool)
        policy = _policy(timeout=600, remind_before=300)
        ids = [await _open(pool, policy, n) for n in range(due + 1)]
        # The first `due` sessions are past their deadline, the last one past its reminder only.
        await pool.execute(
            "UPDATE sessions SET reply_deadline = clock_timestamp() - interval '1 s'"
            " WHERE session_id = ANY($1::uuid[])",
            ids[:due],
        )
        await pool.execute("UPDATE sessions SET remind_time = clock_timestamp() WHERE session_id = $1", ids[-1])
        claims.clear()
        result = await DeadlineWorker(pool, DeadlineConfig(batch_size=batch_size, policy=policy)).run_once()
        assert (result.ended, result.reminded) == (due, 1)
        assert claims.count("sessions") == due // batch_size + 1
        assert claims.count("reminders") == 1
        assert await pool.fetchval("SELECT count(*) FROM sessions WHERE state = 'ENDED'") == due
    finally:
        await pool.close()


async def test_the_next_wakeup_is_counted_from_the_instant_passed(pool: asyncpg.Pool) -> None:
    """seconds_until_next(now): the nearest reminder or deadline after ``now``, capped at the poll interval."""
    await _shop(pool)
    policy = _policy(timeout=120, remind_before=60)
    worker = DeadlineWorker(pool, DeadlineConfig(poll_interval=30.0, policy=policy))
    assert await worker.seconds_until_next() == 30.0, "nothing pending: the poll interval"
    sid = await _open(pool, policy)
    row = await pool.fetchrow("SELECT remind_time, reply_deadline FROM sessions WHERE session_id = $1", sid)
    assert row is not None
    remind_time, deadline = row["remind_time"], row["reply_deadline"]
    for before, expected in [(timedelta(seconds=3), 3.0), (timedelta(seconds=29.5), 29.5), (timedelta(hours=1), 30.0)]:
        assert await worker.seconds_until_next(now=remind_time - before) == expected
    assert await worker.seconds_until_next(now=remind_time + timedelta(seconds=1)) == 0.0, "overdue: at once"
    assert (await worker.run_once(now=remind_time)).reminded == 1
    assert await worker.seconds_until_next(now=deadline - timedelta(seconds=7)) == 7.0, "then the deadline"
