"""SPEC §3 "Limits": one identity cannot starve the others (docs/security.md).

Each limit refuses the caller over it with RESOURCE_EXHAUSTED, one ErrorInfo naming the limit and a
google.rpc.RetryInfo; a refused write leaves no row; other identities keep working; a stream slot frees
when the stream ends. Rates are configured so slow (per hour) that no token comes back during a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from escalation.api.server import STREAM_RETRY_SECONDS, Server
from escalation.auth import Identity, Role
from escalation.domain.token_bucket import Rate
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.conftest import POOL_DSN
from tests.integration.grpc_harness import UNTHROTTLED, bearer, failure, settings
from tests.integration.sessions_harness import make_shop, open_request, text

pytestmark = pytest.mark.integration

EOF_: object = getattr(grpc.aio, "EOF")  # noqa: B009
HOUR = 3600.0


def per_hour(burst: int) -> Rate:
    """``burst`` calls, then one more an hour: nothing refills while a test runs."""
    return Rate(per_second=1 / HOUR, burst=burst)


@asynccontextmanager
async def serving(pool: asyncpg.Pool, **limits: Any) -> AsyncIterator[tuple[Server, grpc.aio.Channel]]:
    server = Server(settings(replace(UNTHROTTLED, **limits)), pool, address="127.0.0.1:0", dsn=POOL_DSN[id(pool)])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, channel
    finally:
        await channel.close(grace=None)
        await server.stop(grace=0.5)


def retry_delay(err: grpc.aio.AioRpcError | status_pb2.Status) -> float:
    """The google.rpc.RetryInfo delay (seconds) of a failed call or an in-band status."""
    if isinstance(err, grpc.aio.AioRpcError):
        pairs = cast("tuple[tuple[str, Any], ...]", tuple(err.trailing_metadata() or ()))
        err = status_pb2.Status.FromString(next(v for k, v in pairs if k == "grpc-status-details-bin"))
    infos = [d for d in err.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected one RetryInfo, got {len(infos)}"
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    return float(info.retry_delay.ToTimedelta().total_seconds())


def refused(limit: str) -> float:
    return REGISTRY.get_sample_value("escalation_requests_refused_total", {"limit": limit}) or 0.0


async def assert_rate_limited(call: Awaitable[Any], limit: str, *, rate: Rate) -> None:
    before = refused(limit)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    got = failure(caught.value)
    assert (got.code, got.reason, got.domain) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "escalation")
    assert got.metadata == {"limit": limit, "rate_per_second": f"{rate.per_second:g}", "burst": str(rate.burst)}
    # The wait is until the next token: up to one token's worth (an hour here), never zero.
    assert 0 < retry_delay(caught.value) <= HOUR + 1
    assert refused(limit) == before + 1


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Polls the server's own stream counts (they change in its handlers' tasks) until ``what`` holds."""
    try:
        async with asyncio.timeout(10):
            while not condition():  # noqa: ASYNC110 (state of the server under test, polled)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


# --- write rates -------------------------------------------------------------------------------


async def test_open_session_over_the_per_agent_rate_is_refused_and_writes_nothing(pool: asyncpg.Pool) -> None:
    rate = per_hour(3)
    async with serving(pool, open_session_per_agent=rate) as (_, channel):
        for shop in ("shop-a", "shop-b"):
            await make_shop(channel, shop)
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        pa1 = bearer("platform", "pa-1")
        for shop in ("shop-a", "shop-b", "shop-a"):
            await platform.OpenSession(open_request(shop), metadata=pa1)
        sessions, events = await count(pool, "sessions"), await count(pool, "merchant_events")
        # Whatever the target merchant and however often, the agent is over its rate.
        for shop in ("shop-b", "shop-a", "no-such-shop"):
            await assert_rate_limited(
                platform.OpenSession(open_request(shop), metadata=pa1), "open_session_per_agent", rate=rate
            )
        assert (await count(pool, "sessions"), await count(pool, "merchant_events")) == (sessions, events)
        # Other platform agents and the supervisor are not affected.
        for who in (bearer("platform", "pa-2"), bearer("platform_supervisor", "sup-1")):
            await platform.OpenSession(open_request("shop-a"), metadata=who)
        assert await count(pool, "sessions") == sessions + 2


