"""SPEC R13 over gRPC against a real database: TransferSession, re-assignment when an agent stops
being eligible, and the assignment history in GetSession, WatchSession, events and tickets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest

from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    events_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text
from tests.integration.transfers_harness import (
    MAIN_ID,
    assert_counts_are_true,
    live,
    next_event,
    session_events,
    transfer,
)

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", MAIN_ID, "shop-a")
SUB1, SUB2, SUB3 = "shop-a-sub-1", "shop-a-sub-2", "shop-a-sub-3"
R = common_pb2.AssignmentReason


def sub(agent_id: str, shop: str = "shop-a") -> tuple[tuple[str, str]]:
    return bearer("merchant", agent_id, shop)


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        yield ch


@pytest.fixture
def platform(channel: grpc.aio.Channel) -> platform_pb2_grpc.PlatformServiceAsyncStub:
    return platform_pb2_grpc.PlatformServiceStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.MerchantAdminServiceAsyncStub:
    return admin_pb2_grpc.MerchantAdminServiceStub(channel)


@pytest.fixture
def merchant(channel: grpc.aio.Channel) -> merchant_pb2_grpc.MerchantServiceAsyncStub:
    return merchant_pb2_grpc.MerchantServiceStub(channel)


async def _open(
    platform: platform_pb2_grpc.PlatformServiceAsyncStub, merchant_id: str = "shop-a"
) -> common_pb2.Session:
    return (await platform.OpenSession(open_request(merchant_id), metadata=PLATFORM)).session


async def _upsert(admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub, agent_id: str, **flags: bool) -> None:
    agent = admin_pb2.Agent(agent_id=agent_id, im_permission=flags.get("im_permission", True))
    agent.disabled = flags.get("disabled", False)
    await admin.UpsertAgent(admin_pb2.UpsertAgentRequest(merchant_id="shop-a", agent=agent), metadata=OPS)


# --- transfer ------------------------------------------------------------------------------------


async def test_transfer_moves_the_count_keeps_messages_and_deadline_and_tells_both_agents_and_the_platform(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={SUB1: 10, SUB2: 10})
    opened = await _open(platform)
    old = opened.assigned_agent_id
    new = SUB2 if old == SUB1 else SUB1
    await platform.SendMessage(
        platform_pb2.SendMessageRequest(session_id=opened.session_id, content=text("Still there?")), metadata=PLATFORM
    )
    before = await platform.GetSession(platform_pb2.GetSessionRequest(session_id=opened.session_id), metadata=PLATFORM)
    watch = platform.WatchSession(platform_pb2.WatchSessionRequest(session_id=opened.session_id), metadata=PLATFORM)

    moved = await admin.TransferSession(transfer(opened.session_id, new), metadata=MAIN)

    assert moved.assigned_agent_id == new
    assert moved.reply_deadline == before.reply_deadline
    assert moved.reply_deadline.seconds > 0
    assert moved.last_seq == 2
    assert [(s.step, s.reason, s.from_agent_id, s.to_agent_id, s.actor_id) for s in moved.assignment_history] == [
        (0, R.ASSIGNMENT_REASON_OPENED, "", old, "pa-1"),
        (1, R.ASSIGNMENT_REASON_TRANSFERRED, old, new, MAIN_ID),
    ]
    assert moved.assignment_history[0].decision == opened.assignment
    assert not moved.assignment_history[1].HasField("decision")
    assert await assert_counts_are_true(pool, "shop-a") == {new: 1}
    # The platform sees the new assignee: GetSession, and WatchSession as it happens.
    seen = await platform.GetSession(platform_pb2.GetSessionRequest(session_id=opened.session_id), metadata=PLATFORM)
    assert seen.assigned_agent_id == new
    assert list(seen.assignment_history) == list(moved.assignment_history)
    async with asyncio.timeout(10):
        async for frame in watch:
            if frame.HasField("assignment_changed"):
                assert frame.assignment_changed == moved.assignment_history[1]
                break
    watch.cancel()
    # The old agent is told the session left and no longer sees it; the new one got SessionAssigned.
    stored = [(agent, e.WhichOneof("kind")) for agent, e in await session_events(pool, opened.session_id)]
    assert stored[-2:] == [(old, "session_unassigned"), (new, "session_assigned")]
    unassigned, assigned = (e for _, e in (await session_events(pool, opened.session_id))[-2:])
    assert unassigned.session_unassigned.step == moved.assignment_history[1]
    assert unassigned.session_unassigned.session.assigned_agent_id == new
    assert assigned.session_assigned.step == moved.assignment_history[1]
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await merchant.GetSession(platform_pb2.GetSessionRequest(session_id=opened.session_id), metadata=sub(old))
    assert failure(gone.value).reason == "SESSION_NOT_FOUND"
    listed = await merchant.ListMessages(
        platform_pb2.ListMessagesRequest(session_id=opened.session_id), metadata=sub(new)
    )
    assert [m.seq for m in listed.messages] == [1, 2]
    await merchant.Reply(
        merchant_pb2.ReplyRequest(session_id=opened.session_id, content=text("On it")), metadata=sub(new)
    )
    # The ticket carries every step.
    await platform.CloseSession(
        platform_pb2.CloseSessionRequest(
            session_id=opened.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
        ),
        metadata=PLATFORM,
    )
    payload = await pool.fetchval("SELECT payload FROM tickets WHERE session_id = $1::uuid", opened.session_id)
    ticket = events_pb2.ServiceTicket.FromString(payload)
    assert ticket.assigned_agent_id == new
    assert [(s.reason, s.from_agent_id, s.to_agent_id) for s in ticket.assignment_history] == [
        (R.ASSIGNMENT_REASON_OPENED, "", old),
        (R.ASSIGNMENT_REASON_TRANSFERRED, old, new),
    ]
    # The database encodes them (for whatever writes the ticket) as GetSession shows them, minus decisions.
    shown = list(moved.assignment_history)
    for step in shown:
        step.ClearField("decision")
    assert list(ticket.assignment_history) == shown
    assert ticket.assignment_history[0].step_time == seen.open_time
    assert ticket.SerializeToString() == payload, "the appended entries are what a serializer writes"
    assert await assert_counts_are_true(pool, "shop-a") == {}


async def test_connected_agents_hear_of_a_move_at_once(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    """SPEC R8/R13: the agent the session left gets SessionUnassigned, the one that takes it
    SessionAssigned with the step, the main account both; each on its own stream."""
    await make_shop(channel, agents={SUB1: 10, SUB2: 10})
    opened = await _open(platform)
    assert opened.assigned_agent_id == SUB1
    streams = {who: await live(pool, channel, sub(who)) for who in (SUB1, SUB2, MAIN_ID)}
    try:
        moved = await admin.TransferSession(transfer(opened.session_id, SUB2), metadata=MAIN)
        left, came = await next_event(streams[SUB1]), await next_event(streams[SUB2])
        assert left.WhichOneof("kind") == "session_unassigned"
        assert left.session_unassigned.step == moved.assignment_history[1]
        assert came.WhichOneof("kind") == "session_assigned"
        assert came.session_assigned.step == moved.assignment_history[1]
        assert came.session_assigned.session.assigned_agent_id == SUB2
        both = [await next_event(streams[MAIN_ID]) for _ in range(2)]
        assert [e.WhichOneof("kind") for e in both] == ["session_unassigned", "session_assigned"]
        # The next event of the session goes to its new agent only.
        await platform.SendMessage(
            platform_pb2.SendMessageRequest(session_id=opened.session_id, content=text("Hello?")), metadata=PLATFORM
        )
        assert (await next_event(streams[SUB2])).WhichOneof("kind") == "message_added"
        marker = await _open(platform)  # least saturated now: sub-1
        assert (await next_event(streams[SUB1])).session_id == marker.session_id
    finally:
        for call in streams.values():
            call.cancel()


@pytest.mark.parametrize(
    ("target", "flags", "code", "reason"),
    [
        (SUB3, {}, grpc.StatusCode.FAILED_PRECONDITION, "AGENT_NOT_ELIGIBLE"),  # not designated
        (SUB2, {"disabled": True}, grpc.StatusCode.FAILED_PRECONDITION, "AGENT_NOT_ELIGIBLE"),
        (SUB2, {"im_permission": False}, grpc.StatusCode.FAILED_PRECONDITION, "AGENT_NOT_ELIGIBLE"),
        (MAIN_ID, {}, grpc.StatusCode.FAILED_PRECONDITION, "AGENT_NOT_ELIGIBLE"),  # others are designated
        (SUB1, {}, grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ASSIGNED"),
        ("nobody", {}, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
    ],
)
async def test_transfer_to_an_agent_that_cannot_take_it_fails_with_a_reason(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
    target: str,
    flags: dict[str, bool],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    await make_shop(channel, agents={SUB1: 10, SUB2: 10})
    await _upsert(admin, SUB3)
    opened = await _open(platform)
    assert opened.assigned_agent_id == SUB1
    if flags:
        await _upsert(admin, target, **flags)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.TransferSession(transfer(opened.session_id, target), metadata=MAIN)
    assert (failure(refused.value).code, failure(refused.value).reason) == (code, reason)
    assert await assert_counts_are_true(pool, "shop-a") == {SUB1: 1}
    assert await pool.fetchval("SELECT count(*) FROM session_assignments") == 0


async def test_only_the_main_account_or_ops_of_the_shop_may_transfer(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={SUB1: 10, SUB2: 10})
    await make_shop(channel, "shop-b", agents={"shop-b-sub-1": 10})
    opened = await _open(platform)
    other_shop = bearer("merchant", "shop-b-main", "shop-b")
    refusals = [
        (sub(SUB1), transfer(opened.session_id, SUB2), "NOT_MAIN_ACCOUNT"),
        (other_shop, transfer(opened.session_id, SUB2), "SESSION_NOT_FOUND"),
        (other_shop, transfer(opened.session_id, SUB2, merchant_id="shop-a"), "MERCHANT_NOT_FOUND"),
        (OPS, transfer(opened.session_id, SUB2, merchant_id="shop-b"), "SESSION_NOT_FOUND"),
        (PLATFORM, transfer(opened.session_id, SUB2, merchant_id="shop-a"), "ROLE_NOT_ALLOWED"),
    ]
    codes = {
        "NOT_MAIN_ACCOUNT": grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED": grpc.StatusCode.PERMISSION_DENIED,
        "SESSION_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
        "MERCHANT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    }
    for caller, request, reason in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.TransferSession(request, metadata=caller)
        assert (failure(refused.value).code, failure(refused.value).reason) == (codes[reason], reason), request
    moved = await admin.TransferSession(transfer(opened.session_id, SUB2, merchant_id="shop-a"), metadata=OPS)
    assert moved.assignment_history[-1].actor_id == "ops-1"
    assert moved.assignment_history[-1].actor_role == "ops"
    assert await assert_counts_are_true(pool, "shop-a") == {SUB2: 1}


async def test_transfer_is_idempotent_by_request_id(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={SUB1: 10, SUB2: 10, SUB3: 10})
    first, second = await _open(platform), await _open(platform)
    # Twins at the same moment, then a late retry: one move.
    twins = await asyncio.gather(
        *(admin.TransferSession(transfer(first.session_id, SUB3, "t-1"), metadata=MAIN) for _ in range(2))
    )
    retry = await admin.TransferSession(transfer(first.session_id, SUB3, "t-1"), metadata=MAIN)
    assert twins[0] == twins[1] == retry
    assert len(retry.assignment_history) == 2
    for reused in (transfer(first.session_id, SUB2, "t-1"), transfer(second.session_id, SUB3, "t-1")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.TransferSession(reused, metadata=MAIN)
        assert (failure(refused.value).code, failure(refused.value).reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_ID_REUSED",
        )
    # The key is the caller's: ops may use the same id for its own request.
    await admin.TransferSession(transfer(second.session_id, SUB3, "t-1", merchant_id="shop-a"), metadata=OPS)
    # A retry after the session ended still returns the original result.
    await platform.CloseSession(
        platform_pb2.CloseSessionRequest(
            session_id=first.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED
        ),
        metadata=PLATFORM,
    )
    late = await admin.TransferSession(transfer(first.session_id, SUB3, "t-1"), metadata=MAIN)
    assert late.assignment_history == retry.assignment_history
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await admin.TransferSession(transfer(first.session_id, SUB2), metadata=MAIN)
    assert failure(closed.value).reason == "SESSION_CLOSED"
    assert await pool.fetchval("SELECT count(*) FROM session_assignments") == 2
    assert await assert_counts_are_true(pool, "shop-a") == {SUB3: 1}
    # A main account that moved away replays nothing: it may no longer see the shop's sessions (R9).
    await ops_pb2_grpc.OpsServiceStub(channel).UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="next-main")),
        metadata=OPS,
    )
    with pytest.raises(grpc.aio.AioRpcError) as moved_away:
        await admin.TransferSession(transfer(first.session_id, SUB3, "t-1"), metadata=MAIN)
    assert failure(moved_away.value).reason == "NOT_MAIN_ACCOUNT"


# --- re-assignment -------------------------------------------------------------------------------


async def _designate(admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub, *agent_ids: str) -> None:
    await admin.SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=list(agent_ids)), metadata=MAIN
    )


CHANGES: dict[
    str,
    tuple[
        common_pb2.AssignmentReason.ValueType, Callable[[admin_pb2_grpc.MerchantAdminServiceAsyncStub], Awaitable[None]]
    ],
] = {
    "disabled": (R.ASSIGNMENT_REASON_AGENT_DISABLED, lambda admin: _upsert(admin, SUB1, disabled=True)),
    "im_removed": (R.ASSIGNMENT_REASON_IM_PERMISSION_REMOVED, lambda admin: _upsert(admin, SUB1, im_permission=False)),
    "undesignated": (R.ASSIGNMENT_REASON_NOT_RECEPTION_AGENT, lambda admin: _designate(admin, SUB2, SUB3)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_an_agent_that_stops_being_eligible_has_its_sessions_reassigned_by_the_saturation_rule(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
    change: str,
) -> None:
    await make_shop(channel, agents={SUB1: 10, SUB2: 10, SUB3: 5})
    opened = [await _open(platform) for _ in range(7)]
    # R2 with capacities 10/10/5: sub-1 3, sub-2 2, sub-3 2 (saturations 0.3, 0.2, 0.4).
    assert await assert_counts_are_true(pool, "shop-a") == {SUB1: 3, SUB2: 2, SUB3: 2}
    held = [s.session_id for s in opened if s.assigned_agent_id == SUB1]
    reason, make_change = CHANGES[change]

    await make_change(admin)

    # sub-2 (0.2 < 0.4) takes the first, then 0.3 < 0.4 the second, then 0.4 = 0.4: the least recently
    # assigned, sub-3 (its last assignment is older than sub-2's fresh ones).
    after = await assert_counts_are_true(pool, "shop-a")
    assert after == {SUB2: 4, SUB3: 3}
    moved_to = []
    for session_id in held:
        s = await platform.GetSession(platform_pb2.GetSessionRequest(session_id=session_id), metadata=PLATFORM)
        last = s.assignment_history[-1]
        assert (len(s.assignment_history), last.reason, last.from_agent_id) == (2, reason, SUB1)
        assert last.to_agent_id == s.assigned_agent_id == last.decision.agent_id
        assert {c.agent_id for c in last.decision.candidates} == {SUB2, SUB3}
        assert s.reply_deadline.seconds > 0
        moved_to.append(last.to_agent_id)
        stored = [(agent, e.WhichOneof("kind")) for agent, e in await session_events(pool, session_id)]
        assert stored[-2:] == [(SUB1, "session_unassigned"), (last.to_agent_id, "session_assigned")]
    assert moved_to == [SUB2, SUB2, SUB3]
    assert await pool.fetchval("SELECT count(*) FROM session_assignments") == 3
    # The ticket names the same steps (the database encodes the reason as the API does).
    await platform.CloseSession(
        platform_pb2.CloseSessionRequest(
            session_id=held[0], outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
        ),
        metadata=PLATFORM,
    )
    payload = await pool.fetchval("SELECT payload FROM tickets WHERE session_id = $1::uuid", held[0])
    steps = events_pb2.ServiceTicket.FromString(payload).assignment_history
    assert [(s.reason, s.from_agent_id, s.to_agent_id) for s in steps] == [
        (R.ASSIGNMENT_REASON_OPENED, "", SUB1),
        (reason, SUB1, SUB2),
    ]


async def test_when_nobody_is_eligible_the_sessions_stay_and_the_deadline_remains(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={SUB1: 10})
    opened = [await _open(platform) for _ in range(2)]
    await _upsert(admin, SUB1, disabled=True)  # the only designated agent: the main account does not receive
    assert await assert_counts_are_true(pool, "shop-a") == {SUB1: 2}
    for s in opened:
        now = await platform.GetSession(platform_pb2.GetSessionRequest(session_id=s.session_id), metadata=PLATFORM)
        assert now.assigned_agent_id == SUB1
        assert len(now.assignment_history) == 1
        assert now.reply_deadline == s.reply_deadline
    # Once someone is eligible again, the next change of the shop moves them.
    await _upsert(admin, SUB2)
    await _designate(admin, SUB1, SUB2)
    assert await assert_counts_are_true(pool, "shop-a") == {SUB2: 2}


async def test_a_main_account_that_moves_hands_its_sessions_to_the_new_one(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={})
    opened = await _open(platform)
    assert opened.assigned_agent_id == MAIN_ID
    ops = ops_pb2_grpc.OpsServiceStub(channel)
    await ops.UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="new-main")),
        metadata=OPS,
    )
    s = await platform.GetSession(platform_pb2.GetSessionRequest(session_id=opened.session_id), metadata=PLATFORM)
    last = s.assignment_history[-1]
    assert (s.assigned_agent_id, last.reason, last.actor_id, last.actor_role) == (
        "new-main",
        R.ASSIGNMENT_REASON_NOT_RECEPTION_AGENT,
        "ops-1",
        "ops",
    )
    assert await assert_counts_are_true(pool, "shop-a") == {"new-main": 1}


async def test_a_transfer_wakes_the_streams_after_its_commit(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since migration 0009 nothing NOTIFYs from a writing transaction: a transfer must send its own
    wake-up after the commit (store/signals.py). With the hub's head poll pushed to a minute, the new
    agent still hears of the move at once (found by a review: transfers waited for the 1 s poll)."""
    from escalation.domain import limits

    monkeypatch.setattr(limits, "SIGNAL_POLL_SECONDS", 60.0)
    async with running_server(pool) as ch:
        await make_shop(ch, agents={SUB1: 10, SUB2: 10})
        platform = platform_pb2_grpc.PlatformServiceStub(ch)
        admin = admin_pb2_grpc.MerchantAdminServiceStub(ch)
        for n in range(2):
            opened = await _open(platform)
            new = SUB2 if opened.assigned_agent_id == SUB1 else SUB1
            call = await live(pool, ch, sub(new))
            await admin.TransferSession(transfer(opened.session_id, new, request_id=f"wake-{n}"), metadata=MAIN)
            event = await next_event(call, wait=5.0)  # the head poll would take 60 s
            assert event.WhichOneof("kind") == "session_assigned"
            assert event.session_id == opened.session_id
            call.cancel()
