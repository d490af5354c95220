"""The stream hub of one server process: LISTEN once, wake the streams a NOTIFY concerns.

The event log in PostgreSQL is the truth; a notification only says "merchant M has news", and the log is
then read from the cursor that was reached, so a lost notification never loses or reorders anything. Writes
through any replica reach streams on every replica this way.

A lost LISTEN connection is noticed at once when PostgreSQL or the socket says so (termination
listener) and within seconds when the network drops it silently (a probe with a timeout, and TCP
keepalives); it is replaced with a short capped backoff, and then every stream re-reads the log, so
only the reconnect itself delays delivery (issue 9 §8).

Since issue 10 §2 a NOTIFY wakes the merchant's feed (realtime/feed.py), which reads the log once for
all the merchant's streams here and then wakes them; access-change notifications wake it the same way.

Since issue 13 §1 the event notifications come from the writers' post-commit notifiers (store/signals.py),
not from a trigger in the writing transaction, so one can be lost after its commit (the writer died). The
hub therefore also reads the event heads of the merchants it serves every ``limits.SIGNAL_POLL_SECONDS``
and wakes the feeds that are behind: a lost wake-up delays events by at most that long, never loses one.

The hub also keeps this process's rows in ``agent_presence`` fresh, so every replica can tell whether
an agent holds a live Connect stream somewhere (recorded with each assignment).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

import asyncpg
import structlog

from escalation.domain import limits
from escalation.observability import metrics
from escalation.realtime.feed import Frame, MerchantFeed, bare_event
from escalation.store import signals
from escalation.store.queries import sql

log = structlog.get_logger(__name__)

EVENTS_CHANNEL = signals.EVENTS_CHANNEL
AGENTS_CHANNEL = "escalation_agents"
# Names the listener's backend in pg_stat_activity (operators, and tests that terminate it).
LISTENER_APPLICATION_NAME = "escalation-hub-listener"
PROBE_SECONDS = 2.0  # how often an idle listener is checked, and how long a check may take
# A feed's news is handed to its streams WAKE_BATCH at a time, the next batch once these wrote it or after
# WAKE_SLICE seconds (a reader that does not read holds up only its batch, briefly). So thousands of one
# shop's streams never fill the event loop's ready queue at once: another tenant's unary call waits
# behind at most a batch of stream writes per step, not behind all of them (issue 10 §2).
WAKE_BATCH = 4
WAKE_SLICE = 0.05
# After each batch but the last, the pass pauses for as long as the batch took: one shop's fan-out takes
# at most about a third of this process's time while it has more streams to wake, the rest stays for other
# tenants' calls. A shop with WAKE_BATCH streams or fewer on this process is never paused.
YIELD_PER_BATCH = 2.0
RECONNECT_BACKOFF = (0.05, 2.0)  # seconds: first retry, cap (doubling) while the database is away
# Server-side TCP keepalives (seconds, count) so PostgreSQL drops a dead listener's backend too.
_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}


@dataclass(eq=False)
class Subscription:
    """One stream's interest in a merchant's news; ``agent_id`` is the Connect stream's agent."""

    merchant_id: str
    agent_id: str | None
    feed: MerchantFeed
    present: bool  # a Connect stream: the agent counts as connected while it is live
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stream_id: uuid.UUID = field(default_factory=uuid.uuid4)
    # The presence row's insert, run as its own task so cancelling the stream cannot interrupt it
    # half-way: release() waits for it, then deletes the row (issue 10 §3).
    announced: asyncio.Task[bool] | None = None
    # The delivery pass batch that woke this stream and waits for it to finish writing (see Hub._pass).
    batch: _Batch | None = None
    # The Connect stream's cursor as the feed knows it: the feed keeps only events after its streams'
    # lowest cursor (issue 10 §2). None for a stream that does not read the merchant log (WatchSession).
    cursor: int | None = None

    def at(self, cursor: int) -> None:
        """The stream delivered everything up to ``cursor`` (a merchant log cursor)."""
        self.feed.track(self.cursor, cursor)
        self.cursor = cursor

    def delivered(self) -> None:
        """The stream wrote what it was woken for (or has nothing to write) and waits again."""
        batch, self.batch = self.batch, None
        if batch is not None:
            batch.remaining -= 1
            if batch.remaining <= 0:
                batch.done.set()