async def test_open_session_over_the_per_merchant_rate_is_refused_for_every_agent(pool: asyncpg.Pool) -> None:
    rate = per_hour(2)
    async with serving(pool, open_session_per_merchant=rate) as (_, channel):
        for shop in ("shop-a", "shop-b"):
            await make_shop(channel, shop)
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        await platform.OpenSession(open_request("shop-a"), metadata=bearer("platform", "pa-1"))
        await platform.OpenSession(open_request("shop-a"), metadata=bearer("platform", "pa-2"))
        sessions = await count(pool, "sessions")
        for agent in ("pa-1", "pa-3", "pa-4"):
            await assert_rate_limited(
                platform.OpenSession(open_request("shop-a"), metadata=bearer("platform", agent)),
                "open_session_per_merchant",
                rate=rate,
            )
        assert await count(pool, "sessions") == sessions
        # Another merchant still receives sessions, from the same agents.
        for agent in ("pa-1", "pa-3"):
            await platform.OpenSession(open_request("shop-b"), metadata=bearer("platform", agent))


async def test_send_message_over_the_per_sender_rate_is_refused_and_writes_nothing(pool: asyncpg.Pool) -> None:
    rate = per_hour(3)
    async with serving(pool, send_message_per_sender=rate) as (_, channel):
        await make_shop(channel, "shop-a")
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        pa1, pa2 = bearer("platform", "pa-1"), bearer("platform", "pa-2")
        mine = (await platform.OpenSession(open_request("shop-a"), metadata=pa1)).session
        theirs = (await platform.OpenSession(open_request("shop-a"), metadata=pa2)).session

        def send(session_id: str, who: tuple[tuple[str, str]], body: str) -> Awaitable[Any]:
            request = platform_pb2.SendMessageRequest(session_id=session_id, content=text(body))
            return platform.SendMessage(request, metadata=who)

        for n in range(3):
            await send(mine.session_id, pa1, f"m{n}")
        messages = await count(pool, "messages")
        for body in ("one more", "and another", "x" * 2000):
            await assert_rate_limited(send(mine.session_id, pa1, body), "send_message_per_sender", rate=rate)
        assert await count(pool, "messages") == messages
        for n in range(3):
            await send(theirs.session_id, pa2, f"m{n}")


