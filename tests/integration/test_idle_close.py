"""SPEC R12 against a real database: an answered session closes as IDLE after the merchant's idle_timeout.

The deadline worker's claims take the instant that decides what is due (``run_once(now=…)``), so these
tests move the clock instead of sleeping through minutes of idle timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY

from escalation import errors
from escalation.auth import Identity, Role
from escalation.domain.session import CloseReason, Kind
from escalation.services import directory, sessions
from escalation.store.migrate import migrate, migrations
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM as PLATFORM_BEARER
from tests.integration.sessions_harness import make_shop, open_request, text
from workers.deadlines import DeadlineConfig, DeadlineWorker, RoundResult

pytestmark = pytest.mark.integration

PLATFORM = Identity("pa-1", Role.PLATFORM)
OPS_IDENTITY = Identity("ops", Role.OPS)
POLICY = sessions.SessionPolicy()  # the merchant's stored timeouts: 180 s to reply, idle_timeout as set
SECOND = timedelta(seconds=1)
# The stubs type neither the read API of a server-streaming call nor EOF.
Call = Any
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


def _text(body: str) -> sessions.NewMessage:
    return sessions.NewMessage(
        Kind.TEXT, common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()
    )


def _agent(agent_id: str) -> Identity:
    return Identity(agent_id, Role.MERCHANT, "shop")


async def _shop(pool: asyncpg.Pool, agents: tuple[str, ...] = ("a", "b"), idle_seconds: int = 300) -> None:
    await directory.upsert_merchant(pool, merchant_id="shop", display_name="", main_account_id="main", disabled=False)
    target = directory.MerchantScope("shop", OPS_IDENTITY)
    for agent_id in agents:
        await directory.upsert_agent(
            pool, target, agent_id=agent_id, display_name="", im_permission=True, disabled=False, capacity=10
        )
    await directory.set_reception_agents(pool, target, list(agents))
    await directory.update_idle_timeout(pool, target, idle_seconds)


async def _open(pool: asyncpg.Pool, policy: sessions.SessionPolicy = POLICY) -> tuple[uuid.UUID, str]:
    opened = await sessions.open_session(
        pool,
        PLATFORM,
        sessions.OpenRequest(f"r-{uuid.uuid4()}", b"h", "shop", "REFUND", None, [_text("ship today?")]),
        policy,
    )
    return opened.session["session_id"], opened.session["assigned_agent_id"]


async def _answer(pool: asyncpg.Pool, sid: uuid.UUID, agent_id: str, body: str = "yes") -> datetime:
    row = await sessions.add_message(pool, _agent(agent_id), sid, _text(body), POLICY)
    sent: datetime = row["send_time"]
    return sent


async def _deadlines(pool: asyncpg.Pool, sid: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT state, close_reason, close_time, reply_deadline, idle_deadline FROM sessions WHERE session_id = $1",
        sid,
    )
    assert row is not None
    return row


def _closed_total(reason: str) -> float:
    return REGISTRY.get_sample_value("escalation_sessions_closed_total", {"reason": reason}) or 0.0


def _lateness_count() -> float:
    return REGISTRY.get_sample_value("escalation_deadline_lateness_seconds_count") or 0.0


async def test_answered_session_closes_as_idle_after_the_idle_timeout_never_early_once(pool: asyncpg.Pool) -> None:
    await _shop(pool, idle_seconds=300)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=POLICY))
    # R2: a, b, then a again (tie at 1/10 each: a was assigned first). a answers both of its sessions;
    # b's waits for its reply (an hour to answer here, so that only idleness ends anything below).
    patient = sessions.SessionPolicy(reply_timeout_override=3600)
    first, a = await _open(pool, patient)
    other, b = await _open(pool, patient)
    second, again = await _open(pool, patient)
    assert (a, b, again) == ("a", "b", "a")
    await _answer(pool, first, "a")
    answered_at = await _answer(pool, second, "a")
    row = await _deadlines(pool, second)
    assert (row["reply_deadline"], row["idle_deadline"]) == (None, answered_at + timedelta(seconds=300))
    idle_deadline = row["idle_deadline"]
    closed_before, lateness_before = _closed_total("IDLE"), _lateness_count()

    result = await worker.run_once(now=idle_deadline - SECOND)
    assert (result.idled, result.ended) == (0, 0), "a second before the later one's deadline"
    assert (await _deadlines(pool, second))["state"] == "OPEN", "never early"
    result = await worker.run_once(now=idle_deadline)
    assert (result.idled, result.ended) == (2, 0)
    assert (await worker.run_once(now=idle_deadline + timedelta(minutes=30))).idled == 0, "each closes once"

    for sid in (first, second):
        row = await _deadlines(pool, sid)
        assert (row["state"], row["close_reason"], row["idle_deadline"]) == ("ENDED", "IDLE", None)
    assert (await _deadlines(pool, second))["close_time"] == idle_deadline, "closed at the instant judged"
    assert (await _deadlines(pool, other))["state"] == "OPEN", "b's unanswered session waits for its reply"
    assert await pool.fetchval("SELECT count(*) FROM tickets") == 0, "an idle close makes no ticket"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0, "so nothing goes to Kafka"
    assert _closed_total("IDLE") - closed_before == 2
    assert _lateness_count() - lateness_before == 2

    # The merchant's event log: SessionClosed for each, with the idle reason, and no TicketCreated.
    events = await pool.fetch(
        "SELECT kind, session_id, agent_id, payload FROM merchant_events WHERE merchant_id = 'shop'"
        " AND kind IN ('session_closed', 'ticket_created') ORDER BY cursor"
    )
    assert sorted((e["kind"], str(e["session_id"]), e["agent_id"]) for e in events) == sorted(
        [("session_closed", str(first), "a"), ("session_closed", str(second), "a")]
    )
    for e in events:
        closed = merchant_pb2.MerchantEvent.FromString(e["payload"]).session_closed.session
        assert (closed.state, closed.close_reason, closed.ticket_id) == (
            common_pb2.SESSION_STATE_ENDED,
            common_pb2.CLOSE_REASON_IDLE,
            "",
        )

    # Capacity released: a holds 0, b 1, so the next session goes to a (with a's stale count of 2 it
    # would have gone to b).
    counts = dict(await pool.fetch("SELECT agent_id, open_sessions FROM agents WHERE merchant_id = 'shop'"))
    assert (counts["a"], counts["b"]) == (0, 1)
    assert (await _open(pool))[1] == "a"
    with pytest.raises(errors.SessionClosed) as caught:
        await _answer(pool, second, "a", "still there?")
    assert "ticket_id" not in (caught.value.metadata or {}), "ended without a ticket"


async def test_n_workers_close_each_idle_session_exactly_once(pool: asyncpg.Pool, database_url: str) -> None:
    count = 30
    await _shop(pool, agents=("a", "b", "c"), idle_seconds=300)
    for _ in range(count):
        sid, agent = await _open(pool)
        await _answer(pool, sid, agent)
    latest = await pool.fetchval("SELECT max(idle_deadline) FROM sessions")
    closed_before = _closed_total("IDLE")
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in range(4)]
    try:
        workers = [DeadlineWorker(p, DeadlineConfig(batch_size=4, policy=POLICY)) for p in pools]
        results = await asyncio.gather(*(w.run_once(now=latest) for w in workers))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    assert sum(r.idled for r in results) == count
    assert sum(r.ended for r in results) == 0
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE close_reason = 'IDLE'") == count
    assert await pool.fetchval("SELECT count(*) FROM merchant_events WHERE kind = 'session_closed'") == count, (
        "one SessionClosed per session"
    )
    assert await pool.fetchval("SELECT sum(open_sessions) FROM agents") == 0, "each count released once"
    assert _closed_total("IDLE") - closed_before == count


async def test_a_message_racing_the_idle_close_either_lands_or_is_refused_never_both(pool: asyncpg.Pool) -> None:
    """R6 for R12: a merchant message and the idle claim meet on the session row's lock. Whichever takes it
    first wins: the message restarts the idle deadline (the claim then finds nothing due) or the session
    ends IDLE (the message gets SESSION_CLOSED)."""
    count = 30
    await _shop(pool, agents=("a", "b"), idle_seconds=300)
    agents = {}
    for _ in range(count):
        sid, agent = await _open(pool)
        await _answer(pool, sid, agent)
        agents[sid] = agent
    # Every idle deadline has passed at this instant; one restarted by a message of the race has not.
    due = await pool.fetchval("SELECT max(idle_deadline) FROM sessions")
    workers = [DeadlineWorker(pool, DeadlineConfig(batch_size=3, policy=POLICY)) for _ in range(2)]

    async def message(n: int, sid: uuid.UUID) -> str:
        await asyncio.sleep(n * 0.003)  # spread over the workers' batches: usually some win, some lose
        try:
            await _answer(pool, sid, agents[sid], "one more thing")
        except errors.SessionClosed:
            return "refused"
        return "landed"

    rounds = [asyncio.create_task(w.run_once(now=due)) for w in workers]
    outcomes = await asyncio.gather(*(message(n, sid) for n, sid in enumerate(agents)), *rounds)
    results = dict(zip(agents, outcomes[:count], strict=True))
    rows = {
        r["session_id"]: r for r in await pool.fetch("SELECT session_id, state, close_reason, last_seq FROM sessions")
    }
    for sid, outcome in results.items():
        row = rows[sid]
        if outcome == "landed":
            assert (row["state"], row["last_seq"]) == ("OPEN", 3), sid
        else:
            assert (row["state"], row["close_reason"], row["last_seq"]) == ("ENDED", "IDLE", 2), sid
    closed = sum(r.idled for r in outcomes[count:] if isinstance(r, RoundResult))
    assert closed == list(results.values()).count("refused"), "every idle close refused exactly one message"


async def test_a_platform_message_during_idle_turns_it_back_into_a_reply_deadline(pool: asyncpg.Pool) -> None:
    await _shop(pool, agents=("a",), idle_seconds=300)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=POLICY))
    sid, _ = await _open(pool)
    await _answer(pool, sid, "a")
    idle_deadline = (await _deadlines(pool, sid))["idle_deadline"]
    asked = await sessions.add_message(pool, PLATFORM, sid, _text("and the invoice?"), POLICY)
    row = await _deadlines(pool, sid)
    assert (row["idle_deadline"], row["reply_deadline"]) == (None, asked["send_time"] + timedelta(seconds=180))
    result = await worker.run_once(now=idle_deadline + SECOND)
    assert (result.idled, result.ended) == (0, 1), "the question waits for an answer: a timeout, not idle"
    row = await _deadlines(pool, sid)
    assert (row["state"], row["close_reason"]) == ("ENDED", "MERCHANT_TIMEOUT")
    assert await pool.fetchval("SELECT count(*) FROM tickets WHERE session_id = $1", sid) == 1


async def test_a_merchant_message_restarts_the_idle_deadline(pool: asyncpg.Pool) -> None:
    await _shop(pool, agents=("a",), idle_seconds=600)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=POLICY))
    sid, _ = await _open(pool)
    first = await _answer(pool, sid, "a", "yes")
    later = await _answer(pool, sid, "a", "shipped, tracking follows")
    assert (await _deadlines(pool, sid))["idle_deadline"] == later + timedelta(seconds=600)
    assert (await worker.run_once(now=first + timedelta(seconds=600))).idled == 0, "counted from the last message"
    assert (await worker.run_once(now=later + timedelta(seconds=600) - SECOND)).idled == 0
    assert (await worker.run_once(now=later + timedelta(seconds=600))).idled == 1


async def test_a_changed_idle_timeout_applies_from_the_next_merchant_message(pool: asyncpg.Pool) -> None:
    """Like the reply timeout: a running idle deadline keeps its instant; the next one uses the new value."""
    await _shop(pool, agents=("a",), idle_seconds=1800)
    sid, _ = await _open(pool)
    answered = await _answer(pool, sid, "a")
    await directory.update_idle_timeout(pool, directory.MerchantScope("shop", OPS_IDENTITY), 300)
    assert (await _deadlines(pool, sid))["idle_deadline"] == answered + timedelta(seconds=1800)
    again = await _answer(pool, sid, "a", "anything else?")
    assert (await _deadlines(pool, sid))["idle_deadline"] == again + timedelta(seconds=300)


async def test_the_dev_override_replaces_every_merchants_idle_timeout(pool: asyncpg.Pool) -> None:
    await _shop(pool, agents=("a",), idle_seconds=7200)
    sid, _ = await _open(pool)
    row = await sessions.add_message(
        pool, _agent("a"), sid, _text("yes"), sessions.SessionPolicy(idle_timeout_override=2.5)
    )
    assert (await _deadlines(pool, sid))["idle_deadline"] == row["send_time"] + timedelta(seconds=2.5)
    worker = DeadlineWorker(pool, DeadlineConfig(poll_interval=30.0, policy=POLICY))
    assert await worker.seconds_until_next(now=row["send_time"]) == 2.5, "the worker wakes for it"


# --- over gRPC: WatchSession ends, the setting and who may change it ------------------------------

MAIN = bearer("merchant", "shop-a-main", "shop-a")
SUB = bearer("merchant", "shop-a-sub-1", "shop-a")


async def test_watch_session_ends_when_the_session_closes_as_idle(pool: asyncpg.Pool) -> None:
    async with running_server(pool) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        session = (await platform.OpenSession(open_request(), metadata=PLATFORM_BEARER)).session
        await merchant_pb2_grpc.MerchantServiceStub(channel).Reply(
            merchant_pb2.ReplyRequest(session_id=session.session_id, content=text("yes")), metadata=SUB
        )
        watch: Call = platform.WatchSession(
            platform_pb2.WatchSessionRequest(session_id=session.session_id, after_seq=0), metadata=PLATFORM_BEARER
        )
        frames: list[platform_pb2.WatchSessionResponse] = []
        async with asyncio.timeout(5):
            while len([f for f in frames if f.HasField("message_added")]) < 2:
                frames.append(await watch.read())
        idle_deadline = await pool.fetchval("SELECT idle_deadline FROM sessions")
        assert (await DeadlineWorker(pool).run_once(now=idle_deadline)).idled == 1
        async with asyncio.timeout(5):
            while (frame := await watch.read()) is not EOF:
                frames.append(frame)
        ended = [f.session_ended.session for f in frames if f.HasField("session_ended")]
        assert [(s.close_reason, s.ticket_id) for s in ended] == [(common_pb2.CLOSE_REASON_IDLE, "")]
        assert frames[-1].HasField("session_ended"), "the stream ends with the session"


async def test_idle_timeout_is_5_to_120_minutes_set_by_the_main_account_or_ops(pool: asyncpg.Pool) -> None:
    async with running_server(pool) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
        settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=SUB)
        assert settings.idle_timeout.seconds == 1800, "default 30 min"

        def request(seconds: int, nanos: int = 0, merchant_id: str = "") -> admin_pb2.UpdateIdleTimeoutRequest:
            return admin_pb2.UpdateIdleTimeoutRequest(
                merchant_id=merchant_id, idle_timeout=duration_pb2.Duration(seconds=seconds, nanos=nanos)
            )

        for bad in (request(299), request(7201), request(0), request(600, 5), admin_pb2.UpdateIdleTimeoutRequest()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.UpdateIdleTimeout(bad, metadata=MAIN)
            got = failure(caught.value)
            assert (got.code, list(got.field_violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["idle_timeout"])
        for seconds in (300, 7200):
            assert (await admin.UpdateIdleTimeout(request(seconds), metadata=MAIN)).idle_timeout.seconds == seconds

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.UpdateIdleTimeout(request(600), metadata=SUB)
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_MAIN_ACCOUNT")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.UpdateIdleTimeout(request(600), metadata=PLATFORM_BEARER)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED

        by_ops = await admin.UpdateIdleTimeout(request(900, merchant_id="shop-a"), metadata=OPS)
        assert by_ops.idle_timeout.seconds == 900
        settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=SUB)
        assert (settings.idle_timeout.seconds, settings.reply_timeout.seconds) == (900, 180)


# --- migration 0011 --------------------------------------------------------------------------------


async def test_migration_gives_sessions_answered_before_it_an_idle_deadline_and_reruns_cleanly(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """Sessions answered before 0011 are idle since their last message; the file re-runs (no-transaction,
    every statement robust) without touching what is already set."""
    await _shop(pool, agents=("a",), idle_seconds=600)
    legacy, _ = await _open(pool)
    legacy_answered = await _answer(pool, legacy, "a")
    await pool.execute("UPDATE sessions SET idle_deadline = NULL WHERE session_id = $1", legacy)  # as before 0011
    current, _ = await _open(pool)
    await _answer(pool, current, "a")
    current_deadline = (await _deadlines(pool, current))["idle_deadline"]
    waiting, _ = await _open(pool)
    closed, _ = await _open(pool)
    await _answer(pool, closed, "a")
    await sessions.close_session(pool, PLATFORM, closed, CloseReason.RESOLVED, POLICY)

    (version,) = [m.version for m in migrations() if m.name == "idle_close"]
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", version)
    conn = await asyncpg.connect(database_url)
    try:
        assert [m.version for m in await migrate(conn)] == [version]
    finally:
        await conn.close()

    assert (await _deadlines(pool, legacy))["idle_deadline"] == legacy_answered + timedelta(seconds=600)
    assert (await _deadlines(pool, current))["idle_deadline"] == current_deadline
    assert (await _deadlines(pool, waiting))["idle_deadline"] is None, "a session waiting for a reply is not idle"
    assert (await _deadlines(pool, closed))["idle_deadline"] is None
