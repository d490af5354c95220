"""The stream hub of one server process: LISTEN once, wake the streams a NOTIFY concerns.

The event log in PostgreSQL is the truth; a notification only says "merchant M has news". Each stream
then reads the log from its own cursor, so a lost notification never loses or reorders anything. Writes
through any replica reach streams on every replica this way.

A lost LISTEN connection is noticed at once when PostgreSQL or the socket says so (termination
listener) and within seconds when the network drops it silently (a probe with a timeout, and TCP
keepalives); it is replaced with a short capped backoff, and then every stream re-reads the log, so
only the reconnect itself delays delivery (issue 9 §8).

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
# Names the listener's backend in pg_stat_activity (operators, and tests that terminate it).
LISTENER_APPLICATION_NAME = "escalation-hub-listener"
PROBE_SECONDS = 2.0  # how often an idle listener is checked, and how long a check may take
RECONNECT_BACKOFF = (0.05, 2.0)  # seconds: first retry, cap (doubling) while the database is away
# Server-side TCP keepalives (seconds, count) so PostgreSQL drops a dead listener's backend too.
_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}


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
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="hub-listener"),
            asyncio.create_task(self._refresh_presence(), name="hub-presence"),
        ]

    async def close(self) -> None:
        """Ends every stream (they answer UNAVAILABLE so clients reconnect elsewhere) and stops."""
        self.closing.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                await self._conn.close(timeout=PROBE_SECONDS)
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            await self._pool.execute(sql("presence_forget_server"), self.server_id)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=PROBE_SECONDS * 2,
            server_settings={"application_name": LISTENER_APPLICATION_NAME, **_KEEPALIVES},
        )
        try:
            await conn.add_listener(EVENTS_CHANNEL, self._on_event)
            await conn.add_listener(AGENTS_CHANNEL, self._on_agent)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._lost.clear()
        self._conn = conn

    def _on_terminated(self, _conn: object) -> None:
        self._lost.set()

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

    async def _keep_listening(self) -> None:
        """Replaces a lost LISTEN connection promptly, then wakes every stream to re-read the log."""
        while True:
            await self._wait_lost()
            log.warning("hub.listener_lost")
            delay = RECONNECT_BACKOFF[0]
            while True:
                if self._conn is not None:
                    self._conn.terminate()
                try:
                    await self._listen()
                    break
                except Exception as exc:
                    # Any failure, not only the usual ones: asyncpg's TargetServerAttributeNotMatched (a
                    # failover with every host read-only) subclasses plain Exception, and a dead loop here
                    # would silence every stream of this replica until restart.
                    log.warning("hub.relisten_failed", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_BACKOFF[1])
            log.info("hub.relistening")
            self._wake_all()

    async def _wait_lost(self) -> None:
        """Returns when the listener is known lost: told so, or a probe failed or took too long."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), PROBE_SECONDS)
            conn = self._conn
            if self._lost.is_set() or conn is None or conn.is_closed():
                return
            try:
                # A silently dropped network shows up here, long before TCP would notice.
                await conn.fetchval("SELECT 1", timeout=PROBE_SECONDS)
            except Exception:  # any failure of the probe means the listener cannot be trusted
                return

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self._pool.execute(sql("presence_refresh"), self.server_id)
            except Exception as exc:  # keep refreshing whatever one round met (see _keep_listening)
                log.warning("hub.presence_refresh_failed", error=str(exc))

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