async def test_replies_over_the_per_sender_rate_are_refused_unary_and_in_band(pool: asyncpg.Pool) -> None:
    rate = per_hour(2)
    async with serving(pool, reply_per_sender=rate) as (_, channel):
        await make_shop(channel, "shop-a", agents={"shop-a-sub-1": 10})
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        session = (await platform.OpenSession(open_request("shop-a"), metadata=bearer("platform", "pa-1"))).session
        merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
        sub1, main = bearer("merchant", "shop-a-sub-1", "shop-a"), bearer("merchant", "shop-a-main", "shop-a")

        def reply(who: tuple[tuple[str, str]], body: str) -> Awaitable[Any]:
            return merchant.Reply(
                merchant_pb2.ReplyRequest(session_id=session.session_id, content=text(body)), metadata=who
            )

        await reply(sub1, "yes")
        await reply(sub1, "ships today")
        messages = await count(pool, "messages")
        await assert_rate_limited(reply(sub1, "and again"), "reply_per_sender", rate=rate)

        # The same sender inside Connect: the reply result carries the refusal, the stream stays up.
        call: Any = cast(Any, merchant).Connect(metadata=sub1)
        await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))
        before = refused("reply_per_sender")
        for client_msg_id in ("r-1", "r-2"):
            frame = merchant_pb2.ReplyRequest(
                session_id=session.session_id, client_msg_id=client_msg_id, content=text("hi")
            )
            await call.write(merchant_pb2.ConnectRequest(reply=frame))
            result = await _reply_result(call)
            assert result.client_msg_id == client_msg_id
            assert result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            infos = [d for d in result.error.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
            assert len(infos) == 1
            info = error_details_pb2.ErrorInfo()
            infos[0].Unpack(info)
            assert (info.reason, info.metadata["limit"]) == ("RATE_LIMITED", "reply_per_sender")
            assert 0 < retry_delay(result.error) <= HOUR + 1
        assert refused("reply_per_sender") == before + 2
        assert await count(pool, "messages") == messages
        call.cancel()

        # The shop's main account replies in the same session: its own rate.
        await reply(main, "the main account answers")
        assert await count(pool, "messages") == messages + 1


async def _reply_result(call: Any) -> merchant_pb2.ReplyResult:
    async with asyncio.timeout(5):
        while True:
            frame = await call.read()
            assert frame is not EOF_, "stream ended"
            if frame.HasField("reply_result"):
                result: merchant_pb2.ReplyResult = frame.reply_result
                return result


# --- streams -----------------------------------------------------------------------------------


async def test_connect_streams_over_the_per_identity_cap_are_refused_newest_first(pool: asyncpg.Pool) -> None:
    async with serving(pool, connect_streams_per_identity=2) as (server, channel):
        await make_shop(channel, "shop-a")
        await make_shop(channel, "shop-b", agents={"shop-a-sub-1": 10})
        # Two client connections: the cap is per identity, not per connection.
        other_connection = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        sub1 = Identity("shop-a-sub-1", Role.MERCHANT, "shop-a")
        who = bearer("merchant", "shop-a-sub-1", "shop-a")
        try:
            first = await _connect(channel, who)
            second = await _connect(other_connection, who)
            await wait_until(lambda: server.limits.open_streams(sub1) == 2, "two streams counted")
            for connection in (channel, other_connection, channel):
                before = refused("connect_streams_per_identity")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await (await _connect(connection, who)).read()
                got = failure(caught.value)
                assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
                assert got.metadata == {"limit": "connect_streams_per_identity", "max_streams": "2"}
                assert retry_delay(caught.value) == STREAM_RETRY_SECONDS
                assert refused("connect_streams_per_identity") == before + 1
            # The older streams are untouched, and other agents of the shop (and other shops) connect.
            # (shop-b's agent "shop-a-sub-1" shares the agent id: the identity is the pair.)
            pairs = (("shop-a-sub-2", "shop-a"), ("shop-a-main", "shop-a"), ("shop-a-sub-1", "shop-b"))
            others = [await _connect(channel, bearer("merchant", agent, shop)) for agent, shop in pairs]
            identities = [Identity(agent, Role.MERCHANT, shop) for agent, shop in pairs]
            await wait_until(
                lambda: all(server.limits.open_streams(i) == 1 for i in identities), "other identities connected"
            )
            assert server.limits.open_streams(sub1) == 2
            # A stream that ends frees its slot.
            first.cancel()
            await wait_until(lambda: server.limits.open_streams(sub1) == 1, "the cancelled stream released")
            third = await _connect(channel, who)
            await wait_until(lambda: server.limits.open_streams(sub1) == 2, "the new stream counted")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await (await _connect(channel, who)).read()
            assert failure(caught.value).reason == "TOO_MANY_STREAMS"
            for call in (second, third, *others):
                call.cancel()
            await wait_until(lambda: server.limits.open_streams(sub1) == 0, "every slot released")
        finally:
            await other_connection.close(grace=None)


async def _connect(channel: grpc.aio.Channel, who: tuple[tuple[str, str]]) -> Any:
    call: Any = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(metadata=who)
    await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))
    return call


