"""The one-round-trip write functions (migrations/0010) agree with the Python specification.

- R2: the pick made in SQL is ``domain.assignment.choose`` for every tie-break — exact saturation
  (1/3 = 2/6), least recently assigned (never assigned first), then agent id by code point — also
  when two pools (two replicas' connections) open sessions concurrently.
- The protobuf bytes SQL writes (responses and event payloads) are byte for byte what
  ``services/records.py`` + ``SerializeToString()`` produce from the same rows, and the tickets SQL
  writes when a session ends (platform close or deadline) are ``services/tickets.py build()``'s.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from escalation.auth import Identity, Role
from escalation.domain import assignment
from escalation.domain.session import CloseReason, Kind
from escalation.domain.tickets import transcript_digest
from escalation.services import directory, records, sessions, tickets
from escalation.store import db, session_writes
from escalation.v1 import common_pb2, events_pb2, merchant_pb2
from workers.deadlines import DeadlineConfig, DeadlineWorker

pytestmark = pytest.mark.integration

PLATFORM = Identity("pa-1", Role.PLATFORM)
OPS = Identity("ops", Role.OPS)
POLICY = sessions.SessionPolicy()
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
Agents = dict[str, tuple[int, int, datetime | None]]  # agent id → (open sessions, capacity, last assigned)


def _text(body: str) -> sessions.NewMessage:
    return sessions.NewMessage(
        Kind.TEXT, common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString(deterministic=True)
    )


async def _shop(pool: asyncpg.Pool, merchant_id: str, capacities: dict[str, int]) -> None:
    await directory.upsert_merchant(
        pool, merchant_id=merchant_id, display_name="", main_account_id=f"{merchant_id}-main", disabled=False
    )
    target = directory.MerchantScope(merchant_id, OPS)
    for agent_id, capacity in capacities.items():
        await directory.upsert_agent(
            pool, target, agent_id=agent_id, display_name="", im_permission=True, disabled=False, capacity=capacity
        )
    await directory.set_reception_agents(pool, target, list(capacities))


async def _open(pool: asyncpg.Pool, merchant_id: str) -> common_pb2.Session:
    opened = await sessions.open_session(
        pool,
        PLATFORM,
        sessions.OpenRequest(f"r-{uuid.uuid4()}", b"h", merchant_id, "REFUND", None, [_text("ship today?")]),
        POLICY,
    )
    return records.opened(opened.session_pb, opened.message_pbs).session


def _candidates(decision: common_pb2.AssignmentDecision) -> list[assignment.Candidate]:
    """The state a decision read, as the pure rule's input."""
    return [
        assignment.Candidate(
            c.agent_id,
            c.open_sessions,
            c.capacity,
            c.last_assign_time.ToDatetime(tzinfo=UTC) if c.HasField("last_assign_time") else None,
        )
        for c in decision.candidates
    ]


async def _state(pool: asyncpg.Pool, merchant_id: str) -> list[assignment.Candidate]:
    rows = await pool.fetch(
        "SELECT agent_id, open_sessions, capacity, last_assign_time FROM agents WHERE merchant_id = $1 "
        "AND agent_id <> $2",
        merchant_id,
        f"{merchant_id}-main",
    )
    return [assignment.Candidate(r["agent_id"], r["open_sessions"], r["capacity"], r["last_assign_time"]) for r in rows]


async def _set(pool: asyncpg.Pool, merchant_id: str, agents: Agents) -> None:
    """Puts each agent at (open sessions, capacity, last assigned) directly (the pick reads only these)."""
    for agent_id, (open_sessions, capacity, last) in agents.items():
        await pool.execute(
            "UPDATE agents SET open_sessions = $3, capacity = $4, last_assign_time = $5 "
            "WHERE merchant_id = $1 AND agent_id = $2",
            merchant_id,
            agent_id,
            open_sessions,
            capacity,
            last,
        )


