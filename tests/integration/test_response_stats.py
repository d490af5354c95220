"""OpsService.GetResponseStats (SPEC R10): figures on scripted timelines, the SQL agreeing with the pure
definitions (escalation.domain.timeliness, docs/stats.md), and the bad-input table."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from escalation.auth import Identity, Role
from escalation.domain import timeliness
from escalation.domain.session import CloseReason, Kind
from escalation.services import directory, sessions, stats
from escalation.v1 import common_pb2, ops_pb2, ops_pb2_grpc
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.stats_harness import M, P, add_session, make_shop
from workers.deadlines import DeadlineConfig, DeadlineWorker

pytestmark = pytest.mark.integration

BASE = datetime(2025, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _request(
    start: datetime = BASE, end: datetime = BASE + DAY, merchant_id: str = "shop", agent_id: str = ""
) -> ops_pb2.GetResponseStatsRequest:
    return ops_pb2.GetResponseStatsRequest(
        merchant_id=merchant_id, agent_id=agent_id, start_time=_ts(start), end_time=_ts(end)
    )


async def _scripted_day(pool: asyncpg.Pool) -> None:
    """The timeline docs/stats.md walks through; seconds are relative to each session's open time."""
    await make_shop(pool)
    h = timedelta(hours=1)
    resolved, escalated, timeout = CloseReason.RESOLVED, CloseReason.PLATFORM_ESCALATED, CloseReason.MERCHANT_TIMEOUT
    # S1 a1: replies at 2:59 and 0:30 -> answered within 3 minutes.
    await add_session(
        pool, agent_id="a1", open_time=BASE + h, messages=[(P, 0), (M, 179), (P, 200), (M, 230)], close=(resolved, 600)
    )
    # S2 a1: reply at 3:01 -> late; escalated (a ticket).
    await add_session(pool, agent_id="a1", open_time=BASE + 2 * h, messages=[(P, 0), (M, 181)], close=(escalated, 600))
    # S3 a2: three platform messages, one reply 90 s after the first -> three answers of 90 s each.
    await add_session(
        pool,
        agent_id="a2",
        open_time=BASE + 3 * h,
        messages=[(P, 0), (P, 30), (P, 60), (M, 90), (P, 100), (M, 120)],
        close=(resolved, 300),
    )
    # S4 a2: never answered; the deadline ended it (a ticket).
    await add_session(pool, agent_id="a2", open_time=BASE + 4 * h, messages=[(P, 0)], close=(timeout, 180))
    # S5 a1: the follow-up at 100 s is answered 100 s later, but the platform has waited 200 s: both late.
    await add_session(
        pool, agent_id="a1", open_time=BASE + 5 * h, messages=[(P, 0), (P, 100), (M, 200)], close=(resolved, 300)
    )
    # S6 a1: opened before the window, answered inside it -> not counted.
    await add_session(
        pool, agent_id="a1", open_time=BASE - timedelta(minutes=1), messages=[(P, 0), (M, 90)], close=(resolved, 120)
    )
    # S7 a2: opened in the window's last minute, answered 2 minutes later, after end_time -> counted.
    await add_session(
        pool,
        agent_id="a2",
        open_time=BASE + DAY - timedelta(minutes=1),
        messages=[(P, 0), (M, 120)],
        close=(resolved, 130),
    )
    # S8 a1: the platform closed it 60 s after its question -> not rated (no chance to answer).
    await add_session(pool, agent_id="a1", open_time=BASE + 6 * h, messages=[(P, 0)], close=(resolved, 60))
    # S9 a1: opened at end_time -> not counted.
    await add_session(pool, agent_id="a1", open_time=BASE + DAY, messages=[(P, 0), (M, 500)], close=(resolved, 600))


def _seconds(d: timedelta) -> float:
    return d.total_seconds()


