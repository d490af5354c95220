"""SPEC §3, AIP-158: a list page stops before it would pass PAGE_BYTE_BUDGET, and its token resumes there.

The session is built with maximal messages (2,000 four-byte emoji each, inserted directly so the test
does not depend on the session size bound): 600 of them are 4.8 MB, more than the 4 MiB that stock
clients accept by default. Both the stock Python client and grpcurl page through it with page_size
1000 and see every message exactly once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest

from escalation.api.server import Server
from escalation.domain.limits import PAGE_BYTE_BUDGET
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import running_server, settings, token
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.integration

GRPCURL = Path(sys.executable).with_name("grpcurl")
DEFAULT_CLIENT_LIMIT = 4 * 1024 * 1024  # bytes: grpc's and grpcurl's default receive limit
EMOJI = [chr(c) for c in range(0x1F600, 0x1F650)]  # four UTF-8 bytes each


async def _session_of_maximal_messages(pool: asyncpg.Pool, channel: grpc.aio.Channel, count: int) -> str:
    await make_shop(channel)
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    opened = await platform.OpenSession(open_request(), metadata=PLATFORM)
    session_id: str = opened.session.session_id
    await pool.executemany(
        "INSERT INTO messages (session_id, seq, sender, sender_id, kind, content)"
        " VALUES ($1, $2, 'PLATFORM', 'pa-1', 'TEXT', $3)",
        [
            (
                session_id,
                seq,
                common_pb2.MessageContent(
                    text=common_pb2.Text(body=EMOJI[seq % len(EMOJI)] * 2000)
                ).SerializeToString(),
            )
            for seq in range(2, count + 2)
        ],
    )
    return session_id


@pytest.mark.parametrize("count", [600, 1000])
async def test_stock_python_client_pages_through_maximal_messages_with_page_size_1000(
    pool: asyncpg.Pool, count: int
) -> None:
    async with running_server(pool) as channel:
        session_id = await _session_of_maximal_messages(pool, channel, count)
        platform = platform_pb2_grpc.PlatformServiceStub(channel)  # a channel with grpc's default limits
        seen: list[int] = []
        pages, page_token = 0, ""
        while True:
            page = await platform.ListMessages(
                platform_pb2.ListMessagesRequest(session_id=session_id, page_size=1000, page_token=page_token),
                metadata=PLATFORM,
            )
            assert page.ByteSize() <= PAGE_BYTE_BUDGET + len(page.next_page_token) + 8 < DEFAULT_CLIENT_LIMIT
            seen += [m.seq for m in page.messages]
            pages += 1
            if not page.next_page_token:
                break
            page_token = page.next_page_token
    assert seen == list(range(1, count + 2)), "every message exactly once, in order"
    assert pages >= 5, "4.8 MB and more do not fit one 1 MiB page"


async def _grpcurl(addr: str, method: str, request: dict[str, object]) -> dict[str, object]:
    bearer = f"authorization: Bearer {token('platform', 'pa-1')}"
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        "-plaintext",
        "-H",
        bearer,
        "-d",
        json.dumps(request),
        addr,
        method,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    answer: dict[str, object] = json.loads(out)
    return answer


async def test_grpcurl_pages_through_maximal_messages_with_page_size_1000(pool: asyncpg.Pool) -> None:
    server = Server(settings(), pool, address="127.0.0.1:0", dsn=POOL_DSN[id(pool)])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            session_id = await _session_of_maximal_messages(pool, channel, 600)
        seen: list[int] = []
        page_token: object = ""
        while True:
            page = await _grpcurl(
                f"127.0.0.1:{server.port}",
                "escalation.v1.PlatformService/ListMessages",
                {"session_id": session_id, "page_size": 1000, "page_token": page_token},
            )
            messages = page["messages"]
            assert isinstance(messages, list)
            seen += [int(m["seq"]) for m in messages]
            page_token = page.get("next_page_token", page.get("nextPageToken", ""))
            if not page_token:
                break
    finally:
        await server.stop(grace=0.5)
    assert seen == list(range(1, 602)), "every message exactly once, in order"
