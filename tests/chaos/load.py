"""OpenSession load that retries like a well-behaved client, and the counts the fault tests assert on.

Each logical open has its own ``request_id`` (AIP-155) and is retried with that same id, after
UNAVAILABLE or ABORTED, until it succeeds; every status seen on the way is counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import grpc

from escalation.v1 import platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import failure
from tests.integration.sessions_harness import PLATFORM, open_request

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class Tally:
    """Status codes (by name) and ErrorInfo reasons seen, and the session each request_id got."""

    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    sessions: dict[str, str] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"codes {dict(self.codes)}, reasons {dict(self.reasons)}, {len(self.sessions)} opened"


async def open_until_ok(
    stub: platform_pb2_grpc.PlatformServiceAsyncStub, merchant_id: str, tally: Tally, give_up_after: float = 60.0
) -> None:
    """One logical OpenSession, retried with the same request_id until OK (or a non-retryable code)."""
    request = open_request(merchant_id, request_id=uuid.uuid4().hex)
    deadline = time.monotonic() + give_up_after
    while time.monotonic() < deadline:
        try:
            answer = await stub.OpenSession(request, metadata=PLATFORM, timeout=10)
        except grpc.aio.AioRpcError as err:
            tally.codes[err.code().name] += 1
            if err.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}:
                tally.reasons[failure(err).reason] += 1
            if err.code() not in RETRYABLE:
                return
            await asyncio.sleep(0.05)
            continue
        assert isinstance(answer, platform_pb2.OpenSessionResponse)
        tally.codes["OK"] += 1
        tally.sessions[request.request_id] = answer.session.session_id
        return
    tally.stuck.append(request.request_id)


async def drive(
    stub: platform_pb2_grpc.PlatformServiceAsyncStub,
    merchant_id: str,
    tally: Tally,
    stop: asyncio.Event,
    clients: int = 8,
) -> None:
    """``clients`` concurrent callers, each opening sessions one after another until ``stop``."""

    async def client() -> None:
        while not stop.is_set():
            await open_until_ok(stub, merchant_id, tally)

    await asyncio.gather(*(client() for _ in range(clients)))


async def assert_each_request_committed_once(pool: asyncpg.Pool, tally: Tally) -> None:
    """Zero INTERNAL/UNKNOWN; every request_id answered and stored as exactly one session, its own."""
    assert not {"INTERNAL", "UNKNOWN"} & set(tally.codes), tally.summary()
    assert set(tally.codes) <= {"OK", *(c.name for c in RETRYABLE)}, tally.summary()
    assert set(tally.reasons) <= {"DATABASE_UNAVAILABLE", "CONCURRENT_UPDATE"}, tally.summary()
    assert tally.stuck == [], f"never answered OK: {tally.stuck[:5]}; {tally.summary()}"
    rows = await pool.fetch("SELECT request_id, session_id::text AS session_id FROM sessions")
    stored: dict[str, list[str]] = {}
    for row in rows:
        stored.setdefault(row["request_id"], []).append(row["session_id"])
    answered = {k: [v] for k, v in tally.sessions.items()}
    wrong = {
        k: (answered.get(k), stored.get(k)) for k in answered.keys() | stored.keys() if answered.get(k) != stored.get(k)
    }
    assert not wrong, f"one session per request_id, the one answered; (answered, stored): {list(wrong.items())[:5]}"
