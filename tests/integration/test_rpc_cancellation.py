"""A client that goes away is counted once, CANCELLED or DEADLINE_EXCEEDED, never INTERNAL (SPEC §3).

Unary calls are held mid-flight by a lock another connection keeps on the session row; Connect streams
are cancelled while idle and while the server is blocked writing to a client that stopped reading.
The counts are read from the process's Prometheus registry, which /metrics serves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg
import grpc
import pytest
import structlog
from prometheus_client import REGISTRY

from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import bearer, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text
from tests.integration.test_realtime import _flood

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")
CODES = ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN")


def handled(service: str, method: str) -> dict[str, float]:
    """grpc_server_handled_total and the handling-seconds count for one method, by code."""
    labels = {"grpc_service": f"escalation.v1.{service}", "grpc_method": method}
    counts = {}
    for code in CODES:
        counts[code] = sum(
            REGISTRY.get_sample_value("grpc_server_handled_total", {**labels, "grpc_type": kind, "grpc_code": code})
            or 0.0
            for kind in ("unary", "server_stream", "bidi_stream")
        )
    counts["observed"] = sum(
        REGISTRY.get_sample_value("grpc_server_handling_seconds_count", {**labels, "grpc_type": kind}) or 0.0
        for kind in ("unary", "server_stream", "bidi_stream")
    )
    return counts


async def counted(service: str, method: str, before: dict[str, float], want: Mapping[str, float]) -> dict[str, float]:
    """Waits (≤ 5 s) until ``method`` has been counted as often as ``want`` says; returns the increments."""
    delta: dict[str, float] = {}
    for _ in range(100):
        now = handled(service, method)
        delta = {k: now[k] - before[k] for k in now}
        if all(delta[k] >= v for k, v in want.items()):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # nothing more arrives later (counted exactly once)
    now = handled(service, method)
    return {k: now[k] - before[k] for k in now if now[k] - before[k]}


def _errors(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(e) for e in logs if e["log_level"] in ("error", "critical", "exception")]


async def _held_session(pool: asyncpg.Pool, channel: grpc.aio.Channel) -> common_pb2.Session:
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(open_request(), metadata=PLATFORM)
    return opened.session


async def test_unary_calls_cancelled_or_expired_mid_flight_are_counted_once(pool: asyncpg.Pool) -> None:
    async with running_server(pool) as channel:
        session = await _held_session(pool, channel)
        stub = platform_pb2_grpc.PlatformServiceStub(channel)
        before = handled("PlatformService", "SendMessage")
        async with pool.acquire() as locker, locker.transaction():
            # SendMessage waits for this row lock: the calls are in flight inside the handler.
            await locker.execute(
                "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE", uuid.UUID(session.session_id)
            )
            with structlog.testing.capture_logs() as logs:
                calls = [
                    stub.SendMessage(
                        platform_pb2.SendMessageRequest(session_id=session.session_id, content=text(f"m{i}")),
                        metadata=PLATFORM,
                    )
                    for i in range(3)
                ]
                expiring = [
                    stub.SendMessage(
                        platform_pb2.SendMessageRequest(session_id=session.session_id, content=text(f"d{i}")),
                        metadata=PLATFORM,
                        timeout=0.5,
                    )
                    for i in range(2)
                ]
                await asyncio.sleep(0.3)
                for call in calls:
                    call.cancel()
                for call in expiring:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call
                    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                delta = await counted(
                    "PlatformService", "SendMessage", before, {"CANCELLED": 3, "DEADLINE_EXCEEDED": 2}
                )
        assert delta == {"CANCELLED": 3, "DEADLINE_EXCEEDED": 2, "observed": 5}
        assert not _errors(logs)


@pytest.mark.parametrize("mid_write", [False, True], ids=["idle", "mid-write"])
async def test_connect_streams_the_client_cancels_are_counted_cancelled_never_internal(
    pool: asyncpg.Pool, mid_write: bool
) -> None:
    async with running_server(pool) as channel:
        session = await _held_session(pool, channel)
        if mid_write:
            # ~16 MiB that nobody reads: the server blocks in context.write on a full window.
            await _flood(pool, session, 500, 32 * 1024)
        before = handled("MerchantService", "Connect")
        with structlog.testing.capture_logs() as logs:
            for _ in range(4):
                call: Any = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=MAIN)
                await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=0)))
                await asyncio.sleep(0.5)
                call.cancel()
            delta = await counted("MerchantService", "Connect", before, {"CANCELLED": 4})
        assert delta == {"CANCELLED": 4, "observed": 4}
        assert not _errors(logs)
        assert not [e for e in logs if e["event"] == "rpc.internal_error"]
