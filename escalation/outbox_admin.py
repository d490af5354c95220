"""`escalation outbox retry`: an operator re-drives parked outbox rows (SPEC R7, docs/delivery.md).

A parked row is one the relay gave up on (a record error such as a ticket above the size limit, or
repeated failures while the broker accepted other rows). Once the cause is fixed (a larger
``max.message.bytes``, a repaired topic), this puts the rows back in the queue with a fresh failure
budget and wakes the relays; a row that still cannot be published is parked again, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from escalation.store.queries import sql


@dataclass(frozen=True)
class ParkedRow:
    """One outbox row as it was when re-driven (``payload_bytes``: size of the Kafka value, in bytes)."""

    id: int
    topic: str
    event_id: str
    attempts: int
    last_error: str | None
    parked_time: datetime
    payload_bytes: int

    def describe(self) -> str:
        return (
            f"outbox row {self.id}: topic {self.topic}, event_id {self.event_id}, {self.payload_bytes} bytes,"
            f" parked {self.parked_time.isoformat(timespec='seconds')} after {self.attempts} attempts"
            f" ({self.last_error or 'no error recorded'})"
        )


async def retry_parked(conn: asyncpg.Connection, *, outbox_id: int | None = None) -> list[ParkedRow]:
    """Makes every parked row (or only row ``outbox_id``) pending again; returns the rows re-driven.

    One transaction: the rows are locked, un-parked, and the relays NOTIFYed at commit. An empty list
    means nothing was parked (or row ``outbox_id`` is not parked: missing, pending or published).
    """
    async with conn.transaction():
        rows = [ParkedRow(**dict(r)) for r in await conn.fetch(sql("list_parked"), outbox_id)]
        if rows:
            await conn.execute(sql("unpark"), [r.id for r in rows])
            await conn.execute(sql("wake_relays"))
    return rows


def report(rows: list[ParkedRow], *, outbox_id: int | None) -> tuple[str, int]:
    """What the command prints, and its exit status (1: the row asked for by ``--id`` is not parked)."""
    if not rows:
        if outbox_id is not None:
            return f"outbox row {outbox_id} is not parked (missing, pending or already published); nothing done", 1
        return "no parked outbox rows; nothing done", 0
    lines = [f"re-drove {len(rows)} parked outbox row{'s' if len(rows) != 1 else ''}; the relay publishes them next:"]
    lines += [f"  {r.describe()}" for r in rows]
    return "\n".join(lines), 0
