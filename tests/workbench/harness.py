"""The workbench against the real service: an in-process server on a test database with the demo shop
seeded (escalation/devenv/seed.py), a short reply timeout (the dev override), quick replies, and a
platform agent opening sessions."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from textual.pilot import Pilot

from escalation import config
from escalation.api.server import Server
from escalation.client import Backoff, ConnectionState, CursorStore, MemoryCursorStore, MerchantClient
from escalation.devenv import seed
from escalation.services.sessions import SessionPolicy
from escalation.v1 import (
    common_pb2,
    merchant_pb2,
    merchant_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from escalation.workbench.app import Workbench
from escalation.workbench.run_app import SdkBackend
from escalation.workbench.state import WorkbenchState
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import bearer, settings, token
from workers.deadlines import DeadlineConfig, DeadlineWorker

# Short enough for a demo, long enough that nothing times out while a test looks (the tests move the
# workbench's clock and the deadline worker's `now` instead of waiting).
REPLY_TIMEOUT_SECONDS = 30.0
MERCHANT = seed.DEMO_MERCHANT
SIZE = (120, 34)
AGENT = seed.DEMO_AGENTS[0]
PLATFORM_AGENT_TOKEN = token("platform", "pa-demo", ttl=3600)
PLATFORM = (("authorization", f"Bearer {PLATFORM_AGENT_TOKEN}"),)
MAIN = bearer("merchant", seed.DEMO_MAIN_ACCOUNT, MERCHANT)


@dataclass
class Clock:
    """The workbench's clock, moved by the test (the countdowns never depend on the wall clock)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Service:
    channel: grpc.aio.Channel
    target: str
    pool: asyncpg.Pool
    config: config.Settings
    server: Server | None = None

    @property
    def policy(self) -> SessionPolicy:
        return SessionPolicy.from_settings(self.config)

    async def start(self, address: str = "127.0.0.1:0") -> Server:
        server = Server(self.config, self.pool, address=address, dsn=POOL_DSN[id(self.pool)])
        await server.start()
        return server

    async def restart(self, while_down: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
        """Stops the server the workbench's stream is on, runs ``while_down`` against another replica
        on the same database (writes made while the stream is away), and starts it again on its port."""
        assert self.server is not None
        await self.server.stop(grace=0.5)
        other = await self.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{other.port}")
        try:
            await while_down(channel)
        finally:
            await channel.close(grace=None)
            await other.stop(grace=0.5)
        self.server = await self.start(self.target)

    def agent_token(self, agent_id: str = AGENT) -> str:
        return token("merchant", agent_id, MERCHANT, ttl=3600)

    async def open_session(
        self,
        body: str = "The buyer wants it shipped today. Can you ship it today?",
        *,
        order_id: str = "order-42",
        category: common_pb2.Category.ValueType = common_pb2.CATEGORY_ORDER_OPERATION,
    ) -> common_pb2.Session:
        response = await platform_pb2_grpc.PlatformServiceStub(self.channel).OpenSession(
            platform_pb2.OpenSessionRequest(
                request_id=uuid.uuid4().hex,
                merchant_id=MERCHANT,
                category=category,
                order_id=order_id,
                messages=[
                    common_pb2.MessageContent(text=common_pb2.Text(body=body)),
                    common_pb2.MessageContent(order_card=order_card(order_id)),
                ],
            ),
            metadata=PLATFORM,
        )
        return response.session

    async def reply(self, session: common_pb2.Session, text: str) -> common_pb2.Message:
        """The assigned agent answers (through the API, as another agent's app would)."""
        metadata = (("authorization", f"Bearer {self.agent_token(session.assigned_agent_id)}"),)
        return await merchant_pb2_grpc.MerchantServiceStub(self.channel).Reply(
            merchant_pb2.ReplyRequest(
                session_id=session.session_id,
                client_msg_id=uuid.uuid4().hex,
                content=common_pb2.MessageContent(text=common_pb2.Text(body=text)),
            ),
            metadata=metadata,
        )

    async def list_open_sessions(self) -> list[common_pb2.Session]:
        """The open sessions the harness's platform agent opened."""
        answer = await platform_pb2_grpc.PlatformServiceStub(self.channel).ListSessions(
            platform_pb2.ListSessionsRequest(state=common_pb2.SESSION_STATE_OPEN), metadata=PLATFORM
        )
        return list(answer.sessions)

    async def messages(self, session_id: str) -> list[common_pb2.Message]:
        answer = await platform_pb2_grpc.PlatformServiceStub(self.channel).ListMessages(
            platform_pb2.ListMessagesRequest(session_id=session_id), metadata=PLATFORM
        )
        return list(answer.messages)

    async def session(self, session_id: str) -> common_pb2.Session:
        return await platform_pb2_grpc.PlatformServiceStub(self.channel).GetSession(
            platform_pb2.GetSessionRequest(session_id=session_id), metadata=PLATFORM
        )

    async def templates(self) -> list[merchant_pb2.ReplyTemplate]:
        answer = await merchant_pb2_grpc.MerchantServiceStub(self.channel).ListReplyTemplates(
            merchant_pb2.ListReplyTemplatesRequest(), metadata=MAIN
        )
        return list(answer.templates)

    async def merchant_read_seq(self, session_id: str, agent_id: str = AGENT) -> int:
        """The seq of the first read receipt the agent sent for the session, from the merchant's event
        log (SPEC R8: read receipts are events), read from its start over Connect."""
        metadata = (("authorization", f"Bearer {self.agent_token(agent_id)}"),)
        hello = merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=0))
        call = merchant_pb2_grpc.MerchantServiceStub(self.channel).Connect(iter([hello]), metadata=metadata)
        try:
            async with asyncio.timeout(15):
                async for frame in call:
                    receipt = frame.event.read_receipt
                    if frame.event.HasField("read_receipt") and receipt.session_id == session_id:
                        assert receipt.reader == common_pb2.SENDER_MERCHANT
                        return receipt.seq
        finally:
            call.cancel()
        raise AssertionError("the stream ended without a read receipt")

    async def run_deadlines(self, now: datetime) -> None:
        """Rounds of the deadline worker as if the database clock read ``now``, until one reminded or
        ended something: a round skips a session row another transaction holds at that instant (FOR
        UPDATE SKIP LOCKED, e.g. the agent's read receipt), which the real worker's next round takes."""
        worker = DeadlineWorker(self.pool, DeadlineConfig(policy=self.policy))
        for _round in range(200):
            if any(dataclasses.astuple(await worker.run_once(now=now))):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"nothing was due at {now}")


def ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


def order_card(order_id: str) -> common_pb2.OrderCard:
    at = datetime(2026, 11, 30, 20, 15, tzinfo=UTC)
    return common_pb2.OrderCard(
        order_id=order_id,
        status="PAID",
        create_time=ts(at),
        pay_time=ts(at + timedelta(minutes=2)),
        paid_amount=common_pb2.Money(amount_minor=25800, currency="CNY"),
        items=[
            common_pb2.OrderItem(product_id="p-1", name="Linen shirt", spec="white, L", quantity=2),
            common_pb2.OrderItem(product_id="p-2", name="Wool socks", quantity=1),
        ],
        detail_url=f"https://shop.example/orders/{order_id}",
    )


@pytest.fixture
async def service(pool: asyncpg.Pool) -> AsyncIterator[Service]:
    await seed.seed_demo(pool)
    await seed.seed_demo(pool)  # as every `make run` does: idempotent
    settings_ = dataclasses.replace(settings(), dev_override_reply_timeout_seconds=REPLY_TIMEOUT_SECONDS)
    server = Server(settings_, pool, address="127.0.0.1:0", dsn=POOL_DSN[id(pool)])
    await server.start()
    target = f"127.0.0.1:{server.port}"
    service = Service(grpc.aio.insecure_channel(target), target, pool, settings_, server)
    try:
        yield service
    finally:
        await service.channel.close(grace=None)
        if service.server is not None:
            await service.server.stop(grace=0.5)


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, seconds: float = 15) -> None:
    """Lets the app run until ``condition`` holds (events arrive asynchronously); fails after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for: {what}"
        await pilot.pause(0.05)


# Reconnect at once in tests: a restarted server is back in milliseconds.
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.2)


@asynccontextmanager
async def running_workbench(
    service: Service,
    clock: Clock,
    agent_id: str = AGENT,
    *,
    cursor_store: CursorStore | None = None,
    size: tuple[int, int] = SIZE,
) -> AsyncIterator[tuple[Workbench, Pilot[None]]]:
    """The workbench as `escalation workbench` runs it (run_app.py: the SDK's MerchantClient behind
    SdkBackend), driven by Textual's pilot, once its stream is connected."""
    shown: list[Workbench] = []

    def on_state(connection: ConnectionState, cursor: int | None) -> None:
        if shown:
            shown[0].connection_changed(connection.value, cursor)

    client = MerchantClient(
        service.target,
        token=service.agent_token(agent_id),
        cursor_store=cursor_store or MemoryCursorStore(),
        on_state=on_state,
        backoff=FAST_BACKOFF,
    )
    async with client:
        app = Workbench(
            SdkBackend(client),
            WorkbenchState(agent_id=agent_id, merchant_id=MERCHANT),
            target="localhost:50051",  # shown in the status line; a fixed text keeps the snapshots stable
            clock=clock,
            tz=UTC,
            tick_seconds=0,  # the test redraws after moving the clock
        )
        shown.append(app)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.connection == "connected", "the stream to connect")
            yield app, pilot
