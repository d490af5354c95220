"""SPEC R13 under concurrency: opens, transfers, re-assignments and replies at once, on two servers with
their own connection pools over one database (the lock order is what keeps them deadlock-free)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import grpc
import pytest

from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text
from tests.integration.transfers_harness import MAIN_ID, assert_counts_are_true, transfer

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", MAIN_ID, "shop-a")
A, B, C, D = (f"shop-a-sub-{n}" for n in range(1, 5))


class Servers:
    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self.channels = channels

    def platform(self, n: int) -> platform_pb2_grpc.PlatformServiceAsyncStub:
        return platform_pb2_grpc.PlatformServiceStub(self.channels[n % 2])

    def admin(self, n: int) -> admin_pb2_grpc.MerchantAdminServiceAsyncStub:
        return admin_pb2_grpc.MerchantAdminServiceStub(self.channels[n % 2])

    def merchant(self, n: int) -> merchant_pb2_grpc.MerchantServiceAsyncStub:
        return merchant_pb2_grpc.MerchantServiceStub(self.channels[n % 2])


@pytest.fixture
async def servers(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Servers]:
    second = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    assert second is not None
    POOL_DSN[id(second)] = database_url
    try:
        async with running_server(pool) as one, running_server(second) as two:
            yield Servers([one, two])
    finally:
        POOL_DSN.pop(id(second), None)
        await second.close()


async def _outcome(call: Awaitable[Any]) -> str:
    """ "OK" or the call's ErrorInfo reason."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return failure(err).reason
    return "OK"


async def _until_moved(pool: asyncpg.Pool, moves: int) -> None:
    """Returns once the history holds ``moves`` moves (the caller bounds the wait)."""
    for _ in iter(int, 1):
        if await pool.fetchval("SELECT count(*) FROM session_assignments") >= moves:
            return
        await asyncio.sleep(0.02)


async def _history_is_consistent(pool: asyncpg.Pool) -> None:
    """Every session's moves are numbered 1..n and chain from its initial agent to its current one."""
    sessions = await pool.fetch("SELECT session_id, assigned_agent_id, assignment FROM sessions")
    for s in sessions:
        moves = await pool.fetch(
            "SELECT step, from_agent_id, to_agent_id FROM session_assignments WHERE session_id = $1 ORDER BY step",
            s["session_id"],
        )
        holder = common_pb2.AssignmentDecision.FromString(s["assignment"]).agent_id
        for n, move in enumerate(moves, start=1):
            assert (move["step"], move["from_agent_id"]) == (n, holder), (s["session_id"], list(moves))
            holder = move["to_agent_id"]
        assert holder == s["assigned_agent_id"]


async def test_opens_transfers_and_reassignments_at_once_keep_every_count_true_without_deadlock(
    servers: Servers, pool: asyncpg.Pool
) -> None:
    await make_shop(servers.channels[0], agents={A: 10, B: 10, C: 10, D: 10})
    early = [(await servers.platform(n).OpenSession(open_request(), metadata=PLATFORM)).session for n in range(12)]
    rng = random.Random(14)
    calls: list[Awaitable[str]] = [
        _outcome(servers.platform(n).OpenSession(open_request(), metadata=PLATFORM)) for n in range(40)
    ]
    calls += [
        _outcome(servers.admin(n).TransferSession(transfer(s.session_id, rng.choice([A, B, C, D])), metadata=MAIN))
        for n, s in enumerate(early * 2)
    ]
    # D stops being designated and C is disabled, racing everything else.
    narrowed = admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=[A, B, C])
    disabled = admin_pb2.UpsertAgentRequest(
        merchant_id="shop-a", agent=admin_pb2.Agent(agent_id=C, disabled=True, im_permission=True)
    )
    calls.insert(10, _outcome(servers.admin(0).SetReceptionAgents(narrowed, metadata=OPS)))
    calls.insert(30, _outcome(servers.admin(1).UpsertAgent(disabled, metadata=OPS)))
    outcomes = await asyncio.gather(*calls)

    # Transfers may find their target already holds the session or no longer eligible; nothing else fails.
    assert set(outcomes) <= {"OK", "ALREADY_ASSIGNED", "AGENT_NOT_ELIGIBLE"}, outcomes
    counts = await assert_counts_are_true(pool, "shop-a")
    assert counts[C] == counts[D] == 0, counts
    assert sum(counts.values()) == 52
    await _history_is_consistent(pool)


