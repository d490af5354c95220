"""What every background worker shares: a LISTEN wake-up with polling fallback, and a resilient loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from escalation import errors
from escalation.observability.http import HEALTH, RoundClock
from escalation.store import db

log = structlog.get_logger(__name__)

MAX_BACKOFF = 30.0  # seconds between retries of a round failing for any other reason (e.g. Kafka down)
# Seconds between retries while the database is unavailable: a sleeping worker is not woken when it
# returns, so this bounds how late deadlines and the relay resume (issue 9 §2: within 2 s). A retry is
# one refused connect or one failed statement, cheap enough to repeat every second for a long outage.
DATABASE_RETRY = 1.0
# Seconds between repeated log lines for one ongoing failure; the first failure and the recovery
# (and any change of cause) are always logged.
FAILURE_LOG_EVERY = 30.0


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

    def _lost(self, _conn: object) -> None:
        # A notification may have been missed while the connection was going: run a round now (it
        # reads the table, the truth), which also re-listens on the way back to sleep.
        self._next_connect = 0.0
        self._wake_at = time.monotonic()
        self._event.set()

    async def _ensure_listening(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if time.monotonic() < self._next_connect:
            return
        try:
            self._conn = await asyncpg.connect(
                self._dsn, server_settings={"application_name": f"escalation-wakeup-{self._channel}"}
            )
            # Before LISTEN: a connection lost between the two must still wake the worker.
            self._conn.add_termination_listener(self._lost)
            await self._conn.add_listener(self._channel, self._listener)
        except Exception as exc:
            # Only a hint (the worker polls anyway), so no failure to listen may stop the worker: not
            # a refused connect, nor asyncpg's TargetServerAttributeNotMatched during a failover. Not
            # listening, a notification may be missed: run a round now (it reads the table), and try to
            # listen again as soon as the database retry allows.
            if self._conn is not None:
                self._conn.terminate()
            self._conn = None
            self._next_connect = time.monotonic() + DATABASE_RETRY
            self._wake_at = time.monotonic()
            log.warning("wakeup.listen_failed", channel=self._channel, error=str(exc))

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleeps ``seconds``, less if a notification asks for an earlier wake-up or ``stop`` is set."""
        until = time.monotonic() + seconds
        while not stop.is_set():
            await self._ensure_listening()
            if self._wake_at is not None:
                until = min(until, self._wake_at)
            now = time.monotonic()
            remaining = until - now
            if remaining <= 0:
                break
            if self._conn is None:
                # Not listening (the last attempt failed): try again as soon as the retry allows rather
                # than sleeping the whole interval deaf.
                remaining = min(remaining, max(self._next_connect - now, 0.01))
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


class _Failures:
    """A streak of failed rounds: how long to pause next, and whether it is worth a log line."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.count = 0
        self._cause = ""
        self._since = 0.0
        self._logged = 0.0

    def failed(self, exc: Exception) -> float:
        """Records a failure; returns the seconds to pause before the next round."""
        now = time.monotonic()
        self.count += 1
        if self.count == 1:
            self._since = now
        domain = db.translate(exc)
        unavailable = isinstance(domain, errors.DatabaseUnavailable)
        if unavailable:
            pause = min(DATABASE_RETRY, 0.25 * 2.0 ** (self.count - 1))
        else:
            pause = min(MAX_BACKOFF, 0.5 * 2.0 ** (self.count - 1))
        cause = domain.reason if unavailable and domain is not None else type(exc).__name__
        if self.count == 1 or cause != self._cause or now - self._logged >= FAILURE_LOG_EVERY:
            self._cause, self._logged = cause, now
            fields = {"worker": self._name, "cause": cause, "retry_in": pause, "failures": self.count}
            if unavailable:
                # An outage, not a bug: no traceback, and one line per FAILURE_LOG_EVERY while it lasts.
                log.warning("worker.round_failed", error=f"{type(exc).__name__}: {exc}", **fields)
            else:
                log.exception("worker.round_failed", **fields)
        return pause

    def succeeded(self) -> None:
        if self.count:
            log.info(
                "worker.recovered",
                worker=self._name,
                failures=self.count,
                failing_seconds=round(time.monotonic() - self._since, 3),
            )
        self.count, self._cause = 0, ""


async def run_forever(
    *, name: str, stop: asyncio.Event, wakeup: Wakeup, round_: Callable[[], Awaitable[float]]
) -> None:
    """Calls ``round_`` (which returns how long to sleep) until ``stop``; logs and backs off on error.

    A round failing because the database is unavailable (``store.db.translate``) is retried every
    ``DATABASE_RETRY`` seconds at most, any other failure with exponential backoff up to
    ``MAX_BACKOFF``. Cancellation ends the loop, never counts as a failure.

    The loop's health is on /livez and /readyz (``observability.http.RoundClock``): a round not done
    ``HEALTH.stall_seconds`` after the sleep before it ended fails /livez; a failed round, /readyz.
    """
    failures = _Failures(name)
    clock = RoundClock(HEALTH.stall_seconds)
    check = f"worker {name}"
    HEALTH.add_liveness(check, clock.live)
    HEALTH.add_readiness(check, clock.ready)
    log.info("worker.started", worker=name)
    try:
        while not stop.is_set():
            try:
                pause = await round_()
                failures.succeeded()
                clock.round_done(True, pause)
            except Exception as exc:
                pause = failures.failed(exc)
                clock.round_done(False, pause)
            await wakeup.sleep(pause, stop)
    finally:
        HEALTH.remove(check)
        await wakeup.close()
        log.info("worker.stopped", worker=name)