async def test_unauthenticated_streams_over_the_cap_are_refused_until_one_ends(pool: asyncpg.Pool) -> None:
    async with serving(pool, unauthenticated_streams=2) as (_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        reflection: Any = cast(Any, reflection_pb2_grpc.ServerReflectionStub(channel)).ServerReflectionInfo()
        await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        for call in (health.Watch(health_pb2.HealthCheckRequest()), reflection):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            got = failure(caught.value)
            assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
            assert got.metadata == {"limit": "unauthenticated_streams", "max_streams": "2"}
            assert retry_delay(caught.value) > 0
        # Unary health checks (what load balancers use) are not streams and still answer.
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        # Authenticated calls are not counted against it.
        await make_shop(channel, "shop-a")
        watches[0].cancel()
        # The slot frees once the server has seen the cancellation; until then the cap still holds.
        reasons = set()
        async with asyncio.timeout(10):
            while True:
                again = health.Watch(health_pb2.HealthCheckRequest())
                try:
                    first = await again.read()
                    break
                except grpc.aio.AioRpcError as exc:
                    reasons.add(failure(exc).reason)
                    await asyncio.sleep(0.01)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert reasons <= {"TOO_MANY_STREAMS"}
        again.cancel()
        watches[1].cancel()


async def test_one_connection_holds_at_most_max_concurrent_streams_and_others_are_not_held_up(
    pool: asyncpg.Pool,
) -> None:
    async with serving(pool, max_concurrent_streams=2) as (server, channel):
        health = health_pb2_grpc.HealthStub(channel)
        held = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for watch in held:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        # A third stream on the same connection waits in the client for a free slot...
        waiting = health.Watch(health_pb2.HealthCheckRequest())
        first = asyncio.ensure_future(waiting.read())
        # ...while another connection is served at once; by then the waiting stream has not reached the server.
        other = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            elsewhere = health_pb2_grpc.HealthStub(other).Watch(health_pb2.HealthCheckRequest())
            assert (await elsewhere.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert server.limits.unauthenticated_streams == 3
            assert not first.done()
            held[0].cancel()
            async with asyncio.timeout(10):
                assert (await first).status == health_pb2.HealthCheckResponse.SERVING
            elsewhere.cancel()
        finally:
            await other.close(grace=None)
        waiting.cancel()
        held[1].cancel()


# --- replays (SPEC R4: the replay lookup comes before every check of current state; AIP-155) --------


async def test_a_retried_open_session_is_answered_not_refused_when_the_buckets_are_empty(pool: asyncpg.Pool) -> None:
    agent_rate, merchant_rate = per_hour(2), per_hour(3)
    async with serving(pool, open_session_per_agent=agent_rate, open_session_per_merchant=merchant_rate) as (
        _,
        channel,
    ):
        await make_shop(channel, "shop-a")
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        pa1, pa2 = bearer("platform", "pa-1"), bearer("platform", "pa-2")
        first = {rid: await platform.OpenSession(open_request("shop-a", rid), metadata=pa1) for rid in ("r-1", "r-2")}
        await platform.OpenSession(open_request("shop-a", "r-1"), metadata=pa2)
        sessions = await count(pool, "sessions")
        # pa-1's bucket and shop-a's are empty; each retry is answered with the original session.
        for rid in ("r-2", "r-1", "r-2"):
            again = await platform.OpenSession(open_request("shop-a", rid), metadata=pa1)
            assert again.session.session_id == first[rid].session.session_id
        # A new request id is refused; a request id is the agent's own: pa-2 retries its r-1, not pa-1's r-2.
        await assert_rate_limited(
            platform.OpenSession(open_request("shop-a", "r-3"), metadata=pa1), "open_session_per_agent", rate=agent_rate
        )
        await platform.OpenSession(open_request("shop-a", "r-1"), metadata=pa2)
        await assert_rate_limited(
            platform.OpenSession(open_request("shop-a", "r-2"), metadata=pa2),
            "open_session_per_merchant",
            rate=merchant_rate,
        )
        assert await count(pool, "sessions") == sessions == 3


async def test_a_retried_message_is_answered_not_refused_when_the_bucket_is_empty(pool: asyncpg.Pool) -> None:
    rate = per_hour(2)
    async with serving(pool, send_message_per_sender=rate) as (_, channel):
        await make_shop(channel, "shop-a")
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        pa1, pa2 = bearer("platform", "pa-1"), bearer("platform", "pa-2")
        mine = (await platform.OpenSession(open_request("shop-a"), metadata=pa1)).session
        theirs = (await platform.OpenSession(open_request("shop-a"), metadata=pa2)).session

        def send(session_id: str, who: tuple[tuple[str, str]], client_msg_id: str, body: str) -> Awaitable[Any]:
            request = platform_pb2.SendMessageRequest(
                session_id=session_id, client_msg_id=client_msg_id, content=text(body)
            )
            return platform.SendMessage(request, metadata=who)

        sent = {cid: await send(mine.session_id, pa1, cid, cid) for cid in ("c-1", "c-2")}
        messages = await count(pool, "messages")
        for cid in ("c-1", "c-2", "c-1"):
            again = await send(mine.session_id, pa1, cid, cid)
            assert (again.seq, again.client_msg_id) == (sent[cid].seq, cid)
        # A new key, no key at all, or the key in another session is a new write: refused.
        for session_id, cid in ((mine.session_id, "c-3"), (mine.session_id, ""), (theirs.session_id, "c-1")):
            await assert_rate_limited(send(session_id, pa1, cid, "more"), "send_message_per_sender", rate=rate)
        assert await count(pool, "messages") == messages


async def test_a_retried_reply_is_answered_not_refused_unary_and_in_band(pool: asyncpg.Pool) -> None:
    rate = per_hour(1)
    async with serving(pool, reply_per_sender=rate) as (_, channel):
        await make_shop(channel, "shop-a", agents={"shop-a-sub-1": 10})
        await make_shop(channel, "shop-b", agents={"shop-a-sub-1": 10})
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        session = (await platform.OpenSession(open_request("shop-a"), metadata=bearer("platform", "pa-1"))).session
        merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
        sub1 = bearer("merchant", "shop-a-sub-1", "shop-a")

        def reply(who: tuple[tuple[str, str]], client_msg_id: str) -> Awaitable[Any]:
            request = merchant_pb2.ReplyRequest(
                session_id=session.session_id, client_msg_id=client_msg_id, content=text("ships today")
            )
            return merchant.Reply(request, metadata=who)

        original = await reply(sub1, "c-1")
        messages = await count(pool, "messages")
        assert (await reply(sub1, "c-1")).seq == original.seq
        await assert_rate_limited(reply(sub1, "c-2"), "reply_per_sender", rate=rate)
        await assert_rate_limited(reply(sub1, ""), "reply_per_sender", rate=rate)

        # Inside Connect: the retry gets its message back, a new reply the refusal.
        call: Any = cast(Any, merchant).Connect(metadata=sub1)
        await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello()))
        for cid, replayed in (("c-1", True), ("c-3", False), ("c-1", True)):
            frame = merchant_pb2.ReplyRequest(
                session_id=session.session_id, client_msg_id=cid, content=text("ships today")
            )
            await call.write(merchant_pb2.ConnectRequest(reply=frame))
            result = await _reply_result(call)
            if replayed:
                assert result.message.seq == original.seq
            else:
                assert result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        call.cancel()
        assert await count(pool, "messages") == messages


