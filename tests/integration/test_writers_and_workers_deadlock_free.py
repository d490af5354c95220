"""Every writer at once with two deadline workers (SPEC §4: workers are safe with N replicas): no
deadlock, and every agent's count stays the real number of its open sessions.

Found by a review: a worker's batch ending inserted tickets (each taking a foreign-key lock on its
merchant row) before appending events in merchant order, so merchant rows were locked out of order
and PostgreSQL broke the cycle by aborting an OpenSession, a SendMessage or the worker's round.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from escalation import errors
from escalation.auth import Identity, Role
from escalation.domain.session import Kind
from escalation.services import directory, sessions
from escalation.v1 import common_pb2
from tests.integration.transfers_harness import assert_counts_are_true
from workers.deadlines import DeadlineWorker

pytestmark = pytest.mark.integration

OPS = Identity("ops", Role.OPS)
PLATFORM = Identity("pa", Role.PLATFORM)
SHOPS = ("m1", "m2")
AGENTS = ("a", "b", "c", "d")
# Deadlines and idle closes fall due while the writers run, so the workers end sessions all along.
POLICY = sessions.SessionPolicy(reply_timeout_override=0.6, idle_timeout_override=0.4)
SECONDS = 6.0


def _text(body: str) -> sessions.NewMessage:
    content = common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()
    return sessions.NewMessage(Kind.TEXT, content)


async def _shop(pool: asyncpg.Pool, merchant_id: str) -> None:
    await directory.upsert_merchant(
        pool, merchant_id=merchant_id, display_name="", main_account_id=f"{merchant_id}-main", disabled=False
    )
    target = directory.MerchantScope(merchant_id, OPS)
    for agent in AGENTS:
        await directory.upsert_agent(
            pool, target, agent_id=agent, display_name="", im_permission=True, disabled=False, capacity=10
        )
    await directory.set_reception_agents(pool, target, list(AGENTS))


async def test_openers_messengers_and_two_deadline_workers_never_deadlock(
    pool: asyncpg.Pool, database_url: str
) -> None:
    for shop in SHOPS:
        await _shop(pool, shop)
    writers = await asyncpg.create_pool(database_url, min_size=2, max_size=16)
    stop = time.monotonic() + SECONDS
    opened: list[tuple[str, uuid.UUID]] = []
    failures: list[BaseException] = []
    done = 0

    async def guard(call: Awaitable[object]) -> None:
        nonlocal done
        try:
            await call
            done += 1
        except errors.ConcurrentUpdate as exc:  # what a deadlock becomes once translated
            failures.append(exc)
        except errors.EscalationError:
            pass  # SESSION_CLOSED and the like: the workers ended the session first
        except asyncpg.PostgresError as exc:  # DeadlockDetectedError, untranslated at this layer
            failures.append(exc)

    async def open_one(shop: str) -> None:
        request = sessions.OpenRequest(uuid.uuid4().hex, b"h", shop, "REFUND", None, [_text("hi")])
        o = await sessions.open_session(writers, PLATFORM, request, POLICY)
        opened.append((shop, o.session["session_id"]))

    async def opener() -> None:
        while time.monotonic() < stop:
            await guard(open_one(random.choice(SHOPS)))

    async def messenger() -> None:
        while time.monotonic() < stop:
            if not opened:
                await asyncio.sleep(0.01)
                continue
            shop, sid = random.choice(opened[-30:])
            who = Identity(f"{shop}-main", Role.MERCHANT, shop) if random.random() < 0.5 else PLATFORM
            await guard(sessions.add_message(writers, who, sid, _text("ok"), POLICY))

    async def worker() -> None:
        replica = DeadlineWorker(writers)
        while time.monotonic() < stop:
            await guard(replica.run_once())
            await asyncio.sleep(0.05)

    jobs: list[Callable[[], Awaitable[None]]] = [opener, opener, messenger, messenger, messenger, worker, worker]
    try:
        await asyncio.gather(*(job() for job in jobs))
    finally:
        await writers.close()
    assert failures == [], failures[:3]
    assert done > 100  # the mix really ran
    for shop in SHOPS:
        await assert_counts_are_true(pool, shop)
