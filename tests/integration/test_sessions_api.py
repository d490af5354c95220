"""Sessions over gRPC against a real database: R2 assignment, R3/R9 scope, R4 messages, R5 deadlines, R6 ending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest

from escalation.domain.tickets import transcript_digest
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    events_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import bearer, failure, running_server
from tests.integration.sessions_harness import (
    OTHER_PLATFORM,
    PLATFORM,
    SUPERVISOR,
    make_shop,
    open_request,
    text,
)

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")


def agent(n: int, shop: str = "shop-a") -> tuple[tuple[str, str]]:
    return bearer("merchant", f"{shop}-sub-{n}", shop)


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        yield ch


@pytest.fixture
def platform(channel: grpc.aio.Channel) -> platform_pb2_grpc.PlatformServiceAsyncStub:
    return platform_pb2_grpc.PlatformServiceStub(channel)


@pytest.fixture
def merchant(channel: grpc.aio.Channel) -> merchant_pb2_grpc.MerchantServiceAsyncStub:
    return merchant_pb2_grpc.MerchantServiceStub(channel)


async def _open(platform: platform_pb2_grpc.PlatformServiceAsyncStub, **kw: str) -> platform_pb2.OpenSessionResponse:
    return await platform.OpenSession(open_request(**kw), metadata=PLATFORM)


# --- R2 assignment -------------------------------------------------------------------------------


async def test_seed_example_least_saturated_agent_wins(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"a": 10, "b": 10, "c": 10})
    await pool.execute(
        "UPDATE agents SET open_sessions = CASE agent_id WHEN 'a' THEN 1 WHEN 'b' THEN 2 ELSE 3 END"
        " WHERE agent_id IN ('a','b','c')"
    )
    opened = await _open(platform)
    assert opened.session.assigned_agent_id == "a"
    decision = opened.session.assignment
    assert decision.rule_version == "saturation-v1"
    assert decision.agent_id == "a"
    assert decision.agent_connected is False
    assert [(c.agent_id, c.open_sessions, c.capacity) for c in decision.candidates] == [
        ("a", 1, 10),
        ("b", 2, 10),
        ("c", 3, 10),
    ]
    assert decision.candidates[0].saturation == pytest.approx(0.1)
    stored = await platform.GetSession(
        platform_pb2.GetSessionRequest(session_id=opened.session.session_id), metadata=PLATFORM
    )
    assert stored.assignment == decision


async def test_saturation_is_relative_to_capacity(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"big": 20, "small": 2})
    await pool.execute(
        "UPDATE agents SET open_sessions = CASE agent_id WHEN 'big' THEN 5 ELSE 1 END WHERE agent_id IN ('big','small')"
    )
    assert (await _open(platform)).session.assigned_agent_id == "big"  # 5/20 < 1/2


async def test_ties_go_to_least_recently_assigned_then_agent_id(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"x": 10, "y": 10, "z": 10})
    first = [(await _open(platform)).session.assigned_agent_id for _ in range(3)]
    assert first == ["x", "y", "z"], "never-assigned agents tie on saturation; then agent id decides"
    await pool.execute("UPDATE agents SET open_sessions = 0 WHERE merchant_id = 'shop-a'")
    again = [(await _open(platform)).session.assigned_agent_id for _ in range(3)]
    assert again == ["x", "y", "z"], "equal saturation: the least recently assigned goes first"


async def test_capacity_never_blocks(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"a": 1, "b": 1})
    assigned = [(await _open(platform)).session.assigned_agent_id for _ in range(5)]
    assert sorted(assigned) == ["a", "a", "a", "b", "b"]
    counts = dict(await pool.fetch("SELECT agent_id, open_sessions FROM agents WHERE agent_id IN ('a', 'b')"))
    assert counts == {"a": 3, "b": 2}


async def test_without_designation_the_main_account_receives(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    await make_shop(channel, designate=False)
    assert (await _open(platform)).session.assigned_agent_id == "shop-a-main"


async def test_agent_losing_im_or_designation_receives_nothing_more(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    await make_shop(channel, agents={"a": 10, "b": 10, "c": 10})
    await admin.SetReceptionAgents(admin_pb2.SetReceptionAgentsRequest(agent_ids=["a", "b"]), metadata=MAIN)
    await admin.UpsertAgent(
        admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="a", im_permission=False)), metadata=MAIN
    )
    assigned = {(await _open(platform)).session.assigned_agent_id for _ in range(6)}
    assert assigned == {"b"}


async def test_no_eligible_agent_and_unknown_or_disabled_merchant(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    await make_shop(channel, agents={"a": 10})
    await admin.UpsertAgent(
        admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="a", im_permission=False)), metadata=MAIN
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _open(platform)
    assert (failure(caught.value).code, failure(caught.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_ELIGIBLE_AGENT",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _open(platform, merchant_id="no-such-shop")
    assert failure(caught.value).reason == "MERCHANT_NOT_FOUND"


# --- AIP-155 idempotency -------------------------------------------------------------------------


async def test_same_request_id_ten_times_concurrently_gives_one_session(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel)
    request = open_request(request_id="req-1")
    answers = await asyncio.gather(*(platform.OpenSession(request, metadata=PLATFORM) for _ in range(10)))
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    assert await pool.fetchval("SELECT sum(open_sessions) FROM agents") == 1


async def test_same_request_id_with_another_payload_is_request_id_reused(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    await make_shop(channel)
    await make_shop(channel, "shop-b")
    await platform.OpenSession(open_request(request_id="req-1"), metadata=PLATFORM)
    for other in (open_request(request_id="req-1", body="different"), open_request("shop-b", request_id="req-1")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await platform.OpenSession(other, metadata=PLATFORM)
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    # Request ids belong to the platform agent that sent them.
    theirs = await platform.OpenSession(open_request(request_id="req-1"), metadata=OTHER_PLATFORM)
    assert theirs.session.platform_agent_id == "pa-2"


async def test_same_request_id_racing_across_merchants_is_one_session_and_one_refusal(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel)
    await make_shop(channel, "shop-b")
    results = await asyncio.gather(
        platform.OpenSession(open_request("shop-a", request_id="race"), metadata=PLATFORM),
        platform.OpenSession(open_request("shop-b", request_id="race"), metadata=PLATFORM),
        return_exceptions=True,
    )
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refusals) == 1
    assert failure(refusals[0]).reason == "REQUEST_ID_REUSED"
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1


# --- R4 messages ---------------------------------------------------------------------------------


async def test_messages_get_gapless_seq_under_concurrent_senders(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    sid = (await _open(platform)).session.session_id
    sends = [
        platform.SendMessage(platform_pb2.SendMessageRequest(session_id=sid, content=text(f"p{i}")), metadata=PLATFORM)
        for i in range(20)
    ]
    replies = [
        merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text(f"m{i}")), metadata=agent(1))
        for i in range(20)
    ]
    await asyncio.gather(*sends, *replies)
    listed = await platform.ListMessages(
        platform_pb2.ListMessagesRequest(session_id=sid, page_size=100), metadata=PLATFORM
    )
    assert [m.seq for m in listed.messages] == list(range(1, 42))
    times = [m.send_time.ToDatetime() for m in listed.messages]
    assert times == sorted(times), "seq order and send_time order agree"


async def test_retried_client_msg_id_returns_the_original_without_a_gap(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    sid = (await _open(platform)).session.session_id
    request = merchant_pb2.ReplyRequest(session_id=sid, client_msg_id="c-1", content=text("we ship today"))
    answers = await asyncio.gather(*(merchant.Reply(request, metadata=agent(1)) for _ in range(5)))
    assert {a.seq for a in answers} == {2}
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    nxt = await merchant.Reply(
        merchant_pb2.ReplyRequest(session_id=sid, content=text("anything else?")), metadata=agent(1)
    )
    assert nxt.seq == 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant.Reply(
            merchant_pb2.ReplyRequest(session_id=sid, client_msg_id="c-1", content=text("other")), metadata=agent(1)
        )
    assert failure(caught.value).reason == "CLIENT_MSG_ID_REUSED"
    # The platform's ids are its own namespace.
    mine = await platform.SendMessage(
        platform_pb2.SendMessageRequest(session_id=sid, client_msg_id="c-1", content=text("thanks")), metadata=PLATFORM
    )
    assert mine.seq == 4


async def test_platform_and_merchant_kinds(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    card = common_pb2.OrderCard(
        order_id="o-1",
        status="PAID",
        paid_amount=common_pb2.Money(amount_minor=1999, currency="CNY"),
        items=[common_pb2.OrderItem(product_id="p-1", name="Mug", quantity=2, image_url="https://img.example/m.png")],
        logistics=common_pb2.Logistics(courier="SF", tracking_number="SF123"),
        detail_url="https://shop.example/orders/o-1",
    )
    card.create_time.GetCurrentTime()
    opened = await platform.OpenSession(
        platform_pb2.OpenSessionRequest(
            request_id="r",
            merchant_id="shop-a",
            category=common_pb2.CATEGORY_LOGISTICS,
            messages=[text("hi"), common_pb2.MessageContent(order_card=card)],
        ),
        metadata=PLATFORM,
    )
    assert [m.content.WhichOneof("kind") for m in opened.messages] == ["text", "order_card"]
    assert opened.messages[1].content.order_card == card
    image = common_pb2.MessageContent(
        image=common_pb2.Image(url="https://img.example/proof.jpg", width=640, height=480)
    )
    emoji = common_pb2.MessageContent(emoji=common_pb2.Emoji(code="[thumbs_up]"))
    sid = opened.session.session_id
    for content in (image, emoji):
        sent = await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=content), metadata=agent(1))
        assert sent.content == content
        assert sent.sender == common_pb2.SENDER_MERCHANT


async def test_reply_by_template(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    template = await admin.CreateReplyTemplate(
        admin_pb2.CreateReplyTemplateRequest(template=merchant_pb2.ReplyTemplate(title="today", text="We ship today.")),
        metadata=MAIN,
    )
    sid = (await _open(platform)).session.session_id
    sent = await merchant.Reply(
        merchant_pb2.ReplyRequest(session_id=sid, template_id=template.template_id), metadata=agent(1)
    )
    assert (sent.content.text.body, sent.template_id) == ("We ship today.", template.template_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, template_id="nope"), metadata=agent(1))
    assert failure(caught.value).reason == "TEMPLATE_NOT_FOUND"


# --- R5 deadlines --------------------------------------------------------------------------------


async def _deadline(pool: asyncpg.Pool, sid: str) -> tuple[datetime | None, datetime | None]:
    row = await pool.fetchrow("SELECT reply_deadline, remind_time FROM sessions WHERE session_id = $1", sid)
    assert row is not None
    return row["reply_deadline"], row["remind_time"]


async def test_reply_deadline_follows_r5(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    await pool.execute("UPDATE reception_settings SET reply_timeout_seconds = 150")
    opened = await _open(platform)
    sid = opened.session.session_id
    first_sent = opened.messages[0].send_time.ToDatetime().replace(tzinfo=None)
    deadline, remind = await _deadline(pool, sid)
    assert deadline is not None
    assert remind is not None
    assert deadline.replace(tzinfo=None) == first_sent + timedelta(seconds=150)
    assert remind.replace(tzinfo=None) == first_sent + timedelta(seconds=90)
    assert opened.session.reply_deadline.ToDatetime() == first_sent + timedelta(seconds=150)

    await platform.SendMessage(
        platform_pb2.SendMessageRequest(session_id=sid, content=text("still there?")), metadata=PLATFORM
    )
    assert await _deadline(pool, sid) == (deadline, remind), "an earlier platform message is still waiting"

    await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("yes")), metadata=agent(1))
    assert await _deadline(pool, sid) == (None, None)

    nxt = await platform.SendMessage(
        platform_pb2.SendMessageRequest(session_id=sid, content=text("and the invoice?")), metadata=PLATFORM
    )
    new_deadline, _ = await _deadline(pool, sid)
    assert new_deadline is not None
    assert new_deadline.replace(tzinfo=None) == nxt.send_time.ToDatetime() + timedelta(seconds=150)


# --- R6 ending, R7 tickets -----------------------------------------------------------------------


async def test_resolved_close_makes_no_ticket_and_frees_the_agent(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"a": 10})
    sid = (await _open(platform)).session.session_id
    closed = await platform.CloseSession(
        platform_pb2.CloseSessionRequest(session_id=sid, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED),
        metadata=PLATFORM,
    )
    assert (closed.state, closed.close_reason, closed.ticket_id) == (
        common_pb2.SESSION_STATE_ENDED,
        common_pb2.CLOSE_REASON_RESOLVED,
        "",
    )
    assert not closed.HasField("reply_deadline")
    assert await pool.fetchval("SELECT open_sessions FROM agents WHERE agent_id = 'a'") == 0
    assert await pool.fetchval("SELECT count(*) FROM tickets") == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.SendMessage(
            platform_pb2.SendMessageRequest(session_id=sid, content=text("x")), metadata=PLATFORM
        )
    got = failure(caught.value)
    assert (got.code, got.reason, got.metadata) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_CLOSED", {})


async def test_escalated_close_makes_one_ticket_with_outbox_row_and_verifiable_digest(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    sid = (await _open(platform)).session.session_id
    await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("let me check")), metadata=agent(1))
    closed = await platform.CloseSession(
        platform_pb2.CloseSessionRequest(session_id=sid, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED),
        metadata=PLATFORM,
    )
    assert closed.close_reason == common_pb2.CLOSE_REASON_PLATFORM_ESCALATED
    assert closed.ticket_id
    row = await pool.fetchrow("SELECT payload, handle_by FROM tickets WHERE session_id = $1", sid)
    assert row is not None
    ticket = events_pb2.ServiceTicket.FromString(row["payload"])
    assert ticket.ticket_id == closed.ticket_id
    assert (ticket.merchant_id, ticket.assigned_agent_id, ticket.platform_agent_id, ticket.order_id) == (
        "shop-a",
        "shop-a-sub-1",
        "pa-1",
        "order-1",
    )
    assert ticket.category == common_pb2.CATEGORY_ORDER_OPERATION
    assert [m.seq for m in ticket.transcript] == [1, 2]
    assert ticket.transcript_digest == transcript_digest(ticket.transcript)
    assert ticket.handle_by.ToDatetime() - ticket.close_time.ToDatetime() == timedelta(hours=2)
    outbox = await pool.fetch("SELECT topic, message_key, event_id, payload FROM outbox")
    assert [(o["topic"], o["message_key"], o["event_id"], o["payload"]) for o in outbox] == [
        ("escalation.service-tickets.v1", b"shop-a", closed.ticket_id, row["payload"])
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("late")), metadata=agent(1))
    got = failure(caught.value)
    assert (got.reason, got.metadata) == ("SESSION_CLOSED", {"ticket_id": closed.ticket_id})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.CloseSession(
            platform_pb2.CloseSessionRequest(session_id=sid, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED),
            metadata=PLATFORM,
        )
    assert failure(caught.value).reason == "SESSION_CLOSED"


async def test_concurrent_closes_end_the_session_exactly_once(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub, pool: asyncpg.Pool
) -> None:
    await make_shop(channel, agents={"a": 10})
    sid = (await _open(platform)).session.session_id
    outcomes = [
        platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED,
        platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED,
    ] * 5
    results = await asyncio.gather(
        *(
            platform.CloseSession(platform_pb2.CloseSessionRequest(session_id=sid, outcome=o), metadata=PLATFORM)
            for o in outcomes
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, common_pb2.Session)]
    assert len(winners) == 1
    assert all(failure(r).reason == "SESSION_CLOSED" for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert await pool.fetchval("SELECT count(*) FROM tickets") == (1 if winners[0].ticket_id else 0)
    assert await pool.fetchval("SELECT open_sessions FROM agents WHERE agent_id = 'a'") == 0


# --- R3 / R9 visibility --------------------------------------------------------------------------


async def test_visibility_per_r9(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    # Both sub-accounts in the directory (an agent it does not know is refused outright); the tie goes
    # to the lower agent id, so sub-1 is assigned and sub-2 is the sibling that must not see it.
    await make_shop(channel, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
    await make_shop(channel, "shop-b", agents={"shop-b-sub-1": 10})
    sid = (await _open(platform)).session.session_id
    get = platform_pb2.GetSessionRequest(session_id=sid)

    assert (await merchant.GetSession(get, metadata=agent(1))).session_id == sid
    assert (await merchant.GetSession(get, metadata=MAIN)).session_id == sid
    assert (await platform.GetSession(get, metadata=SUPERVISOR)).session_id == sid
    await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("main account answers")), metadata=MAIN)

    outsiders = [
        (merchant.GetSession, agent(1, "shop-b")),
        (merchant.GetSession, bearer("merchant", "shop-b-main", "shop-b")),
        (merchant.GetSession, bearer("merchant", "shop-a-sub-2", "shop-a")),  # a sibling sub-account
        (platform.GetSession, OTHER_PLATFORM),
    ]
    for call, who in outsiders:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(get, metadata=who)
        assert failure(caught.value).reason == "SESSION_NOT_FOUND"
    for who in (agent(1, "shop-b"), bearer("merchant", "shop-a-sub-2", "shop-a")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("x")), metadata=who)
        assert failure(caught.value).code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.OpenSession(open_request(), metadata=MAIN)
    assert failure(caught.value).code is grpc.StatusCode.PERMISSION_DENIED

    def ids(r: platform_pb2.ListSessionsResponse) -> list[str]:
        return [s.session_id for s in r.sessions]

    everything = platform_pb2.ListSessionsRequest()
    assert ids(await merchant.ListSessions(everything, metadata=agent(1))) == [sid]
    assert ids(await merchant.ListSessions(everything, metadata=MAIN)) == [sid]
    assert ids(await merchant.ListSessions(everything, metadata=agent(1, "shop-b"))) == []
    assert (
        ids(
            await merchant.ListSessions(
                platform_pb2.ListSessionsRequest(merchant_id="shop-a"), metadata=agent(1, "shop-b")
            )
        )
        == []
    )
    assert ids(await platform.ListSessions(everything, metadata=OTHER_PLATFORM)) == []
    assert ids(await platform.ListSessions(everything, metadata=SUPERVISOR)) == [sid]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant.ListMessages(platform_pb2.ListMessagesRequest(session_id=sid), metadata=agent(1, "shop-b"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_agent_without_im_permission_cannot_reply(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
) -> None:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    sid = (await _open(platform)).session.session_id
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    await admin.UpsertAgent(
        admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False)), metadata=MAIN
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("x")), metadata=agent(1))
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "IM_PERMISSION_REQUIRED")


# --- lists ---------------------------------------------------------------------------------------


async def test_list_sessions_filters_and_pages(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    await make_shop(channel)
    await make_shop(channel, "shop-b")
    opened = [(await _open(platform, merchant_id=m)).session for m in ["shop-a", "shop-b"] * 4]
    await platform.CloseSession(
        platform_pb2.CloseSessionRequest(
            session_id=opened[0].session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED
        ),
        metadata=PLATFORM,
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await platform.ListSessions(
            platform_pb2.ListSessionsRequest(
                merchant_id="shop-a", state=common_pb2.SESSION_STATE_OPEN, page_size=2, page_token=token
            ),
            metadata=PLATFORM,
        )
        seen += [s.session_id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.session_id for s in reversed(opened) if s.merchant_id == "shop-a"][:3]
    window = platform_pb2.ListSessionsRequest(open_time_start=opened[2].open_time, open_time_end=opened[5].open_time)
    assert [s.session_id for s in (await platform.ListSessions(window, metadata=PLATFORM)).sessions] == [
        s.session_id for s in reversed(opened[2:5])
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.ListSessions(
            platform_pb2.ListSessionsRequest(merchant_id="shop-b", page_token=page.next_page_token or "x"),
            metadata=PLATFORM,
        )
    assert "page_token" in failure(caught.value).field_violations


async def test_list_messages_after_seq_and_pages(
    channel: grpc.aio.Channel, platform: platform_pb2_grpc.PlatformServiceAsyncStub
) -> None:
    await make_shop(channel)
    sid = (await _open(platform)).session.session_id
    for i in range(6):
        await platform.SendMessage(
            platform_pb2.SendMessageRequest(session_id=sid, content=text(f"m{i}")), metadata=PLATFORM
        )
    seqs: list[int] = []
    token = ""
    while True:
        page = await platform.ListMessages(
            platform_pb2.ListMessagesRequest(session_id=sid, after_seq=2, page_size=2, page_token=token),
            metadata=PLATFORM,
        )
        seqs += [m.seq for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seqs == [3, 4, 5, 6, 7]


async def test_first_reply_and_open_sessions_metrics(
    channel: grpc.aio.Channel,
    platform: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub,
    pool: asyncpg.Pool,
) -> None:
    from prometheus_client import REGISTRY

    from escalation.observability import gauges

    def first_replies() -> float:
        return REGISTRY.get_sample_value("escalation_first_reply_seconds_count") or 0.0

    await make_shop(channel, agents={"shop-a-sub-1": 10})
    before = first_replies()
    sid = (await _open(platform)).session.session_id
    for body in ("first", "second"):
        await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text(body)), metadata=agent(1))
    assert first_replies() == before + 1, "only a session's first merchant reply is observed"
    task = asyncio.create_task(gauges.refresh_forever(pool, every=60))
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert REGISTRY.get_sample_value("escalation_sessions_open") == 1