# --- the merchant's budget pays only for sessions created ----------------------------------------


async def test_failed_and_replayed_open_sessions_do_not_use_up_the_merchants_budget(pool: asyncpg.Pool) -> None:
    rate = per_hour(2)
    async with serving(pool, open_session_per_merchant=rate) as (_, channel):
        await make_shop(channel, "shop-a")
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        attacker, honest = bearer("platform", "pa-x"), bearer("platform", "pa-1")
        no_messages = open_request("shop-a")
        del no_messages.messages[:]
        no_category = open_request("shop-a")
        no_category.category = common_pb2.CATEGORY_UNSPECIFIED
        bad_order = open_request("shop-a")
        bad_order.order_id = "not an id!"
        bad_request_id = open_request("shop-a", "bad id!")
        # Each invalid request, many times over: INVALID_ARGUMENT, nothing created, nothing charged.
        for _ in range(3):
            for invalid in (no_messages, no_category, bad_order, bad_request_id):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await platform.OpenSession(invalid, metadata=attacker)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A request id reused with another body fails too (AIP-155), and is charged once, for its session.
        await platform.OpenSession(open_request("shop-a", "r-1"), metadata=attacker)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await platform.OpenSession(open_request("shop-a", "r-1", body="other"), metadata=attacker)
            assert failure(caught.value).reason == "REQUEST_ID_REUSED"
            # Replays of it are answered and not charged either.
            await platform.OpenSession(open_request("shop-a", "r-1"), metadata=attacker)
        assert await count(pool, "sessions") == 1
        # The shop's second token is still there for another agent; the next session is refused.
        await platform.OpenSession(open_request("shop-a"), metadata=honest)
        await assert_rate_limited(
            platform.OpenSession(open_request("shop-a"), metadata=honest), "open_session_per_merchant", rate=rate
        )
        assert await count(pool, "sessions") == 2