async def test_stats_on_a_scripted_day_equal_the_hand_computed_figures(pool: asyncpg.Pool) -> None:
    await _scripted_day(pool)
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        got = await ops.GetResponseStats(_request(), metadata=OPS)
    assert (got.merchant_id, got.agent_id) == ("shop", "")
    assert (got.start_time.ToDatetime(UTC), got.end_time.ToDatetime(UTC)) == (BASE, BASE + DAY)
    assert got.compute_time.ToDatetime(UTC) > BASE + DAY
    # S1 S2 S3 S4 S5 S7 S8; S8 is not rated; S1 S3 S7 were answered within 3 minutes.
    assert (got.sessions, got.sessions_rated, got.sessions_answered_in_3m) == (7, 6, 3)
    assert got.session_reply_rate_3m == pytest.approx(3 / 6)
    # Messages: S1 2, S2 1, S3 4, S4 1, S5 2, S7 1, S8 1 (not rated); in time: S1 2, S3 4, S7 1.
    assert (got.platform_messages, got.platform_messages_rated, got.platform_messages_answered_in_3m) == (12, 11, 7)
    assert got.message_reply_rate_3m == pytest.approx(7 / 11)
    # Answered: S1 179+30, S2 181, S3 3x90+20, S5 2x200, S7 120 = 1200 s over 10 messages.
    assert got.platform_messages_answered == 10
    assert _seconds(got.average_response.ToTimedelta()) == 120.0
    # First responses: S1 179, S2 181, S3 90, S5 200, S7 120 = 770 s over 5 sessions.
    assert got.sessions_answered == 5
    assert _seconds(got.average_first_response.ToTimedelta()) == 154.0
    assert (got.timeouts, got.tickets) == (1, 2)


async def test_per_agent_figures_cover_only_the_sessions_assigned_to_that_agent(pool: asyncpg.Pool) -> None:
    await _scripted_day(pool)
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        a1 = await ops.GetResponseStats(_request(agent_id="a1"), metadata=OPS)
        a2 = await ops.GetResponseStats(_request(agent_id="a2"), metadata=OPS)
        main = await ops.GetResponseStats(_request(agent_id="shop-main"), metadata=OPS)
    # a1: S1 S2 S5 S8.
    assert a1.agent_id == "a1"
    assert (a1.sessions, a1.sessions_rated, a1.sessions_answered_in_3m) == (4, 3, 1)
    assert (a1.platform_messages, a1.platform_messages_rated, a1.platform_messages_answered_in_3m) == (6, 5, 2)
    assert _seconds(a1.average_response.ToTimedelta()) == 158.0  # (209 + 181 + 400) / 5
    assert a1.average_first_response.ToTimedelta() == timedelta(microseconds=186_666_667)  # (179 + 181 + 200) / 3
    assert (a1.timeouts, a1.tickets) == (0, 1)
    # a2: S3 S4 S7.
    assert (a2.sessions, a2.sessions_rated, a2.sessions_answered_in_3m) == (3, 3, 2)
    assert (a2.platform_messages, a2.platform_messages_rated, a2.platform_messages_answered_in_3m) == (6, 6, 5)
    assert _seconds(a2.average_response.ToTimedelta()) == 82.0  # (290 + 120) / 5
    assert _seconds(a2.average_first_response.ToTimedelta()) == 105.0  # (90 + 120) / 2
    assert (a2.timeouts, a2.tickets) == (1, 1)
    # An agent with no sessions: zeros, and no averages at all rather than a misleading 0 s.
    assert (main.sessions, main.sessions_rated, main.session_reply_rate_3m, main.message_reply_rate_3m) == (0, 0, 0, 0)
    assert not main.HasField("average_response")
    assert not main.HasField("average_first_response")


async def test_open_sessions_are_judged_at_the_database_clock(pool: asyncpg.Pool) -> None:
    await make_shop(pool)
    now = await pool.fetchval("SELECT clock_timestamp()")
    # Waiting 60 s: pending, not rated. Waiting 200 s: already missed, whatever happens next.
    await add_session(pool, open_time=now - timedelta(seconds=60), messages=[(P, 0)])
    await add_session(pool, open_time=now - timedelta(seconds=200), messages=[(P, 0)])
    # Answered in 20 s, then a new question 30 s ago: one rated message, the session still pending.
    await add_session(pool, open_time=now - timedelta(seconds=300), messages=[(P, 0), (M, 20), (P, 270)])
    async with running_server(pool) as channel:
        got = await ops_pb2_grpc.OpsServiceStub(channel).GetResponseStats(
            _request(now - timedelta(hours=1), now + timedelta(hours=1)), metadata=OPS
        )
    assert (got.sessions, got.sessions_rated, got.sessions_answered_in_3m) == (3, 1, 0)
    assert (got.platform_messages, got.platform_messages_rated, got.platform_messages_answered_in_3m) == (4, 2, 1)


