"""Throughput of unary RPCs: the bare echo baseline, OpenSession and SendMessage (SPEC §5, first line).

Both servers run as separate processes; the client is this process, with the same closed-loop driver,
the same concurrency and the same request metadata (a bearer token, which the echo server ignores).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable

import asyncpg
import grpc

from escalation import auth
from escalation.auth import Identity, Role
from escalation.devenv.ports import free_port
from escalation.services import directory
from escalation.v1 import common_pb2, platform_pb2
from tests.bench import echo_server
from tests.bench.cpu import CpuGroups, CpuMeter
from tests.bench.env import JWT_SECRET, READY_TIMEOUT, BenchEnv, BenchError, Child
from tests.bench.load import LoadResult, Metadata, closed_loop, open_loop, raw_unary
from tests.bench.sizes import Sizes

OPEN = "/escalation.v1.PlatformService/OpenSession"
SEND = "/escalation.v1.PlatformService/SendMessage"
CLOSE = "/escalation.v1.PlatformService/CloseSession"
PLATFORM_AGENT = "bench-pa-1"
OPENING_TEXT = "The buyer wants it shipped today: can you ship order 1234567890 today?"
FOLLOW_UP_TEXT = "The buyer is still waiting: please confirm the courier and the tracking number."


def platform_metadata() -> Metadata:
    token = auth.mint(key=JWT_SECRET, algorithm="HS256", subject=PLATFORM_AGENT, role=Role.PLATFORM, ttl_seconds=3600)
    return (("authorization", f"Bearer {token}"),)


def merchant_id(n: int) -> str:
    return f"bench-m{n:03d}"


def _text(body: str) -> common_pb2.MessageContent:
    return common_pb2.MessageContent(text=common_pb2.Text(body=body))


def open_request(merchant: str, n: int) -> bytes:
    return platform_pb2.OpenSessionRequest(
        request_id=uuid.uuid4().hex,
        merchant_id=merchant,
        category=common_pb2.CATEGORY_ORDER_OPERATION,
        order_id=f"order-{n}",
        messages=[_text(OPENING_TEXT)],
    ).SerializeToString()


async def make_merchants(pool: asyncpg.Pool, sizes: Sizes) -> None:
    """``sizes.merchants`` shops, each with designated agents (capacity 10, the default)."""
    for m in range(sizes.merchants):
        mid = merchant_id(m)
        await make_merchant(
            pool, mid, f"{mid}-main", [f"{mid}-sub-{a}" for a in range(1, sizes.agents_per_merchant + 1)]
        )


async def make_merchant(pool: asyncpg.Pool, mid: str, main_account: str, agents: list[str]) -> None:
    """One shop whose ``agents`` (capacity 10, the default) are its designated reception agents."""
    ops = Identity("bench-ops", Role.OPS)
    await directory.upsert_merchant(
        pool, merchant_id=mid, display_name=mid, main_account_id=main_account, disabled=False
    )
    target = directory.MerchantScope(mid, ops)
    for agent in agents:
        await directory.upsert_agent(
            pool, target, agent_id=agent, display_name=agent, im_permission=True, disabled=False, capacity=10
        )
    await directory.set_reception_agents(pool, target, agents)


async def run_echo(
    env: BenchEnv, sizes: Sizes, metadata: Metadata, cpu_groups: Callable[[Child], CpuGroups]
) -> tuple[LoadResult, dict[str, float]]:
    """The baseline in its own process; returns the result and the cores each process used."""
    port = free_port()
    child = env.spawn("echo-server", [sys.executable, "-m", "tests.bench.echo_server", "--port", str(port)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _wait_echo(channel, child.check_alive)
            # The same size as an OpenSession request, so both carry the same bytes.
            payload = open_request(merchant_id(0), 0)
            meter = CpuMeter(cpu_groups(child))
            result = await closed_loop(
                channel,
                echo_server.METHOD,
                lambda n: payload,
                metadata,
                label="echo",
                concurrency=sizes.concurrency,
                duration=sizes.duration,
                warmup=sizes.warmup,
            )
            used = meter.stop()
    finally:
        env.stop_child(child)
    return result, used


async def _wait_echo(channel: grpc.aio.Channel, check_alive: Callable[[], None]) -> None:
    call = raw_unary(channel, echo_server.METHOD)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        check_alive()
        try:
            await call(b"ping", timeout=1)
        except grpc.aio.AioRpcError:
            if time.monotonic() >= deadline:
                raise BenchError(f"echo server not answering within {READY_TIMEOUT:.0f} s") from None
            await asyncio.sleep(0.05)
        else:
            return


async def run_opens(
    channel: grpc.aio.Channel, sizes: Sizes, metadata: Metadata, *, merchants: int, duration: float, label: str
) -> LoadResult:
    return await closed_loop(
        channel,
        OPEN,
        lambda n: open_request(merchant_id(n % merchants), n),
        metadata,
        label=label,
        concurrency=sizes.concurrency,
        duration=duration,
        warmup=sizes.warmup,
    )


async def run_sends(channel: grpc.aio.Channel, sizes: Sizes, metadata: Metadata, sessions: list[str]) -> LoadResult:
    """Round-robin over ``sessions``: with more sessions than calls in flight, no two calls wait on one row."""
    content = _text(FOLLOW_UP_TEXT)

    def request(n: int) -> bytes:
        return platform_pb2.SendMessageRequest(
            session_id=sessions[n % len(sessions)], client_msg_id=uuid.uuid4().hex, content=content
        ).SerializeToString()

    return await closed_loop(
        channel,
        SEND,
        request,
        metadata,
        label="SendMessage",
        concurrency=sizes.concurrency,
        duration=sizes.duration,
        warmup=sizes.warmup,
    )


async def open_more(
    channel: grpc.aio.Channel, metadata: Metadata, sizes: Sizes, count: int, concurrency: int = 32
) -> None:
    """Opens ``count`` sessions spread over the merchants (setup, not measured)."""
    call = raw_unary(channel, OPEN)
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await call(open_request(merchant_id(n % sizes.merchants), n), metadata=metadata, timeout=30)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_open_loop(channel: grpc.aio.Channel, sizes: Sizes, metadata: Metadata) -> LoadResult:
    """OpenSession at ``sizes.open_loop_rate`` per second on a fixed schedule, over all the merchants."""
    total = round((sizes.warmup + sizes.open_loop_seconds) * sizes.open_loop_rate)
    # Serialized beforehand, so building them never delays a scheduled send.
    requests = [open_request(merchant_id(n % sizes.merchants), n) for n in range(total)]
    return await open_loop(
        channel,
        OPEN,
        requests,
        metadata,
        label=f"OpenSession at {sizes.open_loop_rate:.0f}/s",
        rate=sizes.open_loop_rate,
        warmup=sizes.warmup,
    )
