"""The SDK (escalation.client) against real `escalation serve` processes (SPEC R8, issue 15 §1).

What a merchant integrator would otherwise get wrong: a replica killed (SIGKILL) or stopped (SIGTERM)
under a stream while events are written through another, a slow consumer cut off with
RESOURCE_EXHAUSTED, a cursor past retention; and a platform OpenSession whose answer is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from pathlib import Path

import asyncpg
import grpc
import pytest

from escalation.client import (
    RESOLVED,
    Backoff,
    ClientError,
    ConnectionState,
    CursorExpired,
    FileCursorStore,
    MemoryCursorStore,
    MerchantClient,
    PlatformClient,
    Retry,
    TlsOptions,
)
from escalation.v1 import common_pb2, merchant_pb2
from tests.certificates import CertificateAuthority
from tests.e2e import replicas
from tests.e2e.tcp_proxy import TcpProxy
from tests.integration.grpc_harness import token
from tests.integration.sessions_harness import make_shop

pytestmark = pytest.mark.e2e

SHOP = "shop-a"
MAIN_TOKEN = token("merchant", f"{SHOP}-main", SHOP)
PLATFORM_TOKEN = token("platform", "pa-1")
FAST = Backoff(initial=0.05, maximum=0.5, reset_after=5.0)


def _handled(process: replicas.Replica, method: str, code: str) -> float:
    """``grpc_server_handled_total`` of ``method`` ending with ``code`` on ``process``, from its /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{process.metrics_addr}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    labels = (f'grpc_method="{method}"', f'grpc_code="{code}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("grpc_server_handled_total{") and all(label in line for label in labels)
    )


def targets(*processes: replicas.Replica) -> str:
    """One gRPC target over the processes' addresses: pick_first moves on when one is gone."""
    return "ipv4:" + ",".join(p.grpc_addr for p in processes)


async def consume(client: MerchantClient, until_cursor: int, seen: list[int], pace: float = 0.0) -> None:
    """Collects event cursors until ``until_cursor``; ``pace`` seconds of work per event."""
    async for item in client.events():
        assert isinstance(item, merchant_pb2.MerchantEvent), item
        seen.append(item.cursor)
        if pace:
            await asyncio.sleep(pace)
        if item.cursor >= until_cursor:
            return


async def test_stream_survives_sigkill_and_sigterm_of_its_replica_with_every_event_once_in_order(
    database_url: str, tmp_path: Path
) -> None:
    messages = 36
    with replicas.serving(database_url, tmp_path, count=3) as (a, b, c):
        await asyncio.gather(*(replicas.wait_serving(r) for r in (a, b, c)))
        async with grpc.aio.insecure_channel(c.grpc_addr) as on_c:
            await make_shop(on_c, agents={f"{SHOP}-sub-1": 50})
        states: list[ConnectionState] = []
        store = FileCursorStore(tmp_path / "cursor")
        await store.save(0)  # from the start of the shop's log
        merchant = MerchantClient(
            targets(a, b, c), MAIN_TOKEN, cursor_store=store, backoff=FAST, on_state=lambda s, _: states.append(s)
        )
        # Writes go through C only, so they go on while A and B die.
        platform = PlatformClient(c.grpc_addr, PLATFORM_TOKEN)
        watcher = PlatformClient(targets(a, b, c), PLATFORM_TOKEN, backoff=FAST)
        seen: list[int] = []
        watched: list[int] = []

        async def watch(session_id: str) -> None:
            async with contextlib.aclosing(watcher.watch(session_id)) as frames:
                async for frame in frames:
                    if frame.HasField("message_added"):
                        watched.append(frame.message_added.seq)
                        if frame.message_added.seq == messages + 1:
                            return

        async with merchant, platform, watcher:
            consumer = asyncio.create_task(consume(merchant, messages + 2, seen))
            opened = await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="refund?")
            sid = opened.session.session_id
            watching = asyncio.create_task(watch(sid))
            for n in range(messages):
                await platform.send(sid, text=f"m{n}")
                if n == messages // 3:
                    a.kill()  # the stream is on A: the first address
                elif n == 2 * messages // 3:
                    assert b.terminate() == 0, b.output()  # then on B: ended with UNAVAILABLE SHUTTING_DOWN
                await asyncio.sleep(0.02)
            async with asyncio.timeout(30):
                await asyncio.gather(consumer, watching)
        assert seen == list(range(1, messages + 3)), "every event once, in cursor order"
        assert watched == list(range(1, messages + 2)), "WatchSession resumes the same way"
        # The last event was yielded but the consumer never asked for the next one: not yet processed.
        assert await store.load() == messages + 1
        assert states.count(ConnectionState.RECONNECTING) >= 2, states