@dataclass(eq=False)
class _Batch:
    remaining: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        presence_refresh_seconds: float = 15.0,
        feed_keep_events: int = 1000,
        page_size: int = 200,
        frame: Frame = bare_event,
    ) -> None:
        """``frame`` builds what a stream writes for an event, once per process (api/server.py: the
        ``Connect`` frame); the hub itself knows no gRPC message."""
        self._dsn = dsn
        self._frame = frame
        self._pool = pool
        self._refresh = presence_refresh_seconds
        self._feed_keep = feed_keep_events
        self._page_size = page_size
        self.server_id = uuid.uuid4().hex
        self.closing = asyncio.Event()
        self._by_merchant: dict[str, set[Subscription]] = {}
        self._feeds: dict[str, MerchantFeed] = {}
        self._passes: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # merchants whose running pass must start over (newer news)
        self._cleanups: set[asyncio.Task[None]] = set()
        # Reads of the log a stream made for itself (resume, or behind its feed), for tests and the bench;
        # each feed counts its own (MerchantFeed.reads).
        self.catch_up_reads = 0
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="hub-listener"),
            asyncio.create_task(self._refresh_presence(), name="hub-presence"),
            asyncio.create_task(self._poll_heads(), name="hub-heads"),
        ]

    async def close(self) -> None:
        """Ends every stream (they answer UNAVAILABLE so clients reconnect elsewhere) and stops."""
        self.closing.set()
        for subs in self._by_merchant.values():
            for sub in subs:
                sub.wake.set()  # a waiting stream sees `closing` and ends
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in list(self._passes.values()):
            task.cancel()
        for feed in list(self._feeds.values()):
            await feed.close()
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=PROBE_SECONDS)
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
        feed = self._feeds.get(merchant_id)
        if feed is not None:
            feed.wake()

    def _on_agent(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # "merchant\tagent" (an agent's access changed) or "merchant\t" (the main account moved): the
        # feed re-reads the access of every agent it serves from the database, never from a cache.
        merchant_id, _, _agent_id = payload.partition("\t")
        feed = self._feeds.get(merchant_id)
        if feed is not None:
            feed.wake()

    def _wake_all(self) -> None:
        for feed in self._feeds.values():
            feed.wake()

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

    async def poll_heads_once(self) -> int:
        """Wakes the feeds whose merchant's log is ahead of what they read; returns how many it woke.

        The fallback for a lost post-commit wake-up (module docstring): one statement for every merchant
        served here, none when no stream is connected.
        """
        feeds = dict(self._feeds)
        if not feeds:
            return 0
        woken = 0
        for row in await self._pool.fetch(sql("event_heads"), sorted(feeds)):
            feed = feeds.get(row["merchant_id"])
            if feed is not None and feed.behind(int(row["head"])):
                feed.wake()
                woken += 1
        return woken

    async def _poll_heads(self) -> None:
        while True:
            await asyncio.sleep(limits.SIGNAL_POLL_SECONDS)
            try:
                await self.poll_heads_once()
            except Exception as exc:  # keep polling whatever one round met (see _keep_listening)
                log.warning("hub.heads_poll_failed", error=str(exc))

    def live_stream_ids(self) -> list[uuid.UUID]:
        """The presence rows this process's live Connect streams hold (or are inserting)."""
        return [sub.stream_id for subs in self._by_merchant.values() for sub in subs if sub.present]

    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._by_merchant.values())

    def feed(self, merchant_id: str) -> MerchantFeed | None:
        return self._feeds.get(merchant_id)

    async def refresh_presence_once(self) -> None:
        """Keeps the rows of live streams fresh and deletes this server's other rows (issue 10 §3).

        A row whose release could not reach the database is thus gone within one refresh period and
        never counts as connected (it would otherwise be refreshed for as long as the process lives).
        """
        live = self.live_stream_ids()
        async with self._pool.acquire() as conn:
            await conn.execute(sql("presence_refresh"), self.server_id, live)
            await conn.execute(sql("presence_prune"), self.server_id, live)

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self.refresh_presence_once()
            except Exception as exc:  # keep refreshing whatever one round met (see _keep_listening)
                log.warning("hub.presence_refresh_failed", error=str(exc))

    def subscribe(self, merchant_id: str, agent_id: str | None, *, present: bool) -> Subscription:
        """Registers a stream at once (no await, so nothing can interrupt it); pair with ``release``.

        ``present`` (Connect, not WatchSession) also starts inserting the agent's presence row, in a task
        of its own; ``announce`` waits for it.
        """
        feed = self._feeds.get(merchant_id)
        if feed is None:
            feed = MerchantFeed(
                merchant_id,
                self._pool,
                agents=lambda: (s.agent_id for s in self._by_merchant.get(merchant_id, ()) if s.agent_id),
                on_read=lambda: self._wake_streams(merchant_id),
                frame=self._frame,
                keep=self._feed_keep,
                page_size=self._page_size,
            )
            self._feeds[merchant_id] = feed
        sub = Subscription(merchant_id, agent_id, feed, present and agent_id is not None)
        self._by_merchant.setdefault(merchant_id, set()).add(sub)
        if agent_id is not None and not feed.knows(agent_id):
            feed.wake()  # its next read includes this agent's access
        if sub.present:
            sub.announced = asyncio.create_task(self._add_presence(sub), name="hub-presence-add")
        return sub

    def _wake_streams(self, merchant_id: str) -> None:
        if merchant_id in self._passes:
            self._again.add(merchant_id)
            return
        task = asyncio.create_task(self._pass(merchant_id), name=f"hub-pass-{merchant_id}")
        self._passes[merchant_id] = task
        task.add_done_callback(lambda _: self._passes.pop(merchant_id, None))

    async def _pass(self, merchant_id: str) -> None:
        """Wakes a merchant's streams batch by batch (see WAKE_BATCH), again while news keeps coming."""
        loop = asyncio.get_running_loop()
        while True:
            self._again.discard(merchant_id)
            subs = list(self._by_merchant.get(merchant_id, ()))
            for first in range(0, len(subs), WAKE_BATCH):
                began = loop.time()
                batch = _Batch(0)
                for sub in subs[first : first + WAKE_BATCH]:
                    if sub.batch is None:  # one still busy with an earlier batch is not waited for twice
                        batch.remaining += 1
                        sub.batch = batch
                    sub.wake.set()
                if first + WAKE_BATCH < len(subs):
                    if batch.remaining:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(batch.done.wait(), WAKE_SLICE)
                    await asyncio.sleep((loop.time() - began) * YIELD_PER_BATCH)
            if merchant_id not in self._again:
                return

    async def _add_presence(self, sub: Subscription) -> bool:
        assert sub.agent_id is not None
        await self._pool.execute(sql("presence_add"), sub.stream_id, self.server_id, sub.merchant_id, sub.agent_id)
        metrics.STREAMS_CONNECTED.inc()
        return True

    async def announce(self, sub: Subscription) -> None:
        """Waits until the stream's presence row is in (a failure raises, e.g. the database is down)."""
        if sub.announced is not None:
            await asyncio.shield(sub.announced)

    async def release(self, sub: Subscription) -> None:
        """Forgets a stream and deletes its presence row; safe to call at any point after ``subscribe``.

        The in-memory part happens before the first await; the row's removal runs as its own task that a
        second cancellation of the caller does not interrupt (issue 10 §3: shielded cleanup).
        """
        sub.feed.track(sub.cursor, None)
        sub.cursor = None
        subs = self._by_merchant.get(sub.merchant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_merchant[sub.merchant_id]
                feed = self._feeds.pop(sub.merchant_id, None)
                if feed is not None:
                    feed.stop()
        if sub.announced is None:
            return
        task = asyncio.create_task(self._remove_presence(sub.announced, sub.stream_id), name="hub-presence-remove")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def _remove_presence(self, announced: asyncio.Task[bool], stream_id: uuid.UUID) -> None:
        try:
            await announced  # an insert still in flight would otherwise land after the delete
        except Exception:
            return  # never inserted
        metrics.STREAMS_CONNECTED.dec()
        try:
            await self._pool.execute(sql("presence_remove"), stream_id)
        except Exception as exc:  # the refresher prunes the row (it is no longer live)
            log.warning("hub.presence_remove_failed", error=str(exc))
