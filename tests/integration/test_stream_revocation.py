"""SPEC R9 / issue 10 §1: a change that narrows an identity's scope applies to its open Connect stream at once.

Each test first proves the stream is established (it delivered an event), then makes the change through
the API on the other server, then writes an event the narrowed identity may no longer see: the stream
must end (or drop that event) without ever delivering it.
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from escalation.v1 import admin_pb2, admin_pb2_grpc, ops_pb2, ops_pb2_grpc
from tests.integration.grpc_harness import OPS, failure
from tests.integration.sessions_harness import make_shop
from tests.integration.test_realtime import (
    MAIN,
    SUB1,
    SUB2,
    Call,
    connect,
    drain,
    events,
    live,
    next_event,
    open_session,
    send,
    two_servers,
)

pytestmark = pytest.mark.integration


async def _ends_with(call: Call, code: grpc.StatusCode, reason: str) -> list[int]:
    """Reads the stream to its end; asserts its status; returns the cursors it delivered on the way."""
    cursors: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(call, 10, cursors)
    got = failure(caught.value)
    assert (got.code, got.reason) == (code, reason)
    return cursors


async def _move_main_account(channel: grpc.aio.Channel, to: str) -> None:
    await ops_pb2_grpc.OpsServiceStub(channel).UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id=to)),
        metadata=OPS,
    )


async def test_main_account_moved_cuts_its_whole_shop_stream_and_a_reconnect_sees_only_its_own(
    pool: asyncpg.Pool,
) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        stream = await live(pool, a, MAIN)
        before = await open_session(b)  # sub-1's: the main account sees the whole shop
        assert [e.session_id for e in await events(stream, 2)] == [before.session_id] * 2

        await _move_main_account(b, "shop-a-new-main")
        after = await open_session(b)  # sub-1's again, written after the move
        seen = await _ends_with(stream, grpc.StatusCode.PERMISSION_DENIED, "MAIN_ACCOUNT_CHANGED")
        head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'")
        assert all(c <= head - 2 for c in seen), "an event written after the move reached the old main account"

        # Reconnecting works, as the sub-account it now is: another agent's sessions are filtered out.
        again = await connect(a, MAIN, last_cursor=head)
        admin = admin_pb2_grpc.MerchantAdminServiceStub(b)
        # Designated next to sub-1 (which keeps its sessions): the old main account takes the next one.
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-main", "shop-a-sub-1"]),
            metadata=OPS,
        )
        await send(b, after.session_id, "still there?")  # sub-1's session: not for the old main account
        own = await open_session(b)  # the least saturated reception agent: the old main account
        assert own.assigned_agent_id == "shop-a-main"
        first = await next_event(again)
        assert (first.session_id, first.WhichOneof("kind")) == (own.session_id, "session_assigned")
        again.cancel()


async def test_promoted_to_main_account_widens_the_open_stream_in_place(pool: asyncpg.Pool) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
        stream = await live(pool, a, SUB1)
        mine = await open_session(b)
        while mine.assigned_agent_id != "shop-a-sub-1":
            mine = await open_session(b)
        assert (await next_event(stream)).session_id == mine.session_id
        await _move_main_account(b, "shop-a-sub-1")
        theirs = await open_session(b)  # sub-2 (sub-1 holds more sessions, or is the main account now)
        while theirs.assigned_agent_id != "shop-a-sub-2":
            theirs = await open_session(b)
        # The whole shop now, read from the database after the change: sub-2's session arrives.
        while (await next_event(stream)).session_id != theirs.session_id:
            pass
        stream.cancel()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False), "IM_PERMISSION_REQUIRED"),
        (admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=True, disabled=True), "AGENT_DISABLED"),
        (admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False, disabled=True), "AGENT_DISABLED"),
    ],
    ids=["im-permission-removed", "disabled", "both"],
)
async def test_revoked_agent_stream_is_cut_before_any_later_event_and_cannot_reconnect(
    pool: asyncpg.Pool, change: admin_pb2.Agent, reason: str
) -> None:
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10})
        stream = await live(pool, a, SUB1)
        session = await open_session(b)
        assert len(await events(stream, 2)) == 2
        await admin_pb2_grpc.MerchantAdminServiceStub(b).UpsertAgent(
            admin_pb2.UpsertAgentRequest(merchant_id="shop-a", agent=change), metadata=OPS
        )
        late = await send(b, session.session_id, "written after the revocation")
        seen = await _ends_with(stream, grpc.StatusCode.PERMISSION_DENIED, reason)
        late_cursor = await pool.fetchval("SELECT max(cursor) FROM merchant_events WHERE merchant_id = 'shop-a'")
        assert late.seq == 2
        assert late_cursor not in seen
        refused = await connect(a, SUB1)
        await _ends_with(refused, grpc.StatusCode.PERMISSION_DENIED, reason)


async def test_designation_removed_keeps_the_stream_and_tells_the_agent_its_sessions_left(
    pool: asyncpg.Pool,
) -> None:
    """Designation decides who receives sessions (R1): removing it does not cut the stream, but R13 moves
    the agent's open sessions to an eligible agent, and the stream says so (SessionUnassigned)."""
    async with two_servers(pool) as (a, b):
        await make_shop(b, agents={"shop-a-sub-1": 10, "shop-a-sub-2": 10})
        stream = await live(pool, a, SUB1)
        mine = await open_session(b)
        while mine.assigned_agent_id != "shop-a-sub-1":
            mine = await open_session(b)
        assert (await next_event(stream)).session_id == mine.session_id
        admin = admin_pb2_grpc.MerchantAdminServiceStub(b)
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-2"]), metadata=OPS
        )
        skipped_opening = await next_event(stream)  # the opening message of `mine`
        assert skipped_opening.session_id == mine.session_id
        left = await next_event(stream)
        assert (left.session_id, left.WhichOneof("kind")) == (mine.session_id, "session_unassigned")
        assert left.session_unassigned.step.to_agent_id == "shop-a-sub-2"
        new = await open_session(b)
        assert new.assigned_agent_id == "shop-a-sub-2"
        await send(b, mine.session_id, "for its new agent")
        # Designated again, sub-1 (no sessions left) receives the next one: the first event since.
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-1", "shop-a-sub-2"]),
            metadata=OPS,
        )
        back = await open_session(b)
        assert back.assigned_agent_id == "shop-a-sub-1"
        assert (await next_event(stream)).session_id == back.session_id
        stream.cancel()
        other = await live(pool, a, SUB2)
        await send(b, mine.session_id, "for sub-2")
        assert (await next_event(other)).session_id == mine.session_id
        other.cancel()
