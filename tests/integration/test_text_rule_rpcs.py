"""Every RPC with a free-text field agrees with the one pure text rule (SPEC R4 "Text", §3 ids).

For each sample (invisible, bidi-reordered, valid in many scripts, emoji sequences) and each field,
the RPC accepts exactly when ``Violations.text`` does, and otherwise answers INVALID_ARGUMENT with a
BadRequest naming that field. A blank merchant reply never clears the deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest

from escalation.domain.validation import Violations
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.integration

SHOP = "shop-a"
MAIN = bearer("merchant", f"{SHOP}-main", SHOP)

SAMPLES = [
    "\u200b",
    "\u200b\u200c\u200d\u2060\ufeff",
    "\u3164",
    "\u115f\u1160",
    "\uffa0",
    "\u2800\u2800",
    "\u0301",
    "\ufe0f",
    "\u00ad",
    " \u200e ",
    "\U000e0020\U000e007f",
    "refund \u202eredro\u202c ok",
    "\u2066ok\u2069",
    "ok\x07",
    "ship\u2028today",
    "可以，今天发货",
    "हाँ, आज भेज देंगे",
    "ได้ครับ",
    "نعم",
    "👨\u200d👩\u200d👧",
    "🏳\ufe0f\u200d🌈",
    "ship\u200btoday",
]

Call = Callable[[str], Awaitable[object]]


def pure_accepts(value: str, *, max_chars: int, multiline: bool) -> bool:
    check = Violations()
    check.text("f", value, max_chars=max_chars, multiline=multiline)
    return not check


async def test_every_text_field_agrees_with_the_pure_rule(pool: asyncpg.Pool) -> None:
    async with running_server(pool) as channel:
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
        admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
        ops = ops_pb2_grpc.OpsServiceStub(channel)
        await make_shop(channel, SHOP, agents={f"{SHOP}-sub-1": 50})
        sid = (await platform.OpenSession(open_request(SHOP), metadata=PLATFORM)).session.session_id

        def emoji(code: str) -> common_pb2.MessageContent:
            return common_pb2.MessageContent(emoji=common_pb2.Emoji(code=code))

        def template(title: str, body: str) -> admin_pb2.CreateReplyTemplateRequest:
            return admin_pb2.CreateReplyTemplateRequest(template=merchant_pb2.ReplyTemplate(title=title, text=body))

        # (field, multiline, max_chars, the call with the sample in that field)
        fields: list[tuple[str, bool, int, Call]] = [
            (
                "content.text.body",
                True,
                2000,
                lambda v: platform.SendMessage(
                    platform_pb2.SendMessageRequest(session_id=sid, content=text(v)), metadata=PLATFORM
                ),
            ),
            (
                "messages[0].text.body",
                True,
                2000,
                lambda v: platform.OpenSession(open_request(SHOP, body=v), metadata=PLATFORM),
            ),
            (
                "content.text.body",
                True,
                2000,
                lambda v: merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text(v)), metadata=MAIN),
            ),
            (
                "content.emoji.code",
                False,
                32,
                lambda v: merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=emoji(v)), metadata=MAIN),
            ),
            ("template.title", False, 50, lambda v: admin.CreateReplyTemplate(template(v, "ok"), metadata=MAIN)),
            ("template.text", True, 2000, lambda v: admin.CreateReplyTemplate(template("ok", v), metadata=MAIN)),
            (
                "agent.display_name",
                False,
                100,
                lambda v: admin.UpsertAgent(
                    admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="a-9", display_name=v)), metadata=MAIN
                ),
            ),
            (
                "merchant.display_name",
                False,
                100,
                lambda v: ops.UpsertMerchant(
                    ops_pb2.UpsertMerchantRequest(
                        merchant=ops_pb2.Merchant(merchant_id=SHOP, main_account_id=f"{SHOP}-main", display_name=v)
                    ),
                    metadata=OPS,
                ),
            ),
        ]
        disagreements = []
        for field, multiline, max_chars, call in fields:
            for sample in SAMPLES:
                expected = pure_accepts(sample, max_chars=max_chars, multiline=multiline)
                if field == "content.emoji.code":  # a code is one token: the emoji rule adds "no whitespace"
                    expected = expected and not any(ch.isspace() for ch in sample.strip())
                try:
                    await call(sample)
                    got, named = True, True
                except grpc.aio.AioRpcError as err:
                    got = False
                    named = err.code() is grpc.StatusCode.INVALID_ARGUMENT and field in failure(err).field_violations
                if got is not expected or not named:
                    disagreements.append((field, sample, expected, got))
        assert disagreements == []


@pytest.mark.parametrize("body", ["\u200b", "\u3164", "\u0301\u0301", "\u2800"])
async def test_a_reply_that_shows_nothing_leaves_the_deadline_pending(pool: asyncpg.Pool, body: str) -> None:
    async with running_server(pool) as channel:
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
        await make_shop(channel, SHOP, agents={f"{SHOP}-sub-1": 10})
        sid = (await platform.OpenSession(open_request(SHOP), metadata=PLATFORM)).session.session_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchant.Reply(merchant_pb2.ReplyRequest(session_id=sid, content=text(body)), metadata=MAIN)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "content.text.body" in failure(caught.value).field_violations
        assert await pool.fetchval("SELECT reply_deadline IS NOT NULL FROM sessions") is True


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
async def test_ids_with_a_trailing_newline_are_invalid_argument(pool: asyncpg.Pool, suffix: str) -> None:
    async with running_server(pool) as channel:
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        await make_shop(channel, SHOP, agents={f"{SHOP}-sub-1": 10})
        for request, field in [
            (open_request(SHOP, request_id="r-1" + suffix), "request_id"),
            (open_request(SHOP + suffix), "merchant_id"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await platform.OpenSession(request, metadata=PLATFORM)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert field in failure(caught.value).field_violations
        sid = (await platform.OpenSession(open_request(SHOP), metadata=PLATFORM)).session.session_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await platform.SendMessage(
                platform_pb2.SendMessageRequest(session_id=sid, content=text("hi"), client_msg_id="c-1" + suffix),
                metadata=PLATFORM,
            )
        assert "client_msg_id" in failure(caught.value).field_violations
