"""SPEC R4 idempotency keys per verified sender, replays before state checks, and the R7 size bound.

Issue 9 §7: a client_msg_id belongs to (session, sender), and a retry of a request that succeeded
returns the original whatever changed since (template deleted, session ended, IM permission removed).
Issue 9 §5: a session holds at most MAX_SESSION_MESSAGES messages and MAX_SESSION_CONTENT_BYTES of
content; the message that would pass either is refused FAILED_PRECONDITION SESSION_FULL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import asyncpg
import grpc
import pytest

from escalation.domain import limits
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, SUPERVISOR, make_shop, open_request, text
from tests.integration.test_realtime import EOF

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")
SUB1 = bearer("merchant", "shop-a-sub-1", "shop-a")
RESOLVED = platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        yield ch


async def _session(channel: grpc.aio.Channel) -> str:
    """A session of shop-a assigned to its only agent, shop-a-sub-1 (the main account also sees it)."""
    await make_shop(channel, agents={"shop-a-sub-1": 10})
    opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(open_request(), metadata=PLATFORM)
    return opened.session.session_id


def _reply(channel: grpc.aio.Channel, who: tuple[tuple[str, str]]) -> Callable[..., Awaitable[common_pb2.Message]]:
    stub = merchant_pb2_grpc.MerchantServiceStub(channel)

    async def send(**fields: Any) -> common_pb2.Message:
        return await stub.Reply(merchant_pb2.ReplyRequest(**fields), metadata=who)

    return send


async def _connect_reply(channel: grpc.aio.Channel, who: tuple[tuple[str, str]], **fields: Any) -> Any:
    """One reply frame on a fresh Connect stream; the stream's reply_result."""
    call = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=who)
    try:
        await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))
        await call.write(merchant_pb2.ConnectRequest(reply=merchant_pb2.ReplyRequest(**fields)))
        async with asyncio.timeout(10):
            while True:
                frame = await call.read()
                assert frame is not EOF
                if frame.HasField("reply_result"):
                    return frame.reply_result
    finally:
        call.cancel()


# --- keys belong to the sender -------------------------------------------------------------------


@pytest.mark.parametrize("second_body", ["same words", "other words"])
async def test_two_agents_of_one_shop_never_share_a_client_msg_id(
    channel: grpc.aio.Channel, pool: asyncpg.Pool, second_body: str
) -> None:
    sid = await _session(channel)
    first = await _reply(channel, MAIN)(session_id=sid, client_msg_id="c-1", content=text("same words"))
    second = await _reply(channel, SUB1)(session_id=sid, client_msg_id="c-1", content=text(second_body))
    assert (first.sender_id, second.sender_id) == ("shop-a-main", "shop-a-sub-1")
    assert second.seq == first.seq + 1
    assert second.content.text.body == second_body
    # Each sender's own retry still replays its own message.
    again = await _reply(channel, SUB1)(session_id=sid, client_msg_id="c-1", content=text(second_body))
    assert again == second
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE session_id = $1::uuid", sid) == 3


async def test_two_platform_senders_never_share_a_client_msg_id(channel: grpc.aio.Channel) -> None:
    sid = await _session(channel)
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    sent = [
        await platform.SendMessage(
            platform_pb2.SendMessageRequest(session_id=sid, client_msg_id="p-1", content=text(body)), metadata=who
        )
        for who, body in ((PLATFORM, "from the agent"), (SUPERVISOR, "from the supervisor"))
    ]
    assert [m.seq for m in sent] == [2, 3]
    assert [m.sender_id for m in sent] == ["pa-1", "sup-1"]


# --- a retry replays whatever changed since ------------------------------------------------------


async def test_template_reply_retry_after_the_template_is_deleted(channel: grpc.aio.Channel) -> None:
    sid = await _session(channel)
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    template = await admin.CreateReplyTemplate(
        admin_pb2.CreateReplyTemplateRequest(template=merchant_pb2.ReplyTemplate(title="t", text="We ship today.")),
        metadata=MAIN,
    )
    first = await _reply(channel, SUB1)(session_id=sid, client_msg_id="tpl-1", template_id=template.template_id)
    await admin.DeleteReplyTemplate(
        admin_pb2.DeleteReplyTemplateRequest(template_id=template.template_id), metadata=MAIN
    )
    again = await _reply(channel, SUB1)(session_id=sid, client_msg_id="tpl-1", template_id=template.template_id)
    assert again == first
    on_stream = await _connect_reply(
        channel, SUB1, session_id=sid, client_msg_id="tpl-1", template_id=template.template_id
    )
    assert on_stream.message == first
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reply(channel, SUB1)(session_id=sid, client_msg_id="tpl-2", template_id=template.template_id)
    assert failure(caught.value).reason == "TEMPLATE_NOT_FOUND"


