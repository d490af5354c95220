"""SPEC R5–R7 with every worker a real OS process: `escalation worker deadlines|outbox`, `tickets tail`.

Replicas of both workers on one database, a relay SIGKILLed between the broker's ack and its commit,
the broker stopped (and its in-memory topics lost) while sessions keep timing out, a deadline worker
killed while deadlines are pending, and the example consumer deduping a redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer

from escalation.auth import Identity, Role
from escalation.devenv.broker import EmbeddedBroker
from escalation.devenv.ports import free_port
from escalation.domain.session import Kind
from escalation.services import sessions
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc
from tests.e2e import replicas
from tests.e2e.harness import escalation
from tests.e2e.workers_harness import (
    KafkaTarget,
    Process,
    Record,
    all_ended_and_published,
    assert_event_id_is_ticket_id,
    clean_env,
    event_ids,
    make_shop,
    metrics,
    open_sessions,
    policy,
    progress,
    read_topic,
    wait_for,
    wait_started,
    worker,
)
from tests.integration.sessions_harness import PLATFORM, open_request
from tests.integration.sessions_harness import make_shop as make_shop_via_grpc
from workers.deadlines import DeadlineConfig, DeadlineWorker

pytestmark = pytest.mark.e2e

OUTAGE = float(os.environ.get("ESCALATION_TEST_BROKER_OUTAGE_SECONDS", "30"))

# Fast polling so the bounded waits below measure the workers, not their idle sleeps.
FAST = {
    "ESCALATION_REMIND_BEFORE_SECONDS": "1",
    "ESCALATION_DEADLINE_POLL_SECONDS": "0.5",
    "ESCALATION_OUTBOX_POLL_SECONDS": "0.5",
}


def _timeout_env(seconds: float) -> dict[str, str]:
    return {**FAST, "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS": str(seconds)}


def _assert_clean_shutdown(*processes: Process) -> None:
    """SIGTERM stops each with status 0; no round failed and nothing but JSON log lines was printed."""
    for process in processes:
        assert process.terminate() == 0, process.output()
        assert not process.events_named("worker.round_failed"), process.output()
        assert process.foreign_lines() == [], process.output()
        assert process.events_named("worker.stopped"), process.output()


async def _ticket_ids(pool: asyncpg.Pool) -> set[str]:
    return {str(r["ticket_id"]) for r in await pool.fetch("SELECT ticket_id FROM tickets")}


async def _pending(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_time IS NULL")
    return count


async def _end_in_process(pool: asyncpg.Pool, count: int, reply_timeout: float, merchant_id: str = "shop") -> None:
    """``count`` sessions timed out into tickets by one in-process deadline round (no relay involved)."""
    session_policy = policy(reply_timeout)
    await open_sessions(pool, count, session_policy, merchant_id)
    await asyncio.sleep(reply_timeout + 0.2)
    result = await DeadlineWorker(pool, DeadlineConfig(policy=session_policy)).run_once()
    assert result.ended == count


# --- R6/R7 with replicas of both workers ----------------------------------------------------------


async def test_two_deadline_workers_and_two_relays_end_each_session_once_and_publish_every_ticket(
    database_url: str, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path
) -> None:
    count, timeout = 150, 2.0
    kafka = KafkaTarget(kafka_bootstrap)
    env = _timeout_env(timeout)
    await make_shop(pool)
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker("deadlines", database_url, tmp_path, f"deadlines-{n}", env=env)) for n in (1, 2)
        ]
        relays = [
            stack.enter_context(worker("outbox", database_url, tmp_path, f"relay-{n}", kafka=kafka, env=env))
            for n in (1, 2)
        ]
        await asyncio.gather(*(wait_started(p) for p in (*workers, *relays)))

        due = await open_sessions(pool, count, policy(timeout))
        ids = list(due)
        assert len(due) == count
        assert None not in due.values()

        async def explain() -> str:
            return await progress(pool) + "\n" + "\n".join(p.output() for p in (*workers, *relays))

        await wait_for(lambda: all_ended_and_published(pool, count), 30, "every session ended and published", explain)

        tickets = await pool.fetch("SELECT session_id, count(*) AS n FROM tickets GROUP BY session_id")
        assert {r["session_id"]: r["n"] for r in tickets} == dict.fromkeys(ids, 1), "exactly one ticket per session"
        ended = await pool.fetch(
            "SELECT session_id, close_reason, close_time FROM sessions WHERE session_id = ANY($1::uuid[])", ids
        )
        assert {r["close_reason"] for r in ended} == {"MERCHANT_TIMEOUT"}
        assert all(r["close_time"] >= due[r["session_id"]] for r in ended), "no session ended before its deadline"

        records = await read_topic(kafka.bootstrap, kafka.tickets_topic)
        assert_event_id_is_ticket_id(records)
        assert event_ids(records) == await _ticket_ids(pool), "every ticket on the topic, and nothing else"
        duplicates = len(records) - count
        print(f"\n{count} tickets, {len(records)} records on the topic ({duplicates} redelivered)")

        worker_metrics = [await metrics(p) for p in workers]
        relay_metrics = [await metrics(p) for p in relays]
        for samples in worker_metrics:
            assert "escalation_deadline_lateness_seconds_count" in samples
        for samples in relay_metrics:
            assert "escalation_tickets_published_total" in samples
        ended_by = [int(s["escalation_deadline_lateness_seconds_count"]) for s in worker_metrics]
        published_by = [int(s["escalation_tickets_published_total"]) for s in relay_metrics]
        print(f"ended per deadline worker {ended_by}, published per relay {published_by}")
        assert sum(ended_by) == count, "each deadline observed exactly once across the workers"
        assert sum(published_by) == len(records), "each record on the topic was counted by the relay that sent it"

        _assert_clean_shutdown(*workers, *relays)


# --- R12: idle close with replicas of the deadline worker ------------------------------------------


async def test_two_deadline_workers_close_each_answered_session_once_as_idle(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    count, idle = 40, 1.0
    await make_shop(pool)
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker("deadlines", database_url, tmp_path, f"idle-{n}", env=FAST)) for n in (1, 2)
        ]
        await asyncio.gather(*(wait_started(p) for p in workers))
        # Answered within an hour's reply timeout; idle after `idle` seconds (the dev override).
        opened = await open_sessions(pool, count, policy(3600))
        assigned = dict(await pool.fetch("SELECT session_id, assigned_agent_id FROM sessions"))
        answering = sessions.SessionPolicy(idle_timeout_override=idle)
        content = common_pb2.MessageContent(text=common_pb2.Text(body="Yes, today.")).SerializeToString()
        idle_deadlines = {}
        for sid in opened:
            agent = Identity(assigned[sid], Role.MERCHANT, "shop")
            row = await sessions.add_message(pool, agent, sid, sessions.NewMessage(Kind.TEXT, content), answering)
            idle_deadlines[sid] = row["send_time"] + timedelta(seconds=idle)

        async def all_idle() -> bool:
            closed: int = await pool.fetchval("SELECT count(*) FROM sessions WHERE close_reason = 'IDLE'")
            return closed == count

        async def explain() -> str:
            return await progress(pool) + "\n" + "\n".join(p.output() for p in workers)

        await wait_for(all_idle, 30, "every answered session closed as idle", explain)
        rows = await pool.fetch("SELECT session_id, close_time FROM sessions")
        assert all(r["close_time"] >= idle_deadlines[r["session_id"]] for r in rows), "none closed early"
        assert await pool.fetchval("SELECT count(*) FROM tickets") == 0
        assert await pool.fetchval("SELECT coalesce(sum(open_sessions), 0) FROM agents") == 0, "capacity released"
        closed_events = await pool.fetchval("SELECT count(*) FROM merchant_events WHERE kind = 'session_closed'")
        assert closed_events == count, "one SessionClosed per session"

        worker_metrics = [await metrics(p) for p in workers]
        closed_by = [int(m["escalation_sessions_closed_total"]) for m in worker_metrics]
        observed_by = [int(m["escalation_deadline_lateness_seconds_count"]) for m in worker_metrics]
        print(f"\nidle sessions closed per deadline worker {closed_by}")
        assert sum(closed_by) == count, "each idle close counted once across the workers"
        assert sum(observed_by) == count, "and its lateness observed once"

        _assert_clean_shutdown(*workers)


# --- R7: at least once, marked only after the ack -------------------------------------------------


async def test_relay_killed_between_ack_and_mark_republishes_with_same_event_id(
    database_url: str, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path
) -> None:
    count = 20
    kafka = KafkaTarget(kafka_bootstrap)
    await make_shop(pool)
    await _end_in_process(pool, count, reply_timeout=0.5)
    ticket_ids = await _ticket_ids(pool)
    assert len(ticket_ids) == count
    assert await _pending(pool) == count
    # The blocked UPDATE must not time out on the relay's side and turn into a retry of its own.
    env = {**FAST, "ESCALATION_DB_COMMAND_TIMEOUT_SECONDS": "120"}

    blocker = await asyncpg.connect(database_url)
    try:
        lock = blocker.transaction()
        await lock.start()
        # SHARE lets the relay claim (FOR UPDATE takes ROW SHARE) but blocks its UPDATE (ROW EXCLUSIVE).
        await blocker.execute("LOCK TABLE outbox IN SHARE MODE")
        with worker("outbox", database_url, tmp_path, "relay-killed", kafka=kafka, env=env) as relay:
            await wait_started(relay)
            first = await read_topic(
                kafka.bootstrap, kafka.tickets_topic, until=lambda got: event_ids(got) >= ticket_ids, within=30
            )
            assert relay.alive, relay.output()
            blocked = await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'outbox'::regclass AND NOT granted"
            )
            assert blocked >= 1, "the relay should be waiting to mark the rows it published"
            relay.kill()
        await lock.commit()
    finally:
        await blocker.close()
    assert event_ids(first) == ticket_ids

    async def dead_transaction_gone() -> bool:
        # The killed relay's backend aborts once it notices the closed socket; its row locks go with it.
        async with pool.acquire() as conn, conn.transaction():
            free = await conn.fetch("SELECT id FROM outbox WHERE published_time IS NULL FOR UPDATE SKIP LOCKED")
        return len(free) == count

    await wait_for(dead_transaction_gone, 15, "the killed relay's transaction to be rolled back")
    assert await _pending(pool) == count, "acked rows whose mark never committed stay unpublished"

    with worker("outbox", database_url, tmp_path, "relay-fresh", kafka=kafka, env=env) as fresh:
        await wait_started(fresh)

        async def explain() -> str:
            return await progress(pool) + "\n" + fresh.output()

        await wait_for(lambda: all_ended_and_published(pool, count), 30, "the outbox drained", explain)
        _assert_clean_shutdown(fresh)

    records = await read_topic(kafka.bootstrap, kafka.tickets_topic)
    assert_event_id_is_ticket_id(records)
    by_id: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_id[r.event_id].append(r)
    assert set(by_id) == ticket_ids, "nothing missing"
    for event_id, copies in by_id.items():
        assert len(copies) >= 2, f"{event_id} was acked before the kill, so it must have been published again"
        assert len({(c.key, c.value, c.headers) for c in copies}) == 1, f"{event_id}: copies differ"


# --- R7: whatever Kafka does ----------------------------------------------------------------------


@pytest.mark.timeout(OUTAGE + 120)
async def test_broker_down_while_sessions_time_out_loses_nothing_and_drains_after(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    timeout = 1.5
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log")
    kafka = KafkaTarget(broker.bootstrap)
    env = _timeout_env(timeout)
    warm_up: list[str] = []
    outage: list[str] = []
    broker.start()
    broker_pid = broker.pid
    assert broker_pid is not None
    try:
        with (
            replicas.serving(database_url, tmp_path, count=1, ESCALATION_LOG_FORMAT="json", **env) as (server,),
            worker("deadlines", database_url, tmp_path, "deadlines", env=env) as deadline_worker,
            worker("outbox", database_url, tmp_path, "relay", kafka=kafka, env=env) as relay,
        ):
            await asyncio.gather(replicas.wait_serving(server), wait_started(deadline_worker), wait_started(relay))

            async def explain() -> str:
                return await progress(pool) + "\n" + relay.output()

            async with grpc.aio.insecure_channel(server.grpc_addr) as channel:
                await make_shop_via_grpc(channel, "shop-a", {f"shop-a-sub-{n}": 50 for n in (1, 2, 3)})
                platform = platform_pb2_grpc.PlatformServiceStub(channel)

                async def open_one(into: list[str]) -> None:
                    answer = await platform.OpenSession(open_request("shop-a"), metadata=PLATFORM, timeout=10)
                    assert isinstance(answer, platform_pb2.OpenSessionResponse)
                    into.append(answer.session.session_id)

                # Healthy first: the relay has created its topics and published to them.
                for _ in range(5):
                    await open_one(warm_up)
                await wait_for(lambda: all_ended_and_published(pool, len(warm_up)), 20, "warm-up published", explain)

                # The broker stops answering (SIGSTOP: frozen, like a hung or partitioned Apache Kafka,
                # keeping its data; the embedded broker keeps topics only in memory, so a real restart
                # would test its amnesia rather than our relay).
                os.kill(broker_pid, signal.SIGSTOP)
                outage_started = time.monotonic()
                while time.monotonic() - outage_started < OUTAGE:
                    await open_one(outage)  # every RPC succeeds: the broker is not on the request path
                    assert relay.alive, relay.output()
                    assert deadline_worker.alive, deadline_worker.output()
                    await asyncio.sleep(0.2)
            await asyncio.sleep(timeout + 1.0)

            opened = len(warm_up) + len(outage)
            assert await pool.fetchval("SELECT count(*) FROM sessions WHERE state = 'ENDED'") == opened, (
                "the deadline worker kept ending sessions without Kafka"
            )
            pending = await _pending(pool)
            assert pending == len(outage), "every ticket of the outage waits in the outbox"
            samples = await metrics(relay)
            print(
                f"\n{len(outage)} sessions opened in a {OUTAGE:.0f} s outage, {pending} outbox rows pending; the relay"
                f" reports escalation_outbox_pending={samples.get('escalation_outbox_pending')}"
                f" escalation_outbox_oldest_age_seconds={samples.get('escalation_outbox_oldest_age_seconds')}"
            )
            assert relay.alive, relay.output()

            os.kill(broker_pid, signal.SIGCONT)
            restarted = time.monotonic()
            await wait_for(lambda: all_ended_and_published(pool, opened), 60, "backlog drained", explain)
            print(f"backlog of {pending} drained {time.monotonic() - restarted:.1f} s after the broker came back")
            print(f"relay rounds failed meanwhile: {len(relay.events_named('worker.round_failed'))}")

            assert relay.terminate() == 0, relay.output()
            assert deadline_worker.terminate() == 0, deadline_worker.output()
            assert not deadline_worker.events_named("worker.round_failed"), deadline_worker.output()
            assert server.terminate() == 0, server.output()
            assert "Traceback" not in server.output(), server.output()

        outage_tickets = {
            str(r["ticket_id"])
            for r in await pool.fetch(
                "SELECT ticket_id FROM tickets WHERE session_id = ANY($1::uuid[])", [uuid.UUID(s) for s in outage]
            )
        }
        assert len(outage_tickets) == len(outage)
        records = await read_topic(kafka.bootstrap, kafka.tickets_topic)
        assert_event_id_is_ticket_id(records)
        assert event_ids(records) == await _ticket_ids(pool), "every ticket, warm-up and outage, is on the topic"
        assert outage_tickets <= event_ids(records)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker_pid, signal.SIGCONT)
        broker.stop()


# --- R5: deadlines survive a worker crash ---------------------------------------------------------


async def test_deadline_worker_restarted_while_deadlines_pending_loses_none(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    count, timeout = 50, 4.0
    env = _timeout_env(timeout)
    await make_shop(pool)
    with worker("deadlines", database_url, tmp_path, "deadlines-killed", env=env) as first:
        await wait_started(first)
        due = await open_sessions(pool, count, policy(timeout))
        ids = list(due)
        await asyncio.sleep(1.0)
        assert first.alive, first.output()
        first.kill()
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE state = 'OPEN'") == count, "none ended early"

    # No worker at all while every deadline passes (by the database clock).
    async def all_due() -> bool:
        now = await pool.fetchval("SELECT clock_timestamp()")
        return bool(now > max(due.values()))

    await wait_for(all_due, timeout + 5, "every deadline passed")
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE state = 'OPEN'") == count

    with worker("deadlines", database_url, tmp_path, "deadlines-fresh", env=env) as fresh:
        await wait_started(fresh)

        async def all_ended() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM sessions WHERE state = 'ENDED'") == count)

        async def explain() -> str:
            return await progress(pool) + "\n" + fresh.output()

        await wait_for(all_ended, 15, "every overdue session ended by the fresh worker", explain)
        await asyncio.sleep(1.0)  # a second look: nothing ends twice
        _assert_clean_shutdown(fresh)

    rows = await pool.fetch(
        "SELECT s.session_id, s.state, s.close_reason, s.close_time, count(t.ticket_id) AS tickets"
        " FROM sessions s LEFT JOIN tickets t USING (session_id) GROUP BY s.session_id"
    )
    assert {r["session_id"] for r in rows} == set(ids)
    for r in rows:
        assert (r["state"], r["close_reason"], r["tickets"]) == ("ENDED", "MERCHANT_TIMEOUT", 1), r
        assert r["close_time"] >= due[r["session_id"]], f"{r['session_id']} ended before its deadline"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == count, "one outbox row per ticket"
    assert await pool.fetchval("SELECT sum(open_sessions) FROM agents") == 0, "every assignment released once"
    reminders = Counter(
        r["session_id"]
        for r in await pool.fetch("SELECT session_id FROM merchant_events WHERE kind = 'reply_reminder'")
    )
    assert all(n == 1 for n in reminders.values()), "no reminder twice"
    print(f"\n{len(reminders)} of {count} overdue sessions got a reply_reminder from the fresh worker")


# --- the example consumer -------------------------------------------------------------------------


async def _run_tail(kafka: KafkaTarget, logs: Path, name: str, max_tickets: int) -> list[dict[str, object]]:
    group = f"tail-{uuid.uuid4().hex[:8]}"
    args = ("tickets", "tail", "--from-beginning", "--json", "--max", str(max_tickets), "--group", group)
    with escalation(args, clean_env(ESCALATION_LOG_FORMAT="json", **kafka.env()), logs, name) as tail:
        deadline = time.monotonic() + 60
        while tail.alive:
            if time.monotonic() >= deadline:
                pytest.fail(f"`escalation tickets tail --max {max_tickets}` still running after 60 s\n{tail.output()}")
            await asyncio.sleep(0.1)
        assert tail.proc.returncode == 0, tail.output()
        assert "Traceback" not in tail.output(), tail.output()
        printed: list[dict[str, object]] = [json.loads(line) for line in tail.stdout().splitlines() if line.strip()]
    return printed


async def _publish_tickets_with_a_redelivery(
    database_url: str, pool: asyncpg.Pool, kafka: KafkaTarget, logs: Path
) -> tuple[set[str], Record]:
    """Five tickets, a redelivery of the first (same key, value and headers), then five more.

    One merchant, so one partition: the copy sits between the two batches, where a consumer reading
    ten distinct tickets has to pass it.
    """
    await make_shop(pool)
    with worker("outbox", database_url, logs, "relay", kafka=kafka, env=FAST) as relay:
        await wait_started(relay)
        await _end_in_process(pool, 5, reply_timeout=0.5)
        first_five = await _ticket_ids(pool)
        records = await read_topic(kafka.bootstrap, kafka.tickets_topic, until=lambda got: event_ids(got) >= first_five)
        original = records[0]
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(
                kafka.tickets_topic,
                value=original.value,
                key=original.key,
                headers=list(original.headers),
                partition=original.partition,
            )
        finally:
            await producer.stop()
        await _end_in_process(pool, 5, reply_timeout=0.5)
        all_ten = await _ticket_ids(pool)
        await wait_for(lambda: all_ended_and_published(pool, 10), 20, "second batch published")
        _assert_clean_shutdown(relay)
    records = await read_topic(kafka.bootstrap, kafka.tickets_topic)
    assert len(records) == 11
    assert event_ids(records) == all_ten
    assert {r.partition for r in records} == {original.partition}, "one merchant, one partition"
    copy = max((r for r in records if r.event_id == original.event_id), key=lambda r: r.offset)
    later = [r for r in records if r.event_id in all_ten - first_five]
    assert all(copy.offset < r.offset for r in later), "the copy sits before the second batch"
    return all_ten, original


async def test_tickets_tail_prints_each_ticket_once(
    database_url: str, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path
) -> None:
    kafka = KafkaTarget(kafka_bootstrap)
    all_ten, original = await _publish_tickets_with_a_redelivery(database_url, pool, kafka, tmp_path)
    printed = await _run_tail(kafka, tmp_path, "tail", max_tickets=10)
    ids = [str(ticket["ticketId"]) for ticket in printed]
    assert len(ids) == 10, ids
    assert set(ids) == all_ten, "each ticket exactly once, the redelivered one too"
    assert ids.count(original.event_id) == 1


async def test_tickets_tail_max_stops_after_that_many_tickets(
    database_url: str, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path
) -> None:
    kafka = KafkaTarget(kafka_bootstrap)
    await _publish_tickets_with_a_redelivery(database_url, pool, kafka, tmp_path)
    printed = await _run_tail(kafka, tmp_path, "tail", max_tickets=3)
    assert len(printed) == 3, [t["ticketId"] for t in printed]