# Each case: the agents' (open, capacity, last assigned) and the winner the rule names.
TIE_BREAKS: dict[str, tuple[Agents, str]] = {
    "lower saturation wins whatever the count": ({"a": (5, 20, None), "b": (1, 2, None), "c": (3, 9, None)}, "a"),
    "1/3 ties 2/6 exactly; then the least recently assigned": (
        {"a": (1, 3, T0 + timedelta(seconds=1)), "b": (2, 6, T0), "c": (1, 2, None)},
        "b",
    ),
    "equal saturation: never assigned goes first": (
        {"a": (2, 4, T0), "b": (1, 2, None), "c": (3, 6, T0 - timedelta(days=1))},
        "b",
    ),
    "one microsecond apart decides": (
        {"a": (0, 10, T0 + timedelta(microseconds=1)), "b": (0, 1, T0), "c": (0, 50, T0 + timedelta(seconds=9))},
        "b",
    ),
    "equal saturation and time: agent id by code point (B < a < b)": (
        {"b": (1, 5, T0), "a": (2, 10, T0), "B": (10, 50, T0)},
        "B",
    ),
    "equal saturation, never assigned: agent id": ({"b": (0, 5, None), "a": (0, 10, None), "c": (0, 1, None)}, "a"),
    "49/50 loses to 48/49 (2401 > 2400)": ({"a": (49, 50, None), "b": (48, 49, T0)}, "b"),
    "full agents still get sessions, least saturated first": ({"a": (50, 50, None), "b": (4, 3, None)}, "a"),
}


@pytest.mark.parametrize("case", list(TIE_BREAKS), ids=list(TIE_BREAKS))
async def test_sql_pick_follows_every_tie_break_of_the_pure_rule(pool: asyncpg.Pool, case: str) -> None:
    agents, winner = TIE_BREAKS[case]
    await _shop(pool, "shop", dict.fromkeys(agents, 10))
    await _set(pool, "shop", agents)
    state = await _state(pool, "shop")
    assert assignment.choose(state).agent_id == winner, "the case itself follows the rule"

    session = await _open(pool, "shop")

    assert session.assigned_agent_id == winner
    assert sorted(_candidates(session.assignment), key=lambda c: c.agent_id) == sorted(state, key=lambda c: c.agent_id)
    stored = await pool.fetchrow(
        "SELECT open_sessions, last_assign_time FROM agents WHERE merchant_id = 'shop' AND agent_id = $1", winner
    )
    assert stored is not None
    assert stored["open_sessions"] == agents[winner][0] + 1, "the pick and the increment are one step"


async def test_sql_pick_agrees_with_the_pure_rule_on_random_shops(pool: asyncpg.Pool) -> None:
    ids = ["a", "B", "b", "a-1", "Z", "é"]
    await _shop(pool, "shop", dict.fromkeys(ids, 10))
    rng = random.Random(13)
    times = [None, T0, T0 + timedelta(microseconds=1), T0 + timedelta(minutes=1)]
    for round_ in range(40):
        agents: Agents = {}
        for agent_id in ids:
            capacity = rng.choice([1, 2, 3, 4, 6, 10, 12, 49, 50])
            agents[agent_id] = (rng.randrange(0, 2 * capacity + 1), capacity, rng.choice(times))
        await _set(pool, "shop", agents)
        expected = assignment.choose(await _state(pool, "shop")).agent_id
        session = await _open(pool, "shop")
        assert session.assigned_agent_id == expected, f"round {round_}: {agents}"
        assert assignment.choose(_candidates(session.assignment)).agent_id == expected


@pytest.fixture
async def second_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Another replica's connections to the same database."""
    other = await db.create_pool(database_url, min_size=1, max_size=8, command_timeout=30)
    try:
        yield other
    finally:
        await other.close()


async def test_concurrent_opens_from_two_pools_each_follow_the_pure_rule(
    pool: asyncpg.Pool, second_pool: asyncpg.Pool
) -> None:
    # Capacities with equal ratios (3/6, 1/2), so saturation ties, and then recency ties, are common.
    capacities = {"a": 3, "b": 6, "B": 2, "c": 6, "d": 1}
    await _shop(pool, "busy", capacities)
    count = 90
    opened = await asyncio.gather(*(_open((pool, second_pool)[n % 2], "busy") for n in range(count)))

    totals = []
    for session in opened:
        state = _candidates(session.assignment)
        assert assignment.choose(state).agent_id == session.assigned_agent_id, session.assignment
        totals.append(sum(c.open_sessions for c in state))
    assert sorted(totals) == list(range(count)), "two opens read the same shop state"
    rows = await pool.fetch(
        "SELECT a.agent_id, a.open_sessions, count(s.session_id) AS sessions FROM agents a "
        "LEFT JOIN sessions s ON s.merchant_id = a.merchant_id AND s.assigned_agent_id = a.agent_id "
        "WHERE a.merchant_id = 'busy' GROUP BY a.agent_id, a.open_sessions"
    )
    assert all(r["open_sessions"] == r["sessions"] for r in rows), [dict(r) for r in rows]
    assert sum(Counter(s.assigned_agent_id for s in opened).values()) == count