async def test_reassignment_racing_opens_leaves_the_shop_balanced(servers: Servers, pool: asyncpg.Pool) -> None:
    """Without transfers (a person's choice, not the rule's) every pick is R2's: quiescent max − min ≤ 1."""
    await make_shop(servers.channels[0], agents={A: 10, B: 10, C: 10, D: 10})
    calls = [_outcome(servers.platform(n).OpenSession(open_request(), metadata=PLATFORM)) for n in range(36)]
    narrowed = admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=[A, B, C])
    calls.insert(18, _outcome(servers.admin(1).SetReceptionAgents(narrowed, metadata=OPS)))
    assert set(await asyncio.gather(*calls)) == {"OK"}
    counts = await assert_counts_are_true(pool, "shop-a")
    assert counts[D] == 0
    assert max(counts[a] for a in (A, B, C)) - min(counts[a] for a in (A, B, C)) <= 1, counts
    await _history_is_consistent(pool)


async def test_a_reply_racing_a_transfer_lands_in_the_session_whoever_holds_it(
    servers: Servers, pool: asyncpg.Pool
) -> None:
    await make_shop(servers.channels[0], agents={A: 10, B: 10})
    opened = [(await servers.platform(n).OpenSession(open_request(), metadata=PLATFORM)).session for n in range(8)]
    calls: list[Awaitable[str]] = []
    for n, s in enumerate(opened):
        holder, other = s.assigned_agent_id, B if s.assigned_agent_id == A else A
        reply = merchant_pb2.ReplyRequest(session_id=s.session_id, content=text("from the holder"), client_msg_id="h")
        by_main = merchant_pb2.ReplyRequest(session_id=s.session_id, content=text("from the main account"))
        calls += [
            _outcome(servers.merchant(n).Reply(reply, metadata=bearer("merchant", holder, "shop-a"))),
            _outcome(servers.admin(n + 1).TransferSession(transfer(s.session_id, other), metadata=MAIN)),
            _outcome(servers.merchant(n + 1).Reply(by_main, metadata=MAIN)),
        ]
    outcomes = await asyncio.gather(*calls)
    holders, transfers, mains = outcomes[0::3], outcomes[1::3], outcomes[2::3]
    assert set(transfers) == set(mains) == {"OK"}, outcomes
    # The holder's reply either committed before the transfer or found the session gone from its scope.
    assert set(holders) <= {"OK", "SESSION_NOT_FOUND"}, holders
    for s, holder_outcome in zip(opened, holders, strict=True):
        messages = await pool.fetch(
            "SELECT seq, sender_id FROM messages WHERE session_id = $1::uuid ORDER BY seq", s.session_id
        )
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        senders = [m["sender_id"] for m in messages[1:]]
        assert MAIN_ID in senders
        assert (s.assigned_agent_id in senders) == (holder_outcome == "OK")
    assert sum((await assert_counts_are_true(pool, "shop-a")).values()) == 8
    # R6 still holds: a close racing a transfer ends each session once; the loser is SESSION_CLOSED.
    closes = [
        _outcome(
            servers.platform(n).CloseSession(
                platform_pb2.CloseSessionRequest(
                    session_id=s.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
                ),
                metadata=PLATFORM,
            )
        )
        for n, s in enumerate(opened)
    ]
    late = [
        _outcome(servers.admin(n).TransferSession(transfer(s.session_id, A), metadata=MAIN))
        for n, s in enumerate(opened)
    ]
    ended = await asyncio.gather(*closes, *late)
    assert set(ended[:8]) == {"OK"}
    assert set(ended[8:]) <= {"OK", "ALREADY_ASSIGNED", "SESSION_CLOSED"}
    assert await pool.fetchval("SELECT count(*) FROM tickets") == 8
    assert await assert_counts_are_true(pool, "shop-a") == {}
    await _history_is_consistent(pool)


async def test_a_session_a_writer_holds_during_the_change_is_reassigned_right_after_it(
    servers: Servers, pool: asyncpg.Pool
) -> None:
    await make_shop(servers.channels[0], agents={A: 10, B: 10})
    opened = [(await servers.platform(0).OpenSession(open_request(), metadata=PLATFORM)).session for _ in range(4)]
    on_a = [s.session_id for s in opened if s.assigned_agent_id == A]
    assert len(on_a) == 2
    writer = await pool.acquire()
    try:
        held = writer.transaction()
        await held.start()
        # As a reply would: the session row first (it would wait for the merchant row next).
        await writer.execute("SELECT 1 FROM sessions WHERE session_id = $1::uuid FOR UPDATE", on_a[0])
        disable = admin_pb2.UpsertAgentRequest(
            merchant_id="shop-a", agent=admin_pb2.Agent(agent_id=A, disabled=True, im_permission=True)
        )
        change = asyncio.ensure_future(servers.admin(1).UpsertAgent(disable, metadata=OPS))
        # The change committed without waiting for the held session: the other one moved.
        async with asyncio.timeout(30):
            await _until_moved(pool, 1)
        assert not change.done()
        assert await pool.fetchval("SELECT assigned_agent_id FROM sessions WHERE session_id = $1::uuid", on_a[0]) == A
        await held.commit()
    finally:
        await pool.release(writer)
    await change
    assert await assert_counts_are_true(pool, "shop-a") == {B: 4}
    await _history_is_consistent(pool)
