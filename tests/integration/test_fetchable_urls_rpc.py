"""SPEC §3 over gRPC: a message URL fetchers must not follow is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.integration

SUB1 = bearer("merchant", "shop-a-sub-1", "shop-a")
BAD = [
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1:50051/x.png",
    "https://user:pass@img.example.com/x.png",
    "https://2130706433/x.png",
    "https://0x7f.1/x.png",
    "https://[::ffff:10.0.0.1]/x.png",
    "https://localhost/x.png",
    "http://img.example.com/x.png",
]


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        await make_shop(ch, agents={"shop-a-sub-1": 10})
        yield ch


async def test_image_and_order_card_urls_must_be_safe_to_fetch(channel: grpc.aio.Channel) -> None:
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
    sid = (await platform.OpenSession(open_request(), metadata=PLATFORM)).session.session_id

    def image(url: str) -> merchant_pb2.ReplyRequest:
        return merchant_pb2.ReplyRequest(
            session_id=sid, content=common_pb2.MessageContent(image=common_pb2.Image(url=url, width=64, height=64))
        )

    def card(url: str) -> platform_pb2.SendMessageRequest:
        order = common_pb2.OrderCard(
            order_id="o-1",
            status="PAID",
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
            paid_amount=common_pb2.Money(amount_minor=1999, currency="CNY"),
            items=[common_pb2.OrderItem(product_id="p-1", name="Mug", quantity=1, image_url=url)],
            detail_url="https://shop.example/o-1",
        )
        return platform_pb2.SendMessageRequest(session_id=sid, content=common_pb2.MessageContent(order_card=order))

    await merchant.Reply(image("https://img.example.com/x.png"), metadata=SUB1)
    await platform.SendMessage(card("https://img.example.com/p-1.png"), metadata=PLATFORM)
    for url in BAD:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchant.Reply(image(url), metadata=SUB1)
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS"), url
        assert list(got.field_violations) == ["content.image.url"], url
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await platform.SendMessage(card(url), metadata=PLATFORM)
        assert list(failure(caught.value).field_violations) == ["content.order_card.items[0].image_url"], url