async def test_only_human_replies_count_not_reminders_read_receipts_or_closing_events(pool: asyncpg.Pool) -> None:
    """A session the deadline worker ends after a reminder and a read receipt: never answered."""
    await make_shop(pool, agents=("a1",))
    await directory.set_reception_agents(pool, directory.MerchantScope("shop", Identity("ops", Role.OPS)), ["a1"])
    policy = sessions.SessionPolicy(remind_before=timedelta(seconds=0.5), reply_timeout_override=1.0)
    content = common_pb2.MessageContent(text=common_pb2.Text(body="Ship today?")).SerializeToString()
    opened = await sessions.open_session(
        pool,
        Identity("pa-1", Role.PLATFORM),
        sessions.OpenRequest("r-1", b"h", "shop", "REFUND", None, [sessions.NewMessage(Kind.TEXT, content)]),
        policy,
    )
    sid = opened.session["session_id"]
    await sessions.mark_read(pool, Identity("a1", Role.MERCHANT, "shop"), sid, 1)
    worker = DeadlineWorker(pool, DeadlineConfig(policy=policy))
    due = await pool.fetchrow("SELECT remind_time, reply_deadline FROM sessions WHERE session_id = $1", sid)
    assert due is not None
    reminded = await worker.run_once(now=due["remind_time"])
    ended = await worker.run_once(now=due["reply_deadline"])
    assert (reminded.reminded, reminded.ended, ended.reminded, ended.ended) == (1, 0, 0, 1)
    kinds = {r["kind"] for r in await pool.fetch("SELECT kind FROM merchant_events WHERE session_id = $1", sid)}
    assert {"reply_reminder", "session_closed"} <= kinds, kinds
    open_time = opened.session["open_time"]
    window = stats.Window(open_time - timedelta(minutes=1), open_time + timedelta(minutes=1))
    f, _ = await stats.response_stats(pool, "shop", window)
    assert (f.sessions, f.sessions_rated, f.sessions_answered_in_3m, f.sessions_answered) == (1, 1, 0, 0)
    assert (f.platform_messages_rated, f.platform_messages_answered, f.timeouts, f.tickets) == (1, 0, 1, 1)


# --- the SQL agrees with the pure definitions ------------------------------------------------------


async def test_sql_figures_match_the_pure_definitions_on_random_timelines(pool: asyncpg.Pool) -> None:
    rng = random.Random(10)
    await make_shop(pool, "shop", ("a1", "a2", "a3"))
    await make_shop(pool, "other", ("a1",))
    as_of = BASE + timedelta(hours=30)
    timelines: dict[tuple[str, str], list[timeliness.Timeline]] = {}
    for _ in range(60):
        merchant_id = rng.choice(["shop", "shop", "other"])
        agent_id = rng.choice(["a1", "a2", "a3"]) if merchant_id == "shop" else "a1"
        open_time = as_of - timedelta(seconds=rng.choice([rng.uniform(0, 400), rng.uniform(0, 40 * 3600)]))
        messages, offset = [(P, 0.0)], 0.0
        for _ in range(rng.randint(0, 7)):
            offset += rng.choice([rng.uniform(0, 60), rng.uniform(170, 190), 180.0, rng.uniform(0, 600)])
            messages.append((rng.choice([P, M]), round(offset, 6)))
        if open_time + timedelta(seconds=offset) > as_of:
            messages = [(s, t) for s, t in messages if open_time + timedelta(seconds=t) <= as_of] or [(P, 0.0)]
            offset = messages[-1][1]
        close = None
        if rng.random() < 0.7:
            close_at = offset + rng.choice([0.5, rng.uniform(0, 400)])
            close = (rng.choice(list(CloseReason)), close_at)
            if open_time + timedelta(seconds=close_at) > as_of:
                close = None
        timeline = await add_session(
            pool, merchant_id=merchant_id, agent_id=agent_id, open_time=open_time, messages=messages, close=close
        )
        timelines.setdefault((merchant_id, agent_id), []).append(timeline)

    def pure(merchant_id: str, agent_id: str | None) -> timeliness.Figures:
        return timeliness.total(
            [
                t
                for (m, a), ts in timelines.items()
                if m == merchant_id and agent_id in (None, a)
                for t in ts
                if as_of - timedelta(hours=24) <= t.messages[0].send_time < as_of
            ],
            as_of,
        )

    window = stats.Window(as_of - timedelta(hours=24), as_of)
    async with pool.acquire() as conn:
        both = await stats.figures_by_merchant(conn, ["shop", "other", "nobody"], window, as_of=as_of)
        assert both == {"shop": pure("shop", None), "other": pure("other", None), "nobody": timeliness.Figures()}
        for agent_id in ("a1", "a2", "a3"):
            scoped = stats.Window(window.start, window.end, agent_id)
            got = await stats.figures_by_merchant(conn, ["shop"], scoped, as_of=as_of)
            assert got["shop"] == pure("shop", agent_id), agent_id
    assert both["shop"].sessions > 10
    assert both["shop"].sessions_rated < both["shop"].sessions, "some sessions should be pending or cut off"
    assert 0 < both["shop"].platform_messages_answered_in_3m < both["shop"].platform_messages_rated


