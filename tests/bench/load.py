"""A closed-loop load generator for unary gRPC calls, and small statistics helpers.

``concurrency`` tasks each issue one call after another on one shared channel. Calls completing
during the warm-up are not counted; the rate is completions in the measured window ÷ its length.
The same driver (raw bytes in and out, no protobuf parsing of responses) runs the echo baseline and
the service, so the client's own CPU cost is the same on both sides of each ratio.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from tests.bench.env import BenchError, say

Metadata = tuple[tuple[str, str], ...]
MAX_ERROR_SHARE = 0.01  # more failed calls than this and the measurement is void


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    label: str
    calls: int
    errors: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, calls completed in the window
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.rate:,.0f} calls/s ({self.calls:,} in {self.seconds:.1f} s, {self.errors} errors; latency "
            f"p50 {percentile(self.latencies, 50) * 1000:.1f} ms, p99 {percentile(self.latencies, 99) * 1000:.1f} ms)"
        )


async def closed_loop(
    channel: grpc.aio.Channel,
    method: str,
    request: Callable[[int], bytes],
    metadata: Metadata,
    *,
    label: str,
    concurrency: int,
    duration: float,
    warmup: float,
    call_timeout: float = 10.0,
) -> LoadResult:
    """Runs ``concurrency`` callers of ``method`` for ``warmup + duration`` seconds.

    ``request(n)`` gives the serialized n-th request (n counts from 0 across all callers).
    """
    call = raw_unary(channel, method)
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, window_end = start + warmup, start + warmup + duration
    result = LoadResult(label, 0, 0, duration)
    failures = 0

    async def caller() -> None:
        nonlocal failures
        while (now := loop.time()) < window_end:
            began = now
            try:
                await call(request(next(counter)), metadata=metadata, timeout=call_timeout)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if result.first_error is None:
                    result.first_error = f"{exc.code().name}: {exc.details()}"
                continue
            done = loop.time()
            if window_start <= done < window_end:
                result.calls += 1
                result.latencies.append(done - began)

    async def progress() -> None:
        while True:
            await asyncio.sleep(2.0)
            now = loop.time()
            if now < window_start:
                say(f"  {label}: warming up")
            else:
                elapsed = min(now, window_end) - window_start
                rate = result.calls / elapsed if elapsed > 0 else 0.0
                say(f"  {label}: {elapsed:4.1f}/{duration:.0f} s, {result.calls:,} calls, {rate:,.0f}/s so far")

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(caller() for _ in range(concurrency))), warmup + duration + call_timeout + 5
        )
    except TimeoutError:
        raise BenchError(f"{label}: the callers did not finish in time") from None
    finally:
        reporter.cancel()
    result.errors = failures
    attempted = result.calls + failures
    if attempted == 0 or failures > MAX_ERROR_SHARE * attempted:
        raise BenchError(f"{label}: {failures} of {attempted} calls failed; first: {result.first_error}")
    return result


def raw_unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """``method`` as a bytes-in, bytes-out callable: no serializers, so no protobuf work on our side."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def open_loop(
    channel: grpc.aio.Channel,
    method: str,
    requests: Sequence[bytes],
    metadata: Metadata,
    *,
    label: str,
    rate: float,
    warmup: float,
    call_timeout: float = 10.0,
) -> LoadResult:
    """Sends ``requests[n]`` at ``start + n / rate``, whatever the answers do (an open loop).

    Each latency runs from the call's scheduled send time, not from when it was actually sent, so a
    stall delays and counts against every call scheduled during it (no coordinated omission). Calls
    scheduled in the first ``warmup`` seconds are not counted.
    """
    call = raw_unary(channel, method)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    counted_from = math.ceil(warmup * rate)
    measured = len(requests) - counted_from
    if measured <= 0:
        raise BenchError(f"{label}: no request after the warm-up")
    result = LoadResult(label, 0, 0, measured / rate)
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        scheduled = start + n / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        try:
            await call(requests[n], metadata=metadata, timeout=call_timeout)
        except grpc.aio.AioRpcError as exc:
            failures += 1
            if result.first_error is None:
                result.first_error = f"{exc.code().name}: {exc.details()}"
            return
        if n >= counted_from:
            result.calls += 1
            result.latencies.append(loop.time() - scheduled)

    total = len(requests) / rate + call_timeout + 5
    try:
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(len(requests)))), total)
    except TimeoutError:
        raise BenchError(f"{label}: the calls did not finish in time") from None
    result.errors = failures
    if failures > MAX_ERROR_SHARE * len(requests):
        raise BenchError(f"{label}: {failures} of {len(requests)} calls failed; first: {result.first_error}")
    return result