# --- protobuf bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**31, 2**32, 2**56, 2**63 - 1])
async def test_sql_varints_are_protobufs(pool: asyncpg.Pool, value: int) -> None:
    expected = common_pb2.Message(seq=value).SerializeToString()
    assert await pool.fetchval("SELECT pb_uint_field(2, $1)", value) == expected


@pytest.mark.parametrize(
    "at",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 12, 1, 6, 52, 35, tzinfo=UTC),
        datetime(2026, 12, 1, 6, 52, 35, 999999, tzinfo=UTC),
        datetime(2099, 2, 28, 23, 59, 59, 500000, tzinfo=UTC),
    ],
)
async def test_sql_timestamps_are_protobufs(pool: asyncpg.Pool, at: datetime) -> None:
    expected = common_pb2.Message(send_time=records.timestamp(at)).SerializeToString()
    assert await pool.fetchval("SELECT pb_timestamp_field(6, $1)", at) == expected


async def test_sql_saturations_are_protobuf_doubles(pool: asyncpg.Pool) -> None:
    for open_sessions in range(0, 52, 7):
        for capacity in (1, 3, 6, 7, 10, 49, 50):
            expected = common_pb2.AssignmentCandidate(saturation=open_sessions / capacity).SerializeToString()
            got = await pool.fetchval("SELECT pb_double_field(4, $1::int::float8 / $2)", open_sessions, capacity)
            assert got == expected, (open_sessions, capacity)


async def test_sql_messages_sessions_and_events_are_what_records_builds(pool: asyncpg.Pool) -> None:
    await _shop(pool, "shop", {"agent": 10})
    merchant = Identity("agent", Role.MERCHANT, "shop")
    await pool.execute(
        "INSERT INTO reply_templates (template_id, merchant_id, title, body) "
        "VALUES ('tpl', 'shop', 't', 'Yes, today ✓')"
    )
    card = common_pb2.MessageContent(
        order_card=common_pb2.OrderCard(
            order_id="o-1",
            status="PAID",
            paid_amount=common_pb2.Money(amount_minor=12345, currency="CNY"),
            items=[common_pb2.OrderItem(product_id="p", name="茶杯 🍵", quantity=2)],
        )
    ).SerializeToString(deterministic=True)
    opened = await sessions.open_session(
        pool,
        PLATFORM,
        sessions.OpenRequest(
            "r-1",
            b"h",
            "shop",
            "NEGOTIATED_REFUND",
            "order-9",
            [_text("一"), sessions.NewMessage(Kind.ORDER_CARD, card)],
        ),
        POLICY,
    )
    sid = opened.session["session_id"]
    image = common_pb2.MessageContent(image=common_pb2.Image(url="https://x.test/a.png", width=640, height=1))
    await sessions.add_message(
        pool, merchant, sid, sessions.NewMessage(Kind.IMAGE, image.SerializeToString(deterministic=True), "m-1"), POLICY
    )
    await sessions.add_message(pool, merchant, sid, sessions.NewMessage(Kind.TEXT, b"", "m-2", "tpl"), POLICY)
    await sessions.add_message(pool, PLATFORM, sid, _text("and tomorrow?"), POLICY)

    rows = await pool.fetch("SELECT m, message_pb(m) AS pb FROM messages m WHERE session_id = $1 ORDER BY seq", sid)
    assert len(rows) == 5
    for row in rows:
        assert row["pb"] == records.message(row["m"]).SerializeToString(), row["m"]
    session = await pool.fetchrow(
        "SELECT s.*, t.ticket_id, session_pb(s, t.ticket_id) AS pb FROM sessions s "
        "LEFT JOIN tickets t ON t.session_id = s.session_id WHERE s.session_id = $1",
        sid,
    )
    assert session is not None
    assert session["pb"] == records.session(session).SerializeToString()

    # The events: every payload is the MerchantEvent store/events.py would have stored for the row.
    by_seq = {r["m"]["seq"]: records.message(r["m"]) for r in rows}
    payloads = await pool.fetch("SELECT kind, payload FROM merchant_events WHERE session_id = $1 ORDER BY cursor", sid)
    assert [p["kind"] for p in payloads] == ["session_assigned", *["message_added"] * 5]
    assigned = merchant_pb2.MerchantEvent.FromString(payloads[0]["payload"])
    assert assigned.session_assigned.session == records.opened(opened.session_pb, opened.message_pbs).session
    assert assigned.session_assigned.session.last_seq == 2
    for seq, payload in enumerate(payloads[1:], start=1):
        expected = merchant_pb2.MerchantEvent(
            session_id=str(sid), message_added=merchant_pb2.MessageAdded(message=by_seq[seq])
        )
        assert payload["payload"] == expected.SerializeToString(), seq
    expected_assigned = merchant_pb2.MerchantEvent(
        session_id=str(sid), session_assigned=merchant_pb2.SessionAssigned(session=assigned.session_assigned.session)
    )
    assert payloads[0]["payload"] == expected_assigned.SerializeToString()


