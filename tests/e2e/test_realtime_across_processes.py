"""R8 across real processes: a merchant stream on one `escalation serve`, writes through another."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from escalation.v1 import merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.e2e import replicas
from tests.integration.grpc_harness import bearer
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.e2e

MAIN = bearer("merchant", "shop-a-main", "shop-a")
EOF_: object = getattr(grpc.aio, "EOF")  # noqa: B009


async def test_stream_on_one_process_gets_every_event_written_through_another_in_order(
    database_url: str, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=2) as (a, b):
        await asyncio.gather(replicas.wait_serving(a), replicas.wait_serving(b))
        async with grpc.aio.insecure_channel(a.grpc_addr) as on_a, grpc.aio.insecure_channel(b.grpc_addr) as on_b:
            await make_shop(on_b, agents={"shop-a-sub-1": 50})
            call: Any = cast(Any, merchant_pb2_grpc.MerchantServiceStub(on_a)).Connect(metadata=MAIN)
            await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=0)))
            platform = platform_pb2_grpc.PlatformServiceStub(on_b)
            session = (await platform.OpenSession(open_request(), metadata=PLATFORM)).session
            delays: list[float] = []
            cursors: list[int] = []
            async with asyncio.timeout(30):
                # Drain the replay (SessionAssigned + the opening message) first.
                while len(cursors) < 2:
                    frame = await call.read()
                    assert frame is not EOF_
                    if frame.HasField("event"):
                        cursors.append(frame.event.cursor)
                for i in range(100):
                    sent = time.perf_counter()
                    await platform.SendMessage(
                        platform_pb2.SendMessageRequest(session_id=session.session_id, content=text(f"m{i}")),
                        metadata=PLATFORM,
                    )
                    while True:
                        frame = await call.read()
                        assert frame is not EOF_
                        if frame.HasField("event"):
                            break
                    delays.append(time.perf_counter() - sent)
                    cursors.append(frame.event.cursor)
                    assert frame.event.message_added.message.seq == i + 2
            assert cursors == list(range(1, 103)), "every event, in order, no gap, no duplicate"
            delays.sort()
            p50, p99 = delays[49] * 1000, delays[98] * 1000
            print(f"\nSendMessage on B → event on A's stream: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            call.cancel()
        assert a.terminate() == 0, a.output()
        assert b.terminate() == 0, b.output()
