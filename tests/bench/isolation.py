"""Tenant isolation under stream load (SPEC §3 Limits, issue 10 §2): one shop's streams vs another's unary p99.

A fresh ``escalation serve`` (its per-identity Connect cap and HTTP/2 stream limit raised, so the
scenario can be built at all). The quiet shop's main account calls ``MerchantService.GetSession`` on one
of its sessions with a few callers in a closed loop: once with nothing else going on (quiet), once
while the loud shop's main account holds ``sizes.isolation_streams`` Connect streams and the loud
shop's events arrive in bursts (SendMessage into its sessions through the same server). The loud streams
live in a process of their own (tests/bench/loud_shop.py), as another tenant's clients would. The figure is
p99(loaded) ÷ p99(quiet); the target is ≤ 2. Every loud stream must receive every burst event (the
load is real, not dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import grpc

from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc
from tests.bench import cpu
from tests.bench.api import merchant_id
from tests.bench.env import REPO, BenchEnv, BenchError, say
from tests.bench.load import LoadResult, Metadata, closed_loop, percentile
from tests.bench.realtime import merchant_metadata
from tests.bench.sizes import Sizes

GET_SESSION = "/escalation.v1.MerchantService/GetSession"
CALLERS = 4  # the quiet shop's closed-loop callers: a light, steady unary load
# The Connect cap per identity (wt-limits' ESCALATION_CONNECT_STREAMS_PER_IDENTITY) and the HTTP/2 stream
# limit must not refuse the scenario's own streams: it measures fan-out cost, not the cap.
SERVER_ENV = {
    "ESCALATION_CONNECT_STREAMS_PER_IDENTITY": "1000000",
    "ESCALATION_GRPC_MAX_CONCURRENT_STREAMS": "1000000",
}


@dataclass
class IsolationResult:
    streams: int
    quiet: LoadResult
    loaded: LoadResult
    events_sent: int
    delivered: int  # event frames that reached the loud streams
    expected: int  # events_sent × streams
    errors: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return percentile(self.loaded.latencies, 99) / percentile(self.quiet.latencies, 99)


async def run_isolation(env: BenchEnv, sizes: Sizes, database_url: str, platform_metadata: Metadata) -> IsolationResult:
    server, addr = await env.serve("escalation-serve-isolation", database_url, extra_env=SERVER_ENV)
    try:
        groups: dict[str, Callable[[], list[int]]] = {"server": lambda: [server.proc.pid]}
        pg_pid = env.pg.pid if env.pg is not None else None
        if pg_pid is not None:
            groups["postgres"] = lambda: cpu.with_children(pg_pid)
        return await _run(sizes, addr, platform_metadata, database_url, groups)
    finally:
        env.stop_child(server)


async def _open(channel: grpc.aio.Channel, merchant: str, metadata: Metadata) -> str:
    opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(
        platform_pb2.OpenSessionRequest(
            request_id=uuid.uuid4().hex,
            merchant_id=merchant,
            category=common_pb2.CATEGORY_ORDER_OPERATION,
            order_id="isolation",
            messages=[common_pb2.MessageContent(text=common_pb2.Text(body="Can you ship today?"))],
        ),
        metadata=metadata,
        timeout=10,
    )
    return str(opened.session.session_id)


async def _run(
    sizes: Sizes,
    addr: str,
    platform_metadata: Metadata,
    database_url: str,
    groups: dict[str, Callable[[], list[int]]],
) -> IsolationResult:
    loud, quiet = merchant_id(0), merchant_id(1)
    quiet_md = merchant_metadata(quiet, f"{quiet}-main")
    async with grpc.aio.insecure_channel(addr) as unary:
        target = await _open(unary, quiet, platform_metadata)
        loud_sessions = [await _open(unary, loud, platform_metadata) for _ in range(sizes.isolation_sessions)]
        request = platform_pb2.GetSessionRequest(session_id=target).SerializeToString()

        async def measure(label: str) -> LoadResult:
            meter = cpu.CpuMeter(groups)
            result = await closed_loop(
                unary,
                GET_SESSION,
                lambda _n: request,
                quiet_md,
                label=label,
                concurrency=CALLERS,
                duration=sizes.isolation_seconds,
                warmup=1.0,
            )
            say(f"  CPU during {label}: {cpu.describe(meter.stop())}")
            return result

        say(f"  quiet: {CALLERS} callers of the quiet shop's GetSession, nothing else running")
        quiet_result = await measure("GetSession, quiet")
        say(f"  {quiet_result.label}: {quiet_result.summary()}")

        say(f"  opening {sizes.isolation_streams:,} Connect streams of the loud shop's main account (own process)")
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.loud_shop",
            addr,
            loud,
            f"{loud}-main",
            str(sizes.isolation_streams),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO),
        )
        groups["loud client"] = lambda: [child.pid]
        progress = _Progress()
        watcher = asyncio.create_task(progress.follow(child))
        try:
            await _all_connected(database_url, loud, sizes.isolation_streams, progress)
            say(f"  {sizes.isolation_streams:,} streams connected in {time.monotonic() - started:.1f} s")
            sent = [0]
            say(
                f"  loaded: the same GetSession while bursts of {sizes.isolation_burst} events every "
                f"{sizes.isolation_burst_every:.1f} s reach the {sizes.isolation_streams:,} streams"
            )
            stop = asyncio.Event()
            burster = asyncio.create_task(_bursts(unary, sizes, loud_sessions, platform_metadata, sent, stop))
            try:
                loaded_result = await measure("GetSession, loaded")
            finally:
                stop.set()
                await burster
            say(f"  {loaded_result.label}: {loaded_result.summary()}")
            expected = sent[0] * sizes.isolation_streams
            for _ in range(150):  # up to 30 s for the last burst to reach every stream
                if progress.delivered >= expected or progress.errors:
                    break
                await asyncio.sleep(0.2)
            say(f"  {progress.delivered:,} of {expected:,} event frames delivered to the loud streams")
            return IsolationResult(
                sizes.isolation_streams,
                quiet_result,
                loaded_result,
                sent[0],
                progress.delivered,
                expected,
                progress.errors,
            )
        finally:
            assert child.stdin is not None
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def _bursts(
    channel: grpc.aio.Channel,
    sizes: Sizes,
    sessions: list[str],
    metadata: Metadata,
    sent: list[int],
    stop: asyncio.Event,
) -> None:
    """Bursts until ``stop`` is set, each one whole (so ``sent`` counts exactly the events written)."""
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    while not stop.is_set():
        for i in range(sizes.isolation_burst):
            await stub.SendMessage(
                platform_pb2.SendMessageRequest(
                    session_id=sessions[i % len(sessions)],
                    content=common_pb2.MessageContent(text=common_pb2.Text(body=f"burst {sent[0]}")),
                ),
                metadata=metadata,
                timeout=10,
            )
            sent[0] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sizes.isolation_burst_every)


class _Progress:
    """What the loud process reports on its stdout."""

    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[str] = []

    async def follow(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            kind, _, value = raw.decode().strip().partition(" ")
            if kind == "delivered":
                self.delivered = int(value)
            elif kind == "error":
                self.errors.append(value)


async def _all_connected(database_url: str, merchant: str, streams: int, progress: _Progress) -> None:
    """Waits until the server registered every stream (their presence rows), or one failed."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    assert pool is not None
    count = 0
    try:
        for _ in range(600):
            if progress.errors:
                raise BenchError(f"loud streams failed: {progress.errors[0]}")
            count = await pool.fetchval("SELECT count(*) FROM agent_presence WHERE merchant_id = $1", merchant)
            if count >= streams:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"only {count} of {streams} streams registered within 60 s")
    finally:
        await pool.close()
