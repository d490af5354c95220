"""Shared helpers for the SPEC R13 tests: transfer requests, the truth about counts, stored events."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any, cast

import asyncpg
import grpc

from escalation.store import events
from escalation.v1 import admin_pb2, merchant_pb2, merchant_pb2_grpc

MAIN_ID = "shop-a-main"


def transfer(
    session_id: str, agent_id: str, request_id: str | None = None, merchant_id: str = ""
) -> admin_pb2.TransferSessionRequest:
    return admin_pb2.TransferSessionRequest(
        merchant_id=merchant_id, session_id=session_id, agent_id=agent_id, request_id=request_id or uuid.uuid4().hex
    )


async def open_counts(pool: asyncpg.Pool, merchant_id: str) -> Counter[str]:
    """The truth: OPEN sessions per assigned agent, straight from the sessions table."""
    rows = await pool.fetch(
        "SELECT assigned_agent_id, count(*) AS n FROM sessions WHERE merchant_id = $1 AND state = 'OPEN' "
        "GROUP BY assigned_agent_id",
        merchant_id,
    )
    return Counter({r["assigned_agent_id"]: r["n"] for r in rows})


async def stored_counts(pool: asyncpg.Pool, merchant_id: str) -> dict[str, int]:
    rows = await pool.fetch("SELECT agent_id, open_sessions FROM agents WHERE merchant_id = $1", merchant_id)
    return {r["agent_id"]: r["open_sessions"] for r in rows}


async def assert_counts_are_true(pool: asyncpg.Pool, merchant_id: str) -> Counter[str]:
    """agents.open_sessions equals the number of OPEN sessions of every agent of the shop."""
    truth = await open_counts(pool, merchant_id)
    stored = await stored_counts(pool, merchant_id)
    assert stored == {agent: truth[agent] for agent in stored}, f"counts drifted: {stored} vs sessions {dict(truth)}"
    return truth


async def session_events(pool: asyncpg.Pool, session_id: str) -> list[tuple[str | None, merchant_pb2.MerchantEvent]]:
    """The session's merchant events in cursor order, each with the agent whose stream it is for."""
    rows = await pool.fetch(
        "SELECT cursor, agent_id, payload, event_time FROM merchant_events WHERE session_id = $1 ORDER BY cursor",
        uuid.UUID(session_id),
    )
    return [(r["agent_id"], events.from_row(r)) for r in rows]


# The stubs type neither the read/write API of a call without a request iterator nor EOF.
Call = Any
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


async def live(pool: asyncpg.Pool, channel: grpc.aio.Channel, who: tuple[tuple[str, str]]) -> Call:
    """A Connect stream from the shop's current log head: everything written afterwards is delivered."""
    head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = 'shop-a'")
    call: Call = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=who)
    await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=head)))
    return call


async def next_event(call: Call, wait: float = 10.0) -> merchant_pb2.MerchantEvent:
    """The stream's next event frame, skipping heartbeats."""
    async with asyncio.timeout(wait):
        while True:
            frame = await call.read()
            assert frame is not EOF, "stream ended"
            if frame.HasField("event"):
                event: merchant_pb2.MerchantEvent = frame.event
                return event