async def test_every_enum_value_of_a_session_is_rendered_as_records_does(pool: asyncpg.Pool) -> None:
    await _shop(pool, "shop", {"agent": 50})
    categories: Sequence[str] = [n.removeprefix("CATEGORY_") for n in common_pb2.Category.keys()[1:]]
    for n, category in enumerate(categories):
        await sessions.open_session(
            pool, PLATFORM, sessions.OpenRequest(f"c-{n}", b"h", "shop", category, None, [_text("x")]), POLICY
        )
    for reason in CloseReason:  # every reason there is: a new one needs its number in pb_close_reason
        opened = await sessions.open_session(
            pool, PLATFORM, sessions.OpenRequest(f"e-{reason.value}", b"h", "shop", "REFUND", "o", [_text("x")]), POLICY
        )
        await pool.execute(
            "UPDATE sessions SET state = 'ENDED', close_reason = $2, close_time = clock_timestamp(), "
            "reply_deadline = NULL, remind_time = NULL WHERE session_id = $1",
            opened.session["session_id"],
            reason.value,
        )
    rows = await pool.fetch(
        "SELECT s.*, t.ticket_id, session_pb(s, t.ticket_id) AS pb FROM sessions s "
        "LEFT JOIN tickets t ON t.session_id = s.session_id"
    )
    assert len(rows) == len(categories) + len(CloseReason)
    for row in rows:
        assert row["pb"] == records.session(row).SerializeToString(), dict(row)


# --- endings: tickets, outbox rows and events ----------------------------------------------------------


@pytest.mark.parametrize("micros", [0, 1, 1000, 120000, 500000, 123456, 999999])
async def test_sql_json_times_are_what_the_digest_covers(pool: asyncpg.Pool, micros: int) -> None:
    at = datetime(2026, 12, 1, 6, 52, 35, micros, tzinfo=UTC)
    expected = records.timestamp(at)
    assert expected is not None
    assert await pool.fetchval("SELECT pb_json_time($1)", at) == expected.ToJsonString()


async def _conversation(pool: asyncpg.Pool, request_id: str) -> uuid.UUID:
    """A session with every kind of message, both senders, a template reply and a client_msg_id."""
    merchant = Identity("agent", Role.MERCHANT, "shop")
    card = common_pb2.MessageContent(
        order_card=common_pb2.OrderCard(order_id="o-1", status="PAID", items=[common_pb2.OrderItem(name="茶杯")])
    ).SerializeToString(deterministic=True)
    opened = await sessions.open_session(
        pool,
        PLATFORM,
        sessions.OpenRequest(
            request_id, b"h", "shop", "LOGISTICS", None, [_text("ship?"), sessions.NewMessage(Kind.ORDER_CARD, card)]
        ),
        POLICY,
    )
    sid: uuid.UUID = opened.session["session_id"]
    emoji = common_pb2.MessageContent(emoji=common_pb2.Emoji(code="👍🏽")).SerializeToString(deterministic=True)
    await sessions.add_message(pool, merchant, sid, sessions.NewMessage(Kind.EMOJI, emoji, "e-1"), POLICY)
    await sessions.add_message(pool, merchant, sid, sessions.NewMessage(Kind.TEXT, b"", None, "tpl"), POLICY)
    await sessions.add_message(pool, PLATFORM, sid, _text("tomorrow then?"), POLICY)
    return sid


