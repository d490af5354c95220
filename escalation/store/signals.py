"""Wake-ups sent after a write commits, never from inside it (issue 13 §1; docs/realtime.md).

A NOTIFY inside a writing transaction takes PostgreSQL's database-wide notify lock at commit and holds
it through the WAL flush, so every such commit of the deployment queues behind the others and none are
grouped. Instead, a use case that committed rows somebody waits for calls :func:`touch` (synchronous,
no await) right after the commit. Each process keeps one :class:`Notifier` per pool, which gathers what
was touched and sends it as one statement (``send_signals``) that writes nothing; touches made while a
statement is in flight ride the next one, so under load it is one statement per round trip, not one
per call, and when idle the wake-up leaves at once (no batching delay).

The tables stay the truth. A wake-up lost between commit and send (the process dies, the statement
fails) costs latency, never an event: the stream hubs re-read the event heads every
``limits.SIGNAL_POLL_SECONDS``, the relay polls the outbox every ``OutboxConfig.poll_interval`` and the
deadline worker never sleeps past ``DeadlineConfig.poll_interval``.

Channels and payloads (what the listeners already understood from the triggers of 0002/0003):
``escalation_events`` — a merchant id; ``escalation_outbox`` — empty; ``escalation_deadline`` — the
epoch second (text) by which the deadline worker should look again.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog

from escalation.store.queries import sql

log = structlog.get_logger(__name__)

EVENTS_CHANNEL = "escalation_events"
OUTBOX_CHANNEL = "escalation_outbox"
DEADLINE_CHANNEL = "escalation_deadline"


class Notifier:
    """Coalesces one pool's post-commit wake-ups and sends them, one statement in flight at a time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._merchants: set[str] = set()
        self._outbox = False
        self._due: float | None = None  # epoch seconds: the earliest instant something may come due
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self.statements = 0  # statements sent, for tests and the bench

    def touch(self, merchant_ids: tuple[str, ...], *, outbox: bool, due_in: float | None) -> None:
        """Records committed news; sends it now, or with the next batch if one is in flight."""
        self._merchants.update(merchant_ids)
        self._outbox = self._outbox or outbox
        if due_in is not None:
            at = time.time() + max(0.0, due_in)
            self._due = at if self._due is None else min(self._due, at)
        self._kick()

    def pause(self) -> None:
        """Holds every wake-up back until :meth:`resume` (tests: prove the writes themselves notify nothing)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._kick()

    def pending(self) -> bool:
        return bool(self._merchants or self._outbox or self._due is not None)

    async def drain(self) -> None:
        """Waits until what was touched so far has been sent (or its send failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._paused or self._task is not None or not self.pending():
            return
        self._task = asyncio.get_running_loop().create_task(self._send(), name="signals-send")

    def _take(self) -> tuple[list[str], list[str]]:
        channels = [EVENTS_CHANNEL] * len(self._merchants)
        payloads = sorted(self._merchants)
        if self._outbox:
            channels.append(OUTBOX_CHANNEL)
            payloads.append("")
        if self._due is not None:
            channels.append(DEADLINE_CHANNEL)
            payloads.append(f"{self._due:.3f}")
        self._merchants, self._outbox, self._due = set(), False, None
        return channels, payloads

    async def _send(self) -> None:
        try:
            while self.pending() and not self._paused and not self._pool.is_closing():
                channels, payloads = self._take()
                try:
                    await self._pool.execute(sql("send_signals"), channels, payloads)
                    self.statements += 1
                except Exception as exc:  # lost: the listeners' polling bounds the delay (module docstring)
                    log.warning("signals.send_failed", error=str(exc), signals=len(channels))
                    return  # the next touch tries again; no retry loop against a database that is away
        finally:
            self._task = None


# Keyed by id(pool), holding the pool itself so the id cannot be reused while the entry lives; entries
# of closed pools are dropped when another pool registers (asyncpg pools take no weak references).
_notifiers: dict[int, tuple[asyncpg.Pool, Notifier]] = {}


def notifier(pool: asyncpg.Pool) -> Notifier:
    """This process's notifier for ``pool`` (created on first use)."""
    entry = _notifiers.get(id(pool))
    if entry is not None and entry[0] is pool:
        return entry[1]
    for key, (other, _) in list(_notifiers.items()):
        if other.is_closing():
            del _notifiers[key]
    created = Notifier(pool)
    _notifiers[id(pool)] = (pool, created)
    return created


def touch(pool: asyncpg.Pool, *merchant_ids: str, outbox: bool = False, due_in: float | None = None) -> None:
    """Announces writes that have just committed through ``pool``; call it after the commit, never inside.

    ``merchant_ids``: merchants whose event log grew (their streams wake, SPEC R8). ``outbox``: outbox rows
    were inserted (the relay wakes, SPEC R7). ``due_in``: seconds from now before which no deadline or
    reminder written can come due (the deadline worker wakes then at the latest, SPEC R5). Never raises
    for a database problem and never waits: sending happens in the background.
    """
    notifier(pool).touch(merchant_ids, outbox=outbox, due_in=due_in)
