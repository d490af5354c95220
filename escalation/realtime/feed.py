"""One merchant's new events, read once per wake-up for every stream of it on this process (issue 10 §2).

A NOTIFY only marks the feed dirty; the feed's task then reads the merchant's head, the access of every
agent holding a stream here (one statement, so one snapshot), and the events up to that head (one
page-bounded query, no agent filter), and publishes the three together. Each stream then takes the
events after its own cursor from memory and filters them by its own access: the database cost of a
wake-up is the same for one stream or two thousand.

Why access is read with the head: every event up to the head committed before that snapshot was taken,
so any change of access that committed before the event is visible in it. A stream therefore never
shows an event under access older than the event (SPEC R9: a narrowed scope applies at once).

A stream whose cursor lies before what the feed holds (a resume, or a reader that fell behind) reads
its own pages until it catches up, as at connect; its cost is its own backlog, not every wake-up.

What the feed holds: only events some live stream of it has not delivered yet. Each stream reports its
cursor (``track``); events at or below the lowest cursor are dropped at once, so a shop whose streams
are all caught up costs no event memory. A stream that is behind keeps what it still needs, within
``keep`` events and ``limits.FEED_BYTE_BUDGET`` bytes; beyond that the oldest go and that stream reads
its own pages. When the last stream leaves, the feed drops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog
from google.protobuf import message as pb_message

from escalation import errors
from escalation.domain import limits
from escalation.store import events
from escalation.store.queries import sql
from escalation.v1 import merchant_pb2

log = structlog.get_logger(__name__)

RETRY_SECONDS = 0.5  # a failed read is retried after this long (streams read for themselves meanwhile)


@dataclass(frozen=True)
class Access:
    """What one merchant agent may do, as of one database snapshot (SPEC R1, R9)."""

    known: bool  # the agent exists in the shop
    im_permission: bool
    disabled: bool
    main_account: bool

    def check(self) -> None:
        """Raises unless the agent may hold a Connect stream.

        Raises:
            errors.AgentDisabled: the agent is disabled.
            errors.ImPermissionRequired: unknown agent, or no IM permission (SPEC R1).
        """
        if self.known and self.disabled:
            raise errors.AgentDisabled()
        if not (self.known and self.im_permission):
            raise errors.ImPermissionRequired()


# What a stream writes for one event, built once per feed by a function the API layer supplies (the hub
# knows no gRPC frame: api/server.py passes one that wraps the event in a ConnectResponse).
Frame = Callable[[merchant_pb2.MerchantEvent], pb_message.Message]


def bare_event(event: merchant_pb2.MerchantEvent) -> pb_message.Message:
    """The default :data:`Frame`: the event itself (tests of the hub that write no gRPC stream)."""
    return event


@dataclass(frozen=True)
class Buffered:
    """One event of the log, with the frame every stream writes (built once, shared, never mutated)."""

    cursor: int
    agent_id: str | None  # the session's assigned agent when the event was written
    frame: pb_message.Message
    size: int  # the frame's serialized bytes, for the feed's byte budget


@dataclass(frozen=True)
class Snapshot:
    """What a stream may deliver now: the events in (``start``, ``head``] and who may see them."""

    start: int
    head: int
    access: dict[str, Access]

    def has(self, cursor: int, agent_id: str) -> bool:
        return agent_id in self.access and self.start <= cursor


class MerchantFeed:
    """The shared reader of one merchant's event log on this process."""

    def __init__(
        self,
        merchant_id: str,
        pool: asyncpg.Pool,
        *,
        agents: Callable[[], Iterable[str]],
        on_read: Callable[[], None],
        frame: Frame = bare_event,
        keep: int = 1000,
        page_size: int = 200,
        max_bytes: int = limits.FEED_BYTE_BUDGET,
    ) -> None:
        self.merchant_id = merchant_id
        self._pool = pool
        self._agents = agents  # the agents holding a stream of this merchant here, asked at each read
        self._on_read = on_read  # wakes the streams
        self._frame = frame
        self._keep = keep  # events held in memory (streams further behind read their own pages)
        self._page = page_size
        self._max_bytes = max_bytes
        self._events: list[Buffered] = []
        self._bytes = 0  # sum of the held events' sizes
        self._positions: Counter[int] = Counter()  # live streams' cursors: how many streams at each
        self._snapshot: Snapshot | None = None
        self.failed = False
        self.reads = 0  # completed reads, for tests and the bench
        self._dirty = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"feed-{merchant_id}")

    def wake(self) -> None:
        """The merchant has news (or access changed): read once more, soon."""
        self._dirty.set()

    def behind(self, head: int) -> bool:
        """Whether the log's head ``head`` is past the newest read (or no read has succeeded yet)."""
        return self._snapshot is None or self.failed or self._snapshot.head < head

    def knows(self, agent_id: str) -> bool:
        return self._snapshot is not None and agent_id in self._snapshot.access

    def stop(self) -> None:
        self._task.cancel()
        self._events, self._bytes = [], 0  # the last stream left: nothing is needed any more

    def held(self) -> tuple[int, int]:
        """(events, bytes) held in memory now, for tests and the bench."""
        return len(self._events), self._bytes

    def track(self, old: int | None, new: int | None) -> None:
        """A stream of this feed moved from cursor ``old`` to ``new`` (None: not there; joined or left).

        Events at or below the lowest live cursor are dropped once no stream is left at the old lowest one:
        one trim per fan-out pass, not one per stream.
        """
        if old == new:
            return
        if new is not None:
            self._positions[new] += 1
        if old is not None:
            self._positions[old] -= 1
            if self._positions[old] <= 0:
                del self._positions[old]
                self._trim()

    def snapshot(self) -> Snapshot | None:
        """The newest published read; None before the first one, or while reads fail."""
        return None if self.failed else self._snapshot

    def since(self, cursor: int) -> list[Buffered]:
        """Events after ``cursor`` (which must be ≥ the snapshot's start), oldest first."""
        if not self._events:
            return []
        first = self._events[0].cursor
        return self._events[max(0, cursor + 1 - first) :]

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._read()
                self.failed = False
            except Exception as exc:  # streams fall back to their own reads, which report the error
                log.warning("feed.read_failed", merchant_id=self.merchant_id, error=str(exc))
                self.failed = True
                self._on_read()
                await asyncio.sleep(RETRY_SECONDS)
                self._dirty.set()
                continue
            self.reads += 1
            self._on_read()

    async def _read(self) -> None:
        agents = sorted(set(self._agents()))
        position = await self._pool.fetchrow(sql("feed_position"), self.merchant_id, agents)
        if position is None:
            raise errors.MerchantNotFound()
        head = int(position["head"])
        old = self._snapshot
        after = old.head if old is not None else head
        held = old is not None and head - after <= self._keep
        if not held:
            after = max(after, head - self._keep)  # a backlog this long is read by the streams that need it
        fresh: list[Buffered] = []
        while after < head:
            rows = await self._pool.fetch(sql("events_after"), self.merchant_id, after, None, head, self._page)
            if not rows:
                break
            fresh += [_buffered(r, self._frame) for r in rows]
            after = rows[-1]["cursor"]
        # Held events stay only if the new ones follow them without a hole; otherwise the feed starts over
        # at what it read (streams before that read their own pages, which also reports expired cursors).
        contiguous = held and after >= head and (not fresh or old is None or fresh[0].cursor == old.head + 1)
        self._publish(fresh if after >= head else [], head, _access(position, agents), keep_held=contiguous)

    def _publish(self, fresh: Sequence[Buffered], head: int, access: dict[str, Access], *, keep_held: bool) -> None:
        """Events, head and access change together, with no await between (see the module docstring)."""
        if not keep_held:
            self._events, self._bytes = [], 0
        self._events += fresh
        self._bytes += sum(b.size for b in fresh)
        self._snapshot = Snapshot(start=head, head=head, access=access)
        self._trim()

    def _trim(self) -> None:
        """Drops what every live stream delivered, then the oldest beyond ``keep`` or the byte budget.

        The snapshot's start follows, so a stream whose cursor lies before what is held reads its own pages.
        """
        floor = min(self._positions, default=None)
        drop = 0
        if self._events:
            first = self._events[0].cursor
            # No live stream: nothing is needed. Cursors are consecutive, so the index is arithmetic.
            drop = len(self._events) if floor is None else max(0, min(len(self._events), floor + 1 - first))
        dropped = sum(b.size for b in self._events[:drop])
        while len(self._events) - drop > self._keep or self._bytes - dropped > self._max_bytes:
            dropped += self._events[drop].size
            drop += 1
        if drop:
            del self._events[:drop]
            self._bytes -= dropped
        if self._snapshot is not None:
            start = self._events[0].cursor - 1 if self._events else self._snapshot.head
            self._snapshot = dataclasses.replace(self._snapshot, start=start)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _buffered(row: asyncpg.Record, framed: Frame) -> Buffered:
    frame = framed(events.from_row(row))
    return Buffered(row["cursor"], row["agent_id"], frame, frame.ByteSize())


def _access(position: asyncpg.Record, agents: Sequence[str]) -> dict[str, Access]:
    known, with_im, disabled = set(position["known"]), set(position["with_im"]), set(position["disabled"])
    main = position["main_account_id"]
    return {a: Access(a in known, a in with_im, a in disabled, a == main) for a in agents}


def position_access(row: asyncpg.Record) -> Access:
    """The access columns of ``stream_position`` (one agent)."""
    return Access(bool(row["known"]), bool(row["im_permission"]), bool(row["disabled"]), bool(row["main_account"]))