async def test_slow_consumer_cut_off_with_resource_exhausted_resumes_without_gap_or_duplicate(
    database_url: str, tmp_path: Path
) -> None:
    messages = 80
    limits = {"ESCALATION_STREAM_MAX_LAG_EVENTS": "10", "ESCALATION_STREAM_WRITE_TIMEOUT_SECONDS": "0.2"}
    with replicas.serving(database_url, tmp_path, count=1, **limits) as (a,):
        await replicas.wait_serving(a)
        async with grpc.aio.insecure_channel(a.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        failures: list[str] = []

        def record(state: ConnectionState, _: int | None) -> None:
            if state is ConnectionState.RECONNECTING and merchant.last_error is not None:
                failures.append(f"{merchant.last_error.code.name} {merchant.last_error.reason}")

        merchant = MerchantClient(
            a.grpc_addr, MAIN_TOKEN, cursor_store=MemoryCursorStore(0), backoff=FAST, on_state=record
        )
        platform = PlatformClient(a.grpc_addr, PLATFORM_TOKEN)
        seen: list[int] = []
        async with merchant, platform:
            # 20 ms of work per event while messages arrive faster: the stream falls behind and is cut.
            consumer = asyncio.create_task(consume(merchant, messages + 2, seen, pace=0.02))
            sid = (await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="q")).session
            await asyncio.gather(*(platform.send(sid.session_id, text="x" * 1900 + str(n)) for n in range(messages)))
            async with asyncio.timeout(30):
                await consumer
        # The server cut the stream as a slow consumer. The client usually reads that status; when the cut
        # finds the connection's window full, gRPC may deliver it as a reset (INTERNAL) instead.
        assert failures, "the stream was cut and resumed"
        assert _handled(a, "Connect", "RESOURCE_EXHAUSTED") >= 1, failures
        assert seen == list(range(1, messages + 3))


async def test_cursor_expired_yields_cursor_expired_with_open_sessions_then_live_events(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (a,):
        await replicas.wait_serving(a)
        async with grpc.aio.insecure_channel(a.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        platform = PlatformClient(a.grpc_addr, PLATFORM_TOKEN)
        store = MemoryCursorStore(1)
        merchant = MerchantClient(a.grpc_addr, MAIN_TOKEN, cursor_store=store, backoff=FAST)
        async with merchant, platform:
            first = await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="one")
            second = await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_PRODUCT, text="two")
            await platform.close(second.session.session_id, resolution=RESOLVED)
            # What the deadline worker's retention purge does to events older than retention.
            await pool.execute("DELETE FROM merchant_events WHERE merchant_id = $1 AND cursor <= 3", SHOP)
            items = merchant.events()
            async with asyncio.timeout(20):
                expired = await anext(items)
                assert isinstance(expired, CursorExpired)
                assert expired.reason == "CURSOR_EXPIRED"
                assert expired.oldest_cursor == 4
                assert [s.session_id for s in expired.sessions] == [first.session.session_id], "open ones only"
                sent = [await platform.send(first.session.session_id, text=f"after the resync {n}") for n in (1, 2)]
                events = [await anext(items), await anext(items)]
                await items.aclose()
        assert [e.message_added.message.seq for e in events if isinstance(e, merchant_pb2.MerchantEvent)] == [
            m.seq for m in sent
        ]
        # Processed (the caller asked for the next item after it): the store resumes from the live stream.
        assert isinstance(events[0], merchant_pb2.MerchantEvent)
        assert await store.load() == events[0].cursor