async def _assert_ending_agrees(pool: asyncpg.Pool, sid: uuid.UUID, reason: CloseReason) -> None:
    """The ticket, outbox row and events the SQL wrote are what tickets.build() and store/events.py say."""
    ended = await pool.fetchrow("SELECT * FROM sessions WHERE session_id = $1", sid)
    assert ended is not None
    transcript = await pool.fetch("SELECT * FROM messages WHERE session_id = $1 ORDER BY seq", sid)
    stored = await pool.fetchrow("SELECT * FROM tickets WHERE session_id = $1", sid)
    assert stored is not None
    spec = tickets.build(ended, transcript, reason, POLICY.ticket_sla)
    expected = events_pb2.ServiceTicket.FromString(spec.payload)
    expected.ticket_id = str(stored["ticket_id"])
    assert stored["payload"] == expected.SerializeToString(), "the ticket SQL wrote differs from tickets.build()"
    assert (stored["transcript_digest"], stored["handle_by"], stored["reason"], stored["create_time"]) == (
        spec.digest,
        spec.handle_by,
        reason.value,
        ended["close_time"],
    )
    assert stored["transcript_digest"] == transcript_digest(expected.transcript)
    outbox = await pool.fetchrow("SELECT * FROM outbox WHERE event_id = $1", str(stored["ticket_id"]))
    assert outbox is not None
    assert (outbox["topic"], bytes(outbox["message_key"]), outbox["content_type"], outbox["payload"]) == (
        tickets.TOPIC,
        b"shop",
        tickets.CONTENT_TYPE,
        stored["payload"],
    )
    session = records.session(
        await pool.fetchrow(
            "SELECT s.*, t.ticket_id FROM sessions s JOIN tickets t USING (session_id) WHERE s.session_id = $1", sid
        )
    )
    closing = await pool.fetch(
        "SELECT kind, payload FROM merchant_events WHERE session_id = $1 AND kind IN ('session_closed', "
        "'ticket_created') ORDER BY cursor",
        sid,
    )
    assert [e["kind"] for e in closing] == ["session_closed", "ticket_created"]
    assert [e["payload"] for e in closing] == [
        merchant_pb2.MerchantEvent(
            session_id=str(sid), session_closed=merchant_pb2.SessionClosed(session=session)
        ).SerializeToString(),
        merchant_pb2.MerchantEvent(
            session_id=str(sid),
            ticket_created=merchant_pb2.TicketCreated(
                session_id=str(sid), ticket_id=session.ticket_id, handle_by=records.timestamp(spec.handle_by)
            ),
        ).SerializeToString(),
    ]
    assert await pool.fetchval("SELECT open_sessions FROM agents WHERE agent_id = 'agent'") == 0


async def test_platform_and_deadline_endings_write_what_the_python_rule_builds(pool: asyncpg.Pool) -> None:
    await _shop(pool, "shop", {"agent": 10})
    await pool.execute(
        "INSERT INTO reply_templates (template_id, merchant_id, title, body) VALUES ('tpl', 'shop', 't', 'Sure.')"
    )
    escalated = await _conversation(pool, "r-escalated")
    closed = await sessions.close_session(pool, PLATFORM, escalated, CloseReason.PLATFORM_ESCALATED, POLICY)
    assert records.closed_session(closed).ticket_id == str(closed["ticket_id"])
    await _assert_ending_agrees(pool, escalated, CloseReason.PLATFORM_ESCALATED)

    timed_out = await _conversation(pool, "r-timeout")
    deadline = await pool.fetchval("SELECT reply_deadline FROM sessions WHERE session_id = $1", timed_out)
    assert (await DeadlineWorker(pool, DeadlineConfig(policy=POLICY)).run_once(now=deadline)).ended == 1
    await _assert_ending_agrees(pool, timed_out, CloseReason.MERCHANT_TIMEOUT)


async def test_write_functions_return_the_merchant_and_the_reply_timeout_in_force(pool: asyncpg.Pool) -> None:
    """What a caller needs after the commit (e.g. to wake whoever waits for the merchant's news)."""
    await _shop(pool, "shop", {"agent": 10})
    await pool.execute("UPDATE reception_settings SET reply_timeout_seconds = 150 WHERE merchant_id = 'shop'")
    for override, expected in ((None, 150.0), (2.5, 2.5)):
        policy = sessions.SessionPolicy(reply_timeout_override=override)
        async with pool.acquire() as conn:
            opened = await session_writes.open_session(
                conn=conn,
                platform_agent_id="pa-1",
                request_id=f"r-{override}",
                request_hash=b"h",
                merchant_id="shop",
                category="REFUND",
                order_id=None,
                kinds=["TEXT"],
                contents=[_text("x").content],
                rule_version=assignment.RULE_VERSION,
                presence_window=45.0,
                reply_timeout_override=override,
                remind_before=60.0,
            )
        assert opened["reply_timeout_seconds"] == expected
        sid = opened["opened_session"]["session_id"]
        sent = await sessions.add_message(pool, PLATFORM, sid, _text("y"), policy)
        assert (sent["merchant_id"], sent["reply_timeout_seconds"]) == ("shop", expected)
