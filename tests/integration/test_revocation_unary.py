"""SPEC R1/R9 on unary calls: every call re-reads the caller's standing in the directory, and the caller's
scope is part of the query, so a session outside it is neither returned nor locked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    merchant_pb2,
    merchant_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import OTHER_PLATFORM, PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")
SUB1 = bearer("merchant", "shop-a-sub-1", "shop-a")
SUB2 = bearer("merchant", "shop-a-sub-2", "shop-a")
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        yield ch


async def _shop_with_session(channel: grpc.aio.Channel) -> str:
    """shop-a with sub-1 (assigned the one session, by the agent-id tie rule) and sub-2 designated."""
    await make_shop(channel, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
    opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(open_request(), metadata=PLATFORM)
    assert opened.session.assigned_agent_id == "shop-a-sub-1"
    return opened.session.session_id


async def _set_agent(channel: grpc.aio.Channel, agent_id: str, *, im: bool = True, disabled: bool = False) -> None:
    await admin_pb2_grpc.MerchantAdminServiceStub(channel).UpsertAgent(
        admin_pb2.UpsertAgentRequest(
            merchant_id="shop-a", agent=admin_pb2.Agent(agent_id=agent_id, im_permission=im, disabled=disabled)
        ),
        metadata=OPS,
    )


def _merchant_calls(channel: grpc.aio.Channel, sid: str) -> dict[str, Callable[[Metadata], Awaitable[Any]]]:
    """Every unary MerchantService read and write on one session, by name."""
    m = merchant_pb2_grpc.MerchantServiceStub(channel)
    return {
        "GetSession": lambda who: m.GetSession(platform_pb2.GetSessionRequest(session_id=sid), metadata=who),
        "ListSessions": lambda who: m.ListSessions(platform_pb2.ListSessionsRequest(), metadata=who),
        "ListMessages": lambda who: m.ListMessages(platform_pb2.ListMessagesRequest(session_id=sid), metadata=who),
        "Reply": lambda who: m.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text("on it")), metadata=who),
    }


async def _refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    got = failure(caught.value)
    return got.code, got.reason


async def test_a_disabled_agent_gets_permission_denied_on_every_unary_call(channel: grpc.aio.Channel) -> None:
    sid = await _shop_with_session(channel)
    calls = _merchant_calls(channel, sid)
    m = merchant_pb2_grpc.MerchantServiceStub(channel)
    keyed = merchant_pb2.ReplyRequest(session_id=sid, content=text("sent before"), client_msg_id="c-1")
    await m.Reply(keyed, metadata=SUB1)
    for call in calls.values():
        await call(SUB1)  # allowed while enabled
    assert [s.session_id for s in (await calls["ListSessions"](SUB1)).sessions] == [sid]

    await _set_agent(channel, "shop-a-sub-1", disabled=True)
    for name, call in calls.items():
        assert await _refused(call(SUB1)) == (grpc.StatusCode.PERMISSION_DENIED, "AGENT_DISABLED"), name
    # Disabled switches the identity off: not even a replay of a send that succeeded (unlike R4's
    # "permission removed", which keeps replays).
    assert await _refused(m.Reply(keyed, metadata=SUB1)) == (grpc.StatusCode.PERMISSION_DENIED, "AGENT_DISABLED")
    m, a = merchant_pb2_grpc.MerchantServiceStub(channel), admin_pb2_grpc.MerchantAdminServiceStub(channel)
    directory_calls: dict[str, Callable[[Metadata], Awaitable[Any]]] = {
        "ListReplyTemplates": lambda who: m.ListReplyTemplates(merchant_pb2.ListReplyTemplatesRequest(), metadata=who),
        "GetReceptionSettings": lambda who: a.GetReceptionSettings(
            admin_pb2.GetReceptionSettingsRequest(), metadata=who
        ),
        "ListAgents": lambda who: a.ListAgents(admin_pb2.ListAgentsRequest(), metadata=who),
    }
    for name, call in directory_calls.items():
        assert await _refused(call(SUB1)) == (grpc.StatusCode.PERMISSION_DENIED, "AGENT_DISABLED"), name
    for unaffected in [*calls.values(), *directory_calls.values()]:
        await unaffected(MAIN)  # the shop's other agents are unaffected

    # R13: disabling sub-1 re-assigned its session to sub-2, the other eligible agent.
    assert (await calls["GetSession"](SUB2)).session_id == sid
    await _set_agent(channel, "shop-a-sub-1")  # enabled again: nothing was cached
    assert list((await calls["ListSessions"](SUB1)).sessions) == []
    assert await _refused(calls["GetSession"](SUB1)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


async def test_an_agent_unknown_to_its_shop_is_refused(channel: grpc.aio.Channel) -> None:
    sid = await _shop_with_session(channel)
    for who in (bearer("merchant", "shop-a-nobody", "shop-a"), bearer("merchant", "shop-a-sub-1", "shop-z")):
        for name, call in _merchant_calls(channel, sid).items():
            got = await _refused(call(who))
            assert got == (grpc.StatusCode.PERMISSION_DENIED, "IM_PERMISSION_REQUIRED"), name


async def test_a_main_account_moved_away_keeps_only_sub_account_scope(channel: grpc.aio.Channel) -> None:
    sid = await _shop_with_session(channel)
    calls = _merchant_calls(channel, sid)
    assert [s.session_id for s in (await calls["ListSessions"](MAIN)).sessions] == [sid]
    assert (await calls["GetSession"](MAIN)).session_id == sid

    await ops_pb2_grpc.OpsServiceStub(channel).UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="shop-a-sub-2")),
        metadata=OPS,
    )
    assert list((await calls["ListSessions"](MAIN)).sessions) == []
    for name in ("GetSession", "ListMessages", "Reply"):
        assert await _refused(calls[name](MAIN)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"), name
    # The new main account sees the shop's sessions at once; the assigned agent still its own.
    assert [s.session_id for s in (await calls["ListSessions"](SUB2)).sessions] == [sid]
    assert (await calls["GetSession"](SUB1)).session_id == sid


async def test_im_permission_removed_refuses_reads_and_new_replies_but_replays_r4(channel: grpc.aio.Channel) -> None:
    sid = await _shop_with_session(channel)
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    # sub-1 alone receives, so nobody can take its session when it loses IM permission (R13: it stays).
    await admin.SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-1"]), metadata=OPS
    )
    m = merchant_pb2_grpc.MerchantServiceStub(channel)
    keyed = merchant_pb2.ReplyRequest(session_id=sid, content=text("we ship today"), client_msg_id="c-1")
    original = await m.Reply(keyed, metadata=SUB1)

    await _set_agent(channel, "shop-a-sub-1", im=False)
    for name, call in _merchant_calls(channel, sid).items():
        got = await _refused(call(SUB1))
        assert got == (grpc.StatusCode.PERMISSION_DENIED, "IM_PERMISSION_REQUIRED"), name
    assert await m.Reply(keyed, metadata=SUB1) == original  # SPEC R4: the replay comes before the check

    # Once sub-2 receives, the session moves to it (R13); the retry still returns the original.
    await admin.SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-2"]), metadata=OPS
    )
    assert (await _merchant_calls(channel, sid)["GetSession"](SUB2)).assigned_agent_id == "shop-a-sub-2"
    assert await m.Reply(keyed, metadata=SUB1) == original
    reused = merchant_pb2.ReplyRequest(session_id=sid, content=text("something else"), client_msg_id="c-1")
    assert await _refused(m.Reply(reused, metadata=SUB1)) == (grpc.StatusCode.INVALID_ARGUMENT, "CLIENT_MSG_ID_REUSED")


async def test_the_retry_after_a_move_answers_only_its_sender_in_its_own_shop(channel: grpc.aio.Channel) -> None:
    """R4 after R13 opens no door (R9): agent ids are per shop, so an agent of another shop with the same id
    replaying the same key on the moved session is NOT_FOUND, and so is a new write of the former agent."""
    sid = await _shop_with_session(channel)
    await make_shop(channel, "shop-b", agents={"shop-a-sub-1": 10})  # the same agent id, another shop
    m = merchant_pb2_grpc.MerchantServiceStub(channel)
    keyed = merchant_pb2.ReplyRequest(session_id=sid, content=text("we ship today"), client_msg_id="c-1")
    original = await m.Reply(keyed, metadata=SUB1)
    await admin_pb2_grpc.MerchantAdminServiceStub(channel).SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-2"]), metadata=OPS
    )
    assert await m.Reply(keyed, metadata=SUB1) == original
    namesake = bearer("merchant", "shop-a-sub-1", "shop-b")
    assert await _refused(m.Reply(keyed, metadata=namesake)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    fresh = merchant_pb2.ReplyRequest(session_id=sid, content=text("still here"), client_msg_id="c-2")
    for request in (fresh, merchant_pb2.ReplyRequest(session_id=sid, content=text("still here"))):
        assert await _refused(m.Reply(request, metadata=SUB1)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


async def test_designation_removed_moves_the_sessions_out_of_the_agents_scope(channel: grpc.aio.Channel) -> None:
    # R9 scopes a sub-account by assignment; R13 moves its sessions when it stops being eligible, after
    # which they are NOT_FOUND to it like any sibling's session.
    sid = await _shop_with_session(channel)
    calls = _merchant_calls(channel, sid)
    await admin_pb2_grpc.MerchantAdminServiceStub(channel).SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-2"]), metadata=OPS
    )
    for name, call in calls.items():
        if name == "ListSessions":
            assert list((await call(SUB1)).sessions) == []
        else:
            assert await _refused(call(SUB1)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"), name
    for call in calls.values():
        await call(SUB2)


# --- the scope is part of the query: a foreign session is never locked nor waited for ---------------


@pytest.mark.parametrize(
    "outsider",
    ["other shop's main", "sibling sub-account", "other platform agent", "old main account"],
)
async def test_a_write_outside_the_callers_scope_never_waits_for_the_sessions_lock(
    channel: grpc.aio.Channel, pool: asyncpg.Pool, outsider: str
) -> None:
    sid = await _shop_with_session(channel)
    await make_shop(channel, "shop-b", agents={"shop-b-sub-1": 10})
    m = merchant_pb2_grpc.MerchantServiceStub(channel)
    p = platform_pb2_grpc.PlatformServiceStub(channel)
    if outsider == "old main account":
        await ops_pb2_grpc.OpsServiceStub(channel).UpsertMerchant(
            ops_pb2.UpsertMerchantRequest(
                merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="shop-a-sub-2")
            ),
            metadata=OPS,
        )
    writes: dict[str, Callable[[], Awaitable[Any]]] = {
        "other shop's main": lambda: m.Reply(
            merchant_pb2.ReplyRequest(session_id=sid, content=text("x")),
            metadata=bearer("merchant", "shop-b-main", "shop-b"),
            timeout=10,
        ),
        "sibling sub-account": lambda: m.Reply(
            merchant_pb2.ReplyRequest(session_id=sid, content=text("x")), metadata=SUB2, timeout=10
        ),
        "other platform agent": lambda: p.CloseSession(
            platform_pb2.CloseSessionRequest(session_id=sid, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED),
            metadata=OTHER_PLATFORM,
            timeout=10,
        ),
        "old main account": lambda: m.Reply(
            merchant_pb2.ReplyRequest(session_id=sid, content=text("x")), metadata=MAIN, timeout=10
        ),
    }
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE", sid)
        # Answered while the row is still locked by someone else: the query never matched the row.
        # (Checked after the lock it would wait here until the deadline: DEADLINE_EXCEEDED.)
        assert await _refused(writes[outsider]()) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    async with pool.acquire() as conn:
        # And the refused call left nothing locked behind: a NOWAIT lock succeeds at once.
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE NOWAIT", sid)
        assert await conn.fetchval("SELECT last_seq FROM sessions WHERE session_id = $1", sid) == 1
        assert await conn.fetchval("SELECT state FROM sessions WHERE session_id = $1", sid) == "OPEN"