# --- WatchSession streams per platform agent -------------------------------------------------------


async def test_watch_streams_over_the_per_agent_cap_are_refused_newest_first(pool: asyncpg.Pool) -> None:
    async with serving(pool, watch_streams_per_identity=2) as (server, channel):
        await make_shop(channel, "shop-a")
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        pa1, pa2 = bearer("platform", "pa-1"), bearer("platform", "pa-2")
        agent1, agent2 = Identity("pa-1", Role.PLATFORM), Identity("pa-2", Role.PLATFORM)
        mine = [(await platform.OpenSession(open_request("shop-a"), metadata=pa1)).session for _ in range(3)]
        theirs = (await platform.OpenSession(open_request("shop-a"), metadata=pa2)).session
        other_connection = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )

        def watch(connection: grpc.aio.Channel, session_id: str, who: tuple[tuple[str, str]]) -> Any:
            request = platform_pb2.WatchSessionRequest(session_id=session_id)
            return platform_pb2_grpc.PlatformServiceStub(connection).WatchSession(request, metadata=who)

        try:
            # Two sessions, two connections: the cap is per agent.
            held = [watch(channel, mine[0].session_id, pa1), watch(other_connection, mine[1].session_id, pa1)]
            await wait_until(lambda: server.limits.watch_streams(agent1) == 2, "two watches counted")
            for connection, session in ((channel, mine[2]), (other_connection, mine[0]), (channel, mine[1])):
                before = refused("watch_streams_per_identity")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await watch(connection, session.session_id, pa1).read()
                got = failure(caught.value)
                assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
                assert got.metadata == {"limit": "watch_streams_per_identity", "max_streams": "2"}
                assert retry_delay(caught.value) == STREAM_RETRY_SECONDS
                assert refused("watch_streams_per_identity") == before + 1
            # Another agent is not affected.
            others = [watch(channel, theirs.session_id, pa2) for _ in range(2)]
            await wait_until(lambda: server.limits.watch_streams(agent2) == 2, "the other agent's watches")
            assert server.limits.watch_streams(agent1) == 2
            # A cancelled stream frees its slot; so does one that fails (a session that is not visible).
            held[0].cancel()
            await wait_until(lambda: server.limits.watch_streams(agent1) == 1, "the cancelled watch released")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch(channel, theirs.session_id, pa1).read()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            await wait_until(lambda: server.limits.watch_streams(agent1) == 1, "the failed watch released")
            held.append(watch(channel, mine[2].session_id, pa1))
            await wait_until(lambda: server.limits.watch_streams(agent1) == 2, "the new watch counted")
            for call in (*held, *others):
                call.cancel()
            await wait_until(
                lambda: server.limits.watch_streams(agent1) == server.limits.watch_streams(agent2) == 0,
                "every slot released",
            )
            # Churn: streams cancelled at any point (before or after the server saw them) leak no slot.
            for n in range(20):
                churn = watch((channel, other_connection)[n % 2], mine[n % 3].session_id, pa1)
                for _ in range(n % 4):
                    await asyncio.sleep(0)
                churn.cancel()
            await wait_until(lambda: server.limits.watch_streams(agent1) == 0, "every churned slot released")
            last = watch(channel, mine[0].session_id, pa1)
            await wait_until(lambda: server.limits.watch_streams(agent1) == 1, "a watch after the churn")
            last.cancel()
        finally:
            await other_connection.close(grace=None)
