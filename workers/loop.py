"""What every background worker shares: a LISTEN wake-up with polling fallback, and a resilient loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

log = structlog.get_logger(__name__)

MAX_BACKOFF = 30.0  # seconds between retries of a failing round


class Wakeup:
    """Wakes a sleeping worker when PostgreSQL NOTIFYs its channel.

    Only a hint: a lost notification (or a lost LISTEN connection) costs at most one poll interval,
    because the worker never sleeps longer than that. ``on_payload`` turns a payload into "wake in
    this many seconds" (None: ignore); by default any notification wakes at once.
    """

    def __init__(self, dsn: str, channel: str, on_payload: Callable[[str], float | None] | None = None) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_payload = on_payload
        self._conn: asyncpg.Connection | None = None
        self._event = asyncio.Event()
        self._wake_at: float | None = None
        self._next_connect = 0.0

    def _listener(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        delay = self._on_payload(payload) if self._on_payload else 0.0
        if delay is None:
            return
        at = time.monotonic() + delay
        if self._wake_at is None or at < self._wake_at:
            self._wake_at = at
            self._event.set()

    async def _ensure_listening(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if time.monotonic() < self._next_connect:
            return
        try:
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.add_listener(self._channel, self._listener)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._conn = None
            self._next_connect = time.monotonic() + 5.0
            log.warning("wakeup.listen_failed", channel=self._channel, error=str(exc))

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleeps ``seconds``, less if a notification asks for an earlier wake-up or ``stop`` is set."""
        await self._ensure_listening()
        until = time.monotonic() + seconds
        while not stop.is_set():
            if self._wake_at is not None:
                until = min(until, self._wake_at)
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._event.clear()
            stopped = asyncio.ensure_future(stop.wait())
            notified = asyncio.ensure_future(self._event.wait())
            try:
                await asyncio.wait({stopped, notified}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                notified.cancel()
        self._wake_at = None

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


async def run_forever(
    *, name: str, stop: asyncio.Event, wakeup: Wakeup, round_: Callable[[], Awaitable[float]]
) -> None:
    """Calls ``round_`` (which returns how long to sleep) until ``stop``; logs and backs off on error."""
    failures = 0
    log.info("worker.started", worker=name)
    try:
        while not stop.is_set():
            try:
                pause = await round_()
                failures = 0
            except Exception:
                failures += 1
                pause = min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))
                log.exception("worker.round_failed", worker=name, retry_in=pause, failures=failures)
            await wakeup.sleep(pause, stop)
    finally:
        await wakeup.close()
        log.info("worker.stopped", worker=name)
