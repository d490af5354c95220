"""The stream hub of one server process: LISTEN once, wake the streams a NOTIFY concerns.

The event log in PostgreSQL is the truth; a notification only says "merchant M has news". Each stream
then reads the log from its own cursor, so a lost notification (or a lost LISTEN connection) delays
delivery by at most one heartbeat interval and never loses or reorders anything. Writes through any
replica reach streams on every replica this way.

The hub also keeps this process's rows in ``agent_presence`` fresh, so every replica can tell whether
an agent holds a live Connect stream somewhere (recorded with each assignment).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
import structlog

from escalation.observability import metrics
from escalation.store.queries import sql

log = structlog.get_logger(__name__)

EVENTS_CHANNEL = "escalation_events"
AGENTS_CHANNEL = "escalation_agents"


@dataclass(eq=False)
class Subscription:
    """One stream's interest in a merchant (and, for access changes, in one agent)."""

    merchant_id: str
    agent_id: str | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    access_changed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_id: uuid.UUID = field(default_factory=uuid.uuid4)


class Hub:
    def __init__(self, dsn: str, pool: asyncpg.Pool, *, presence_refresh_seconds: float = 15.0) -> None:
        self._dsn = dsn
        self._pool = pool
        self._refresh = presence_refresh_seconds
        self.server_id = uuid.uuid4().hex
        self.closing = asyncio.Event()
        self._by_merchant: dict[str, set[Subscription]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._maintain(), name="hub-maintain")

    async def close(self) -> None:
        """Ends every stream (they answer UNAVAILABLE so clients reconnect elsewhere) and stops."""
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            await self._pool.execute(sql("presence_forget_server"), self.server_id)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(EVENTS_CHANNEL, self._on_event)
        await conn.add_listener(AGENTS_CHANNEL, self._on_agent)
        self._conn = conn

    def _on_event(self, _conn: object, _pid: int, _channel: str, merchant_id: str) -> None:
        for sub in self._by_merchant.get(merchant_id, ()):
            sub.wake.set()

    def _on_agent(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        merchant_id, _, agent_id = payload.partition("\t")
        for sub in self._by_merchant.get(merchant_id, ()):
            if sub.agent_id is None or sub.agent_id == agent_id:
                sub.access_changed.set()

    def _wake_all(self) -> None:
        for subs in self._by_merchant.values():
            for sub in subs:
                sub.wake.set()
                sub.access_changed.set()

    async def _maintain(self) -> None:
        """Re-LISTENs after a lost connection (waking everyone to re-read) and refreshes presence."""
        while True:
            await asyncio.sleep(self._refresh)
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._listen()
                    log.info("hub.relistening")
                    self._wake_all()
                await self._pool.execute(sql("presence_refresh"), self.server_id)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.warning("hub.maintenance_failed", error=str(exc))

    async def subscribe(self, merchant_id: str, agent_id: str | None, *, present: bool) -> Subscription:
        """Registers a stream; ``present`` records the agent as connected (Connect, not WatchSession)."""
        sub = Subscription(merchant_id, agent_id)
        self._by_merchant[merchant_id].add(sub)
        if present and agent_id is not None:
            await self._pool.execute(sql("presence_add"), sub.stream_id, self.server_id, merchant_id, agent_id)
            metrics.STREAMS_CONNECTED.inc()
        return sub

    async def unsubscribe(self, sub: Subscription, *, present: bool) -> None:
        subs = self._by_merchant.get(sub.merchant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_merchant[sub.merchant_id]
        if present and sub.agent_id is not None:
            metrics.STREAMS_CONNECTED.dec()
            with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                await self._pool.execute(sql("presence_remove"), sub.stream_id)
