"""Merchant streams (SPEC §5, second and last lines): fan-out latency across replicas, memory per stream.

Fan-out: every merchant's main account holds a Connect stream on replica A while sessions are opened
at a steady rate through replica B; latency = arrival on the stream − the event's ``event_time`` (the
database clock when the writing transaction allocated the event's cursor, just before its commit).

Memory: a fresh ``escalation serve`` process, its RSS before and after ``sizes.memory_streams``
Connect streams are established (each has registered its presence row).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc

from escalation import auth
from escalation.auth import Role
from escalation.v1 import merchant_pb2, merchant_pb2_grpc
from tests.bench.api import OPEN, merchant_id, open_request
from tests.bench.env import JWT_SECRET, BenchEnv, BenchError, Child, say
from tests.bench.load import Metadata, raw_unary
from tests.bench.sizes import Sizes

EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009  (missing from the type stubs)
_BATCH = 200  # streams opened at a time


def merchant_metadata(merchant: str, agent: str) -> Metadata:
    token = auth.mint(
        key=JWT_SECRET, algorithm="HS256", subject=agent, role=Role.MERCHANT, merchant_id=merchant, ttl_seconds=3600
    )
    return (("authorization", f"Bearer {token}"),)


@dataclass
class FanOutResult:
    opens: int
    failed_opens: int
    expected: int
    latencies: list[float] = field(default_factory=list)  # seconds
    stream_errors: list[str] = field(default_factory=list)


@dataclass
class MemoryResult:
    streams: int
    rss_before_mb: float
    rss_after_mb: float
    connect_seconds: float

    @property
    def per_stream_kb(self) -> float:
        return (self.rss_after_mb - self.rss_before_mb) * 1024 / self.streams


def _connect(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
    # The generated stub is typed loosely for bidi streams; the call object has write/read/cancel.
    return cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=metadata)


async def _read_events(call: Any, on_event: Any, errors: list[str]) -> None:
    try:
        while True:
            frame = await call.read()
            if frame is EOF:
                return
            if frame.HasField("event"):
                on_event(frame.event, time.time())
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED:
            errors.append(f"{exc.code().name}: {exc.details()}")
    except asyncio.CancelledError:
        return


async def fan_out(
    env: BenchEnv, sizes: Sizes, database_url: str, stream_addr: str, platform_metadata: Metadata
) -> FanOutResult:
    writer, write_addr = await env.serve("escalation-serve-b", database_url)
    try:
        return await _fan_out(sizes, stream_addr, write_addr, platform_metadata)
    finally:
        env.stop_child(writer)


async def _fan_out(sizes: Sizes, stream_addr: str, write_addr: str, platform_metadata: Metadata) -> FanOutResult:
    opens = round(sizes.fanout_rate * sizes.fanout_seconds)
    result = FanOutResult(opens=0, failed_opens=0, expected=2 * opens)  # SessionAssigned + the opening message
    received = asyncio.Event()

    def on_event(event: merchant_pb2.MerchantEvent, at: float) -> None:
        result.latencies.append(at - event.event_time.ToNanoseconds() / 1e9)
        if len(result.latencies) >= result.expected:
            received.set()

    async with grpc.aio.insecure_channel(stream_addr) as on_a, grpc.aio.insecure_channel(write_addr) as on_b:
        calls = []
        for m in range(sizes.merchants):
            mid = merchant_id(m)
            call = _connect(on_a, merchant_metadata(mid, f"{mid}-main"))
            await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))  # live events only
            calls.append(call)
        readers = [asyncio.create_task(_read_events(c, on_event, result.stream_errors)) for c in calls]
        try:
            await asyncio.sleep(1.0)  # every stream subscribed before the first write
            if result.stream_errors:
                raise BenchError(f"merchant streams failed: {result.stream_errors[0]}")
            say(f"  {len(calls)} merchant streams on replica A; opening {opens} sessions through replica B")
            call_open = raw_unary(on_b, OPEN)
            loop = asyncio.get_running_loop()
            start = loop.time()

            async def open_one(n: int) -> None:
                try:
                    await call_open(
                        open_request(merchant_id(n % sizes.merchants), n), metadata=platform_metadata, timeout=10
                    )
                    result.opens += 1
                except grpc.aio.AioRpcError:
                    result.failed_opens += 1

            tasks = []
            for n in range(opens):
                await asyncio.sleep(max(0.0, start + n / sizes.fanout_rate - loop.time()))
                tasks.append(asyncio.create_task(open_one(n)))
            await asyncio.gather(*tasks)
            result.expected = 2 * result.opens
            if len(result.latencies) < result.expected:
                try:
                    await asyncio.wait_for(received.wait(), 10)
                except TimeoutError:
                    say(f"  only {len(result.latencies)} of {result.expected} events arrived within 10 s")
        finally:
            for call in calls:
                call.cancel()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


async def stream_memory(env: BenchEnv, sizes: Sizes, database_url: str) -> MemoryResult:
    server, addr = await env.serve("escalation-serve-streams", database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        return await _stream_memory(sizes, server, addr, pool)
    finally:
        await pool.close()
        env.stop_child(server)


async def _stream_memory(sizes: Sizes, server: Child, addr: str, pool: asyncpg.Pool) -> MemoryResult:
    """Opens the streams in batches, each once the server registered the previous one (its presence rows).

    Opening thousands of streams at once makes gRPC refuse some (a trivial grpc.aio server does the
    same); real clients connect over time, so the ramp is part of the setup, not of the measurement.
    """
    await asyncio.sleep(1.0)
    before = rss_mb(server.proc.pid)
    presence_before = int(await pool.fetchval("SELECT count(*) FROM agent_presence"))
    agents = [
        (merchant_id(m), f"{merchant_id(m)}-sub-{a}")
        for m in range(sizes.merchants)
        for a in range(1, sizes.agents_per_merchant + 1)
    ]
    metadata = [merchant_metadata(mid, agent) for mid, agent in agents]
    # One TCP connection per channel (gRPC would otherwise share one between identical channels).
    channels = [
        grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(sizes.memory_channels)
    ]
    calls: list[Any] = []
    errors: list[str] = []
    readers: list[asyncio.Task[None]] = []
    started = time.monotonic()
    try:
        for first in range(0, sizes.memory_streams, _BATCH):
            batch = [
                _connect(channels[n % len(channels)], metadata[n % len(metadata)])
                for n in range(first, min(first + _BATCH, sizes.memory_streams))
            ]
            await asyncio.gather(*(c.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello())) for c in batch))
            calls += batch
            readers += [asyncio.create_task(_read_events(c, lambda e, t: None, errors)) for c in batch]
            await _wait_registered(pool, server, presence_before + len(calls), errors)
            if len(calls) % 2000 == 0:
                say(f"  {len(calls):,} streams established; server RSS {rss_mb(server.proc.pid):,.0f} MB")
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(2.0)  # let allocations settle
        after = rss_mb(server.proc.pid)
        say(
            f"  {len(calls):,} streams established in {connect_seconds:.1f} s; "
            f"server RSS {before:,.0f} → {after:,.0f} MB"
        )
        return MemoryResult(len(calls), before, after, connect_seconds)
    finally:
        for call in calls:
            call.cancel()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close(grace=None)


async def _wait_registered(pool: asyncpg.Pool, server: Child, count: int, errors: list[str]) -> None:
    give_up = time.monotonic() + 30
    while int(await pool.fetchval("SELECT count(*) FROM agent_presence")) < count:
        server.check_alive()
        if errors:
            raise BenchError(f"a merchant stream failed: {errors[0]}")
        if time.monotonic() > give_up:
            raise BenchError(f"the server did not register {count:,} streams within 30 s")
        await asyncio.sleep(0.05)