async def test_a_fresh_stream_lost_before_its_position_resyncs_and_after_it_resumes(
    database_url: str, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (a,):
        await replicas.wait_serving(a)
        async with grpc.aio.insecure_channel(a.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        connected = asyncio.Event()

        def record(state: ConnectionState, _: int | None) -> None:
            if state is ConnectionState.CONNECTED:
                connected.set()

        store = MemoryCursorStore()  # a first start: no cursor, the stream begins at the live head
        async with TcpProxy(a.grpc_addr) as proxy, PlatformClient(a.grpc_addr, PLATFORM_TOKEN) as platform:
            merchant = MerchantClient(proxy.addr, MAIN_TOKEN, cursor_store=store, backoff=FAST, on_state=record)
            async with merchant:
                items = merchant.events()
                proxy.hold_answers()  # the server's StreamStarted never arrives
                first = asyncio.ensure_future(anext(items))
                async with asyncio.timeout(20):
                    while proxy.connections == 0:  # noqa: ASYNC110 (the proxy has no event to wait on)
                        await asyncio.sleep(0.02)
                one = await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="1")
                proxy.cut()  # lost before the position was known: what was written meanwhile is unknown
                async with asyncio.timeout(20):
                    unknown = await first
                assert isinstance(unknown, CursorExpired)
                assert (unknown.reason, unknown.oldest_cursor) == ("CURSOR_UNKNOWN", None)
                assert [s.session_id for s in unknown.sessions] == [one.session.session_id]

                after = asyncio.ensure_future(anext(items))  # processes the resync
                async with asyncio.timeout(20):
                    while await store.load() is None:  # noqa: ASYNC110 (the store has no event either)
                        await asyncio.sleep(0.02)
                positioned_at = await store.load()
                proxy.refusing = True
                proxy.cut()  # positioned now: a loss is resumed from the head the server confirmed
                two = await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="2")
                proxy.refusing = False
                async with asyncio.timeout(20):
                    event = await after
                await items.aclose()
        assert positioned_at == 2  # SessionAssigned and the opening message of the first session
        assert isinstance(event, merchant_pb2.MerchantEvent)
        assert (event.cursor, event.session_assigned.session.session_id) == (3, two.session.session_id)


