"""/livez and /readyz of real `escalation worker …` and `escalation serve` processes (deploy/k8s probes them).

A worker is made stuck the way one gets stuck in production: its statement waits on a lock this test
holds in the real PostgreSQL (the command timeout is raised so it does not give up first). A worker
whose rounds fail (the broker is not there) stays live but not ready. `serve` is ready while its gRPC
health is SERVING, and not ready (yet live) while it drains an in-flight call after SIGTERM.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import grpc
import pytest

from escalation.devenv.ports import free_port
from escalation.v1 import platform_pb2_grpc
from tests.e2e import replicas
from tests.e2e.workers_harness import TICKETS_TOPIC, KafkaTarget, Process, wait_started, worker
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.e2e

STALL = "1"  # ESCALATION_LIVENESS_STALL_SECONDS: small, so "stuck" shows within seconds
WITHIN = 20.0


def _get(addr: str, path: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{addr}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _until(addr: str, path: str, status: int, what: str, output: str = "") -> str:
    """Polls ``path`` until it answers ``status``; returns the body."""
    deadline = time.monotonic() + WITHIN
    while True:
        got, body = await asyncio.to_thread(_get, addr, path)
        if got == status:
            return body
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: {path} answered {got} {body!r} for {WITHIN:.0f} s\n{output}")
        await asyncio.sleep(0.1)


async def _stuck_and_recovered(process: Process, database_url: str, table: str, check: str) -> None:
    """Live and ready; stuck behind a lock on ``table``: /livez 503 naming the worker; released: live again."""
    await wait_started(process)
    await _until(process.metrics_addr, "/readyz", 200, "ready after a round", process.output())
    assert (await asyncio.to_thread(_get, process.metrics_addr, "/livez")) == (200, "ok\n")

    blocker = await asyncpg.connect(database_url)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        body = await _until(process.metrics_addr, "/livez", 503, "stuck behind a lock", process.output())
        assert f"worker {check}: no round completed" in body, body
        # Still serving metrics: the HTTP side is not what is stuck.
        assert (await asyncio.to_thread(_get, process.metrics_addr, "/metrics"))[0] == 200
        await held.rollback()
    finally:
        await blocker.close()
    await _until(process.metrics_addr, "/livez", 200, "live again once the lock is gone", process.output())
    assert process.alive, process.output()


_STUCK_ENV = {
    "ESCALATION_LIVENESS_STALL_SECONDS": STALL,
    # Longer than the test holds the lock: the statement waits instead of failing the round.
    "ESCALATION_DB_COMMAND_TIMEOUT_SECONDS": "60",
    "ESCALATION_DEADLINE_POLL_SECONDS": "0.2",
    "ESCALATION_OUTBOX_POLL_SECONDS": "0.2",
    "ESCALATION_WARNING_INTERVAL_SECONDS": "0.2",
}


@pytest.mark.parametrize(("kind", "table"), [("deadlines", "sessions"), ("warnings", "sessions")])
async def test_a_worker_stuck_on_a_lock_fails_livez_and_recovers(
    database_url: str, tmp_path: Path, kind: str, table: str
) -> None:
    with worker(kind, database_url, tmp_path, kind, env=_STUCK_ENV) as process:
        await _stuck_and_recovered(process, database_url, table, kind)


async def test_the_outbox_relay_stuck_on_a_lock_fails_livez_and_recovers(
    database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with worker("outbox", database_url, tmp_path, "outbox", kafka=KafkaTarget(kafka_bootstrap), env=_STUCK_ENV) as p:
        await _stuck_and_recovered(p, database_url, "outbox", "outbox")


async def test_a_worker_whose_rounds_fail_is_live_but_not_ready(database_url: str, tmp_path: Path) -> None:
    # Nothing listens on this port: every round with a row to publish fails at the broker, and a
    # restart would not help.
    absent = KafkaTarget(f"127.0.0.1:{free_port()}")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO outbox (topic, message_key, event_id, content_type, payload)"
            " VALUES ($1, 'k'::bytea, 'e-1', 'application/x-protobuf', ''::bytea)",
            TICKETS_TOPIC,
        )
    finally:
        await conn.close()
    with worker("outbox", database_url, tmp_path, "outbox", kafka=absent, env=_STUCK_ENV) as process:
        await wait_started(process)
        body = await _until(process.metrics_addr, "/readyz", 503, "not ready", process.output())
        assert "worker outbox:" in body, body
        await asyncio.sleep(2 * float(STALL))  # longer than the stall allowance: still live
        assert (await asyncio.to_thread(_get, process.metrics_addr, "/livez")) == (200, "ok\n")


async def test_serve_is_ready_while_serving_and_not_ready_while_draining(database_url: str, tmp_path: Path) -> None:
    with replicas.serving(database_url, tmp_path, count=1, ESCALATION_SHUTDOWN_GRACE_SECONDS="10") as (server,):
        await replicas.wait_serving(server)
        assert (await asyncio.to_thread(_get, server.metrics_addr, "/readyz")) == (200, "ok\n")
        assert (await asyncio.to_thread(_get, server.metrics_addr, "/livez")) == (200, "ok\n")
        blocker = await asyncpg.connect(database_url)
        try:
            async with grpc.aio.insecure_channel(server.grpc_addr) as channel:
                await make_shop(channel, agents={"shop-a-sub-1": 10})
                platform = platform_pb2_grpc.PlatformServiceStub(channel)
                # An OpenSession waiting on the merchant row we hold keeps the server draining.
                held = blocker.transaction()
                await held.start()
                await blocker.execute("SELECT 1 FROM merchants WHERE merchant_id = 'shop-a' FOR UPDATE")
                in_flight = asyncio.ensure_future(platform.OpenSession(open_request(), metadata=PLATFORM))
                async with asyncio.timeout(10):
                    while not await blocker.fetchval(  # noqa: ASYNC110 (the server's backend, polled)
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ):
                        await asyncio.sleep(0.02)
                server.proc.terminate()
                body = await _until(server.metrics_addr, "/readyz", 503, "draining", server.output())
                assert "grpc: gRPC health is not SERVING" in body, body
                assert (await asyncio.to_thread(_get, server.metrics_addr, "/livez")) == (200, "ok\n")
                await held.commit()
                await asyncio.wait_for(in_flight, 10)
        finally:
            await blocker.close()
