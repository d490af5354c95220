"""The loud tenant of the isolation scenario, in its own process: holds N Connect streams and reads them.

Run by tests/bench/isolation.py (``python -m tests.bench.loud_shop ADDR MERCHANT AGENT STREAMS``); prints
``delivered <event frames>`` every 0.2 s and ``error <status>`` when a stream fails, until stdin closes.
Its own process, so reading thousands of frames does not slow the client that times the quiet tenant.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from escalation.v1 import merchant_pb2
from tests.bench.realtime import EOF, _connect, merchant_metadata

STREAMS_PER_CHANNEL = 100  # the server's default HTTP/2 max_concurrent_streams


async def _read(call: Any, counts: list[int], errors: list[str]) -> None:
    try:
        while (frame := await call.read()) is not EOF:
            if frame.HasField("event"):
                counts[0] += 1
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED:
            errors.append(f"{exc.code().name}: {exc.details()}")


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main(addr: str, merchant: str, agent: str, streams: int) -> None:
    channels = [
        grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-streams // STREAMS_PER_CHANNEL))
    ]
    metadata = merchant_metadata(merchant, agent)
    counts: list[int] = [0]
    errors: list[str] = []
    calls: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    for n in range(streams):
        call = _connect(channels[n // STREAMS_PER_CHANNEL], metadata)
        await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))
        calls.append(call)
        readers.append(asyncio.create_task(_read(call, counts, errors)))
        if n % 200 == 199:
            await asyncio.sleep(0.2)  # a ramp, as real clients connect over time
    done = asyncio.create_task(_stdin_closed())
    reported = 0
    while not done.done():
        print(f"delivered {counts[0]}", flush=True)
        while reported < len(errors):
            print(f"error {errors[reported]}", flush=True)
            reported += 1
        await asyncio.wait({done}, timeout=0.2)
    for call in calls:
        call.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