async def test_retries_after_the_session_ended(channel: grpc.aio.Channel) -> None:
    sid = await _session(channel)
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    send = platform_pb2.SendMessageRequest(session_id=sid, client_msg_id="p-1", content=text("anything else?"))
    sent = await platform.SendMessage(send, metadata=PLATFORM)
    replied = await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=text("no"))
    streamed = await _connect_reply(channel, SUB1, session_id=sid, client_msg_id="r-2", content=text("bye"))
    await platform.CloseSession(platform_pb2.CloseSessionRequest(session_id=sid, outcome=RESOLVED), metadata=PLATFORM)
    assert await platform.SendMessage(send, metadata=PLATFORM) == sent
    assert await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=text("no")) == replied
    again = await _connect_reply(channel, SUB1, session_id=sid, client_msg_id="r-2", content=text("bye"))
    assert again.message == streamed.message
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-3", content=text("new"))
    assert failure(caught.value).reason == "SESSION_CLOSED"


async def test_retries_after_im_permission_was_removed(channel: grpc.aio.Channel) -> None:
    sid = await _session(channel)
    # (Connect itself refuses an agent without IM permission at the hello, so only Reply can retry.)
    replied = await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=text("on it"))
    await admin_pb2_grpc.MerchantAdminServiceStub(channel).UpsertAgent(
        admin_pb2.UpsertAgentRequest(
            merchant_id="shop-a", agent=admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False, capacity=10)
        ),
        metadata=OPS,
    )
    assert await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=text("on it")) == replied
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-3", content=text("new"))
    assert failure(caught.value).reason == "IM_PERMISSION_REQUIRED"


async def test_a_key_reused_with_other_content_is_still_refused(channel: grpc.aio.Channel) -> None:
    sid = await _session(channel)
    await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=text("one"))
    for other in (text("two"), common_pb2.MessageContent(emoji=common_pb2.Emoji(code="👍"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _reply(channel, SUB1)(session_id=sid, client_msg_id="r-1", content=other)
        assert failure(caught.value).reason == "CLIENT_MSG_ID_REUSED"


# --- the session size bound (R7) -----------------------------------------------------------------


def _big(n: int) -> common_pb2.MessageContent:
    # 2,000 four-byte emoji: the largest text content the API accepts (8 KB stored).
    return text(chr(0x1F600 + n % 64) * 2000)


async def _send_all(
    platform: platform_pb2_grpc.PlatformServiceAsyncStub, sid: str, contents: list[common_pb2.MessageContent]
) -> list[common_pb2.Message | BaseException]:
    return await asyncio.gather(
        *(
            platform.SendMessage(platform_pb2.SendMessageRequest(session_id=sid, content=c), metadata=PLATFORM)
            for c in contents
        ),
        return_exceptions=True,
    )


def _full(answers: list[common_pb2.Message | BaseException], limit: str) -> int:
    refused = [a for a in answers if isinstance(a, BaseException)]
    for a in refused:
        assert isinstance(a, grpc.aio.AioRpcError), a
        got = failure(a)
        assert (got.code, got.reason, got.metadata["limit"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SESSION_FULL",
            limit,
        )
    return len(refused)


async def test_content_bytes_bound_refuses_the_message_that_would_pass_it(
    channel: grpc.aio.Channel, pool: asyncpg.Pool
) -> None:
    sid = await _session(channel)
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    opened_bytes = await pool.fetchval(
        "SELECT sum(octet_length(content)) FROM messages WHERE session_id = $1::uuid", sid
    )
    size = len(_big(0).SerializeToString())
    fits = (limits.MAX_SESSION_CONTENT_BYTES - opened_bytes) // size
    # Concurrent senders, more than fit: exactly the ones that fit are stored, none overshoots.
    answers = await _send_all(platform, sid, [_big(n) for n in range(fits + 5)])
    assert _full(answers, "content_bytes") == 5
    stored = await pool.fetchval("SELECT sum(octet_length(content)) FROM messages WHERE session_id = $1::uuid", sid)
    assert stored == opened_bytes + fits * size <= limits.MAX_SESSION_CONTENT_BYTES
    assert stored == await pool.fetchval("SELECT content_bytes FROM sessions WHERE session_id = $1::uuid", sid)
    # A smaller message that still fits is accepted; the session can still be closed.
    left = limits.MAX_SESSION_CONTENT_BYTES - stored
    small = text("x" * min(left - 4, 100))
    assert len(small.SerializeToString()) <= left
    await platform.SendMessage(platform_pb2.SendMessageRequest(session_id=sid, content=small), metadata=PLATFORM)
    await platform.CloseSession(platform_pb2.CloseSessionRequest(session_id=sid, outcome=RESOLVED), metadata=PLATFORM)


async def test_message_count_bound_refuses_the_message_past_it(channel: grpc.aio.Channel, pool: asyncpg.Pool) -> None:
    sid = await _session(channel)
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    answers = await _send_all(platform, sid, [text(f"m{n}") for n in range(limits.MAX_SESSION_MESSAGES + 3)])
    # The opening message counts: MAX - 1 of these fit.
    assert _full(answers, "messages") == 4
    count = await pool.fetchval("SELECT count(*) FROM messages WHERE session_id = $1::uuid", sid)
    assert count == limits.MAX_SESSION_MESSAGES
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reply(channel, SUB1)(session_id=sid, content=text("one more"))
    assert failure(caught.value).metadata["max_messages"] == str(limits.MAX_SESSION_MESSAGES)
