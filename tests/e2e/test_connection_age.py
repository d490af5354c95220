"""ESCALATION_GRPC_MAX_CONNECTION_AGE_SECONDS: a real `escalation serve` ends old connections.

Behind an L4 balancer a client keeps its first replica for life unless the server sends GOAWAY; with a
1 s age and 1 s grace, a Connect stream that would otherwise run for ever (heartbeats) ends
UNAVAILABLE within seconds, and a new call on the same channel succeeds (the client reconnected).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from escalation.v1 import merchant_pb2, merchant_pb2_grpc, platform_pb2_grpc
from tests.e2e import replicas
from tests.integration.grpc_harness import bearer
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.e2e

MAIN = bearer("merchant", "shop-a-main", "shop-a")
EOF_: object = getattr(grpc.aio, "EOF")  # noqa: B009


async def _hold(open_until: asyncio.Event) -> Any:
    yield merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello())
    await open_until.wait()


@pytest.mark.parametrize(("age", "ended"), [("1", True), ("0", False)])
async def test_an_aged_connection_is_ended_so_the_client_reconnects(
    database_url: str, tmp_path: Path, age: str, ended: bool
) -> None:
    env = {
        "ESCALATION_GRPC_MAX_CONNECTION_AGE_SECONDS": age,
        "ESCALATION_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "1",
        "ESCALATION_STREAM_HEARTBEAT_SECONDS": "0.5",
    }
    with replicas.serving(database_url, tmp_path, count=1, **env) as (server,):
        await replicas.wait_serving(server)
        open_until = asyncio.Event()
        async with grpc.aio.insecure_channel(server.grpc_addr) as channel:
            await make_shop(channel, agents={"shop-a-sub-1": 10})
            merchant = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel))
            call = merchant.Connect(_hold(open_until), metadata=MAIN)
            code: grpc.StatusCode | None = None
            try:
                async with asyncio.timeout(5):
                    while await call.read() is not EOF_:
                        pass
            except TimeoutError:
                # Still streaming 5 s later (age + grace + jitter is under 2.5 s): not aged out.
                call.cancel()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            open_until.set()
            assert (code == grpc.StatusCode.UNAVAILABLE) is ended, (code, server.output())
            # The channel reconnects by itself: the next call works.
            opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(open_request(), metadata=PLATFORM)
            assert opened.session.session_id