# --- bad input -----------------------------------------------------------------------------------

OK = _request()
_EMPTY = timestamp_pb2.Timestamp


def _with(
    merchant_id: str = "shop",
    agent_id: str = "",
    start_time: timestamp_pb2.Timestamp | None = OK.start_time,
    end_time: timestamp_pb2.Timestamp | None = OK.end_time,
) -> ops_pb2.GetResponseStatsRequest:
    """OK with some fields changed; None leaves a timestamp unset."""
    request = ops_pb2.GetResponseStatsRequest(merchant_id=merchant_id, agent_id=agent_id)
    if start_time is not None:
        request.start_time.CopyFrom(start_time)
    if end_time is not None:
        request.end_time.CopyFrom(end_time)
    return request


BAD_INPUT: list[tuple[str, ops_pb2.GetResponseStatsRequest, set[str]]] = [
    ("merchant_id missing", _with(merchant_id=""), {"merchant_id"}),
    ("merchant_id malformed", _with(merchant_id="shop a"), {"merchant_id"}),
    ("merchant_id too long", _with(merchant_id="m" * 65), {"merchant_id"}),
    ("agent_id malformed", _with(agent_id="agent/1"), {"agent_id"}),
    ("start_time missing", _with(start_time=None), {"start_time"}),
    ("end_time missing", _with(end_time=None), {"end_time"}),
    ("both times missing", _with(start_time=None, end_time=None), {"start_time", "end_time"}),
    ("end equals start", _with(end_time=_ts(BASE)), {"end_time"}),
    ("end before start", _with(end_time=_ts(BASE - timedelta(seconds=1))), {"end_time"}),
    ("window over 31 days", _with(end_time=_ts(BASE + timedelta(days=31, microseconds=1))), {"end_time"}),
    ("start before year 1", _with(start_time=_EMPTY(seconds=-62135596801)), {"start_time"}),
    ("end after year 9999", _with(end_time=_EMPTY(seconds=253402300800)), {"end_time"}),
    ("negative nanos", _with(start_time=_EMPTY(seconds=BASE.second, nanos=-1)), {"start_time"}),
    ("nanos too large", _with(end_time=_EMPTY(seconds=0, nanos=1_000_000_000)), {"end_time"}),
    (
        "everything wrong",
        _with(merchant_id="", agent_id="a b", start_time=None, end_time=_EMPTY(seconds=-62135596801)),
        {"merchant_id", "agent_id", "start_time", "end_time"},
    ),
]


async def test_get_response_stats_bad_input_names_every_bad_field(pool: asyncpg.Pool) -> None:
    await make_shop(pool)
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        for name, request, fields in BAD_INPUT:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ops.GetResponseStats(request, metadata=OPS)
            got = failure(caught.value)
            assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS"), name
            assert set(got.field_violations) == fields, name
        # Just inside the limits.
        longest = _with(end_time=_ts(BASE + timedelta(days=31)))
        assert (await ops.GetResponseStats(longest, metadata=OPS)).sessions == 0
        extremes = _with(start_time=_EMPTY(seconds=253402300799 - 86400), end_time=_EMPTY(seconds=253402300799))
        assert (await ops.GetResponseStats(extremes, metadata=OPS)).sessions == 0


async def test_unknown_merchant_or_agent_is_not_found_and_other_roles_are_denied(pool: asyncpg.Pool) -> None:
    await make_shop(pool)
    await make_shop(pool, "other", ("b1",))
    async with running_server(pool) as channel:
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        cases = [
            (_with(merchant_id="nobody"), OPS, grpc.StatusCode.NOT_FOUND, "MERCHANT_NOT_FOUND"),
            (_with(agent_id="nobody"), OPS, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
            (_with(agent_id="b1"), OPS, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
            (OK, bearer("merchant", "shop-main", "shop"), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
            (OK, bearer("platform_supervisor", "sup-1"), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
        ]
        for request, metadata, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ops.GetResponseStats(request, metadata=metadata)
            got = failure(caught.value)
            assert (got.code, got.reason) == (code, reason), (request, metadata)