async def test_open_session_retried_after_losing_its_answer_makes_one_session(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (a,):
        await replicas.wait_serving(a)
        async with grpc.aio.insecure_channel(a.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        async with TcpProxy(a.grpc_addr) as proxy:
            platform = PlatformClient(proxy.addr, PLATFORM_TOKEN, retry=Retry(timeout=5.0, backoff=FAST))
            async with platform:
                await platform.list_sessions()  # the connection is up and its HTTP/2 handshake done
                proxy.hold_answers()
                opening = asyncio.create_task(
                    platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="lost answer")
                )
                async with asyncio.timeout(20):
                    while True:
                        if await pool.fetchval("SELECT count(*) FROM sessions"):
                            break
                        await asyncio.sleep(0.02)
                # Committed on the server; its answer dies with the connection.
                proxy.cut()
                async with asyncio.timeout(20):
                    opened = await opening
        rows = await pool.fetch("SELECT session_id::text FROM sessions")
        assert [r["session_id"] for r in rows] == [opened.session.session_id]
        assert proxy.connections >= 2


async def test_errors_are_typed_and_close_ends_a_running_stream(database_url: str, tmp_path: Path) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (a,):
        await replicas.wait_serving(a)
        async with PlatformClient(a.grpc_addr, PLATFORM_TOKEN) as platform:
            with pytest.raises(ClientError) as bad:
                await platform.open_session(merchant_id="no such shop!", category=common_pb2.CATEGORY_REFUND, text=" ")
            assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert bad.value.reason == "INVALID_FIELDS"
            assert {v.field for v in bad.value.violations} >= {"merchant_id", "messages[0].text.body"}
        async with MerchantClient(a.grpc_addr, token("merchant", "nobody", SHOP)) as stranger:
            with pytest.raises(ClientError) as denied:
                await anext(stranger.events())
            assert denied.value.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)

        async with grpc.aio.insecure_channel(a.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        connected = asyncio.Event()
        merchant = MerchantClient(
            a.grpc_addr, MAIN_TOKEN, on_state=lambda s, _: connected.set() if s is ConnectionState.CONNECTED else None
        )
        items: list[object] = []
        running = asyncio.create_task(consume_all(merchant, items))
        async with asyncio.timeout(20):
            await connected.wait()
            await merchant.close()
            await running  # ends normally: no error, no reconnect
        assert items == []
        assert merchant.state is ConnectionState.CLOSED


async def consume_all(client: MerchantClient, items: list[object]) -> None:
    async for item in client.events():
        items.append(item)


async def test_over_mtls_a_refreshable_token_outlives_its_expiry_and_a_fixed_one_fails_typed(
    database_url: str, tmp_path: Path
) -> None:
    server_ca, client_ca = CertificateAuthority("server-ca"), CertificateAuthority("client-ca")
    cert, key = server_ca.issue("localhost", server=True).write(tmp_path, "server")
    client_cert, client_key = client_ca.issue("sdk", server=False).write(tmp_path, "client")
    env = {
        "ESCALATION_GRPC_TLS_CERT_FILE": str(cert),
        "ESCALATION_GRPC_TLS_KEY_FILE": str(key),
        "ESCALATION_GRPC_TLS_CLIENT_CA_FILE": str(client_ca.write(tmp_path, "clients")),
        "ESCALATION_JWT_LEEWAY_SECONDS": "0",  # a stream ends at its token's exp
    }
    tls = TlsOptions.from_files(ca=server_ca.write(tmp_path, "roots"), cert=client_cert, key=client_key)
    with replicas.serving(database_url, tmp_path / "logs", count=1, **env) as (a,):
        await replicas.wait_serving(a, credentials=tls.credentials())
        minted: list[str] = []

        async def short_lived() -> str:  # as an identity provider would hand out, 2 s each
            minted.append(token("merchant", f"{SHOP}-main", SHOP, ttl=2))
            return minted[-1]

        async with grpc.aio.secure_channel(a.grpc_addr, tls.credentials()) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        failures: list[str] = []
        token_expired = asyncio.Event()

        def record(state: ConnectionState, _: int | None) -> None:
            if state is ConnectionState.RECONNECTING and merchant.last_error is not None:
                failures.append(merchant.last_error.reason)
                if merchant.last_error.reason == "TOKEN_EXPIRED":
                    token_expired.set()

        merchant = MerchantClient(
            a.grpc_addr, short_lived, cursor_store=MemoryCursorStore(0), tls=tls, backoff=FAST, on_state=record
        )
        seen: list[int] = []
        async with merchant, PlatformClient(a.grpc_addr, PLATFORM_TOKEN, tls=tls) as platform:
            consumer = asyncio.create_task(consume(merchant, 5, seen))
            sid = (await platform.open_session(merchant_id=SHOP, category=common_pb2.CATEGORY_REFUND, text="q")).session
            await platform.send(sid.session_id, text="before expiry")
            async with asyncio.timeout(20):
                await token_expired.wait()  # the server ended the stream at the first token's exp
            await platform.send(sid.session_id, text="after expiry, 1")
            await platform.send(sid.session_id, text="after expiry, 2")
            async with asyncio.timeout(20):
                await consumer
        assert seen == [1, 2, 3, 4, 5]
        assert "TOKEN_EXPIRED" in failures
        assert len(minted) >= 2
        fixed = MerchantClient(a.grpc_addr, token("merchant", f"{SHOP}-main", SHOP, ttl=-5), tls=tls)
        async with fixed:
            with pytest.raises(ClientError) as expired:
                await anext(fixed.events())
        assert expired.value.code is grpc.StatusCode.UNAUTHENTICATED
