"""The HTTP side of every process: /metrics, /livez and /readyz on ESCALATION_METRICS_ADDR.

Kubernetes probes (deploy/k8s) and compose healthchecks use /livez and /readyz: plain HTTP, so they
keep working whatever the gRPC port's transport security. Each answers 200 ``ok`` or 503 with one line
per failing check. Checks are registered on ``HEALTH`` by the code that knows the state: the worker
loop (workers/loop.py: a round overdue fails /livez, a failing round fails /readyz), `serve` (its gRPC
health status is /readyz) and the event loop ticker below (a blocked event loop fails /livez).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# A check answers None when fine, else why not (one line, shown in the 503 body).
Check = Callable[[], str | None]
TICK_SECONDS = 1.0  # how often the event loop ticker runs


class MetricsPortInUse(OSError):
    """The metrics address is taken."""


class Health:
    """Named liveness and readiness checks; thread-safe to read (the HTTP server runs in threads)."""

    def __init__(self, stall_seconds: float = 120.0) -> None:
        # ESCALATION_LIVENESS_STALL_SECONDS: how overdue a loop may be before /livez fails.
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._live: dict[str, Check] = {}
        self._ready: dict[str, Check] = {}

    def add_liveness(self, name: str, check: Check) -> None:
        """/livez fails while ``check`` answers a reason: the process should be restarted."""
        with self._lock:
            self._live[name] = check

    def add_readiness(self, name: str, check: Check) -> None:
        """/readyz fails while ``check`` answers a reason: the process should get no traffic yet."""
        with self._lock:
            self._ready[name] = check

    def remove(self, name: str) -> None:
        with self._lock:
            self._live.pop(name, None)
            self._ready.pop(name, None)

    def failing(self, kind: str) -> list[str]:
        """The reasons the ``kind`` ("live" or "ready") checks fail, as "name: reason"; empty if none."""
        with self._lock:
            checks = list((self._live if kind == "live" else self._ready).items())
        return [f"{name}: {reason}" for name, check in checks if (reason := check()) is not None]


# The process's one registry: each process kind registers what applies to it.
HEALTH = Health()


class RoundClock:
    """Liveness and readiness of a loop that works in rounds (the workers).

    A loop promises its next completed round by the end of the sleep it chose plus ``stall_seconds``;
    /livez fails once that is past (the loop is stuck: a hung statement, a lost wake-up, a deadlock).
    /readyz fails until a round has succeeded, and while the last one failed (e.g. database down: a
    restart would not help, so that is not a liveness failure).
    """

    def __init__(self, stall_seconds: float) -> None:
        self._stall = stall_seconds
        self._due = time.monotonic() + stall_seconds
        self._last_ok: bool | None = None

    def round_done(self, ok: bool, pause: float) -> None:
        """A round ended (``ok``: it succeeded); the loop sleeps ``pause`` seconds before the next."""
        self._last_ok = ok
        self._due = time.monotonic() + pause + self._stall

    def live(self) -> str | None:
        overdue = time.monotonic() - self._due
        return f"no round completed, {overdue:.0f} s overdue (stuck?)" if overdue > 0 else None

    def ready(self) -> str | None:
        if self._last_ok is None:
            return "no round completed yet"
        return None if self._last_ok else "the last round failed"


async def tick_forever(health: Health, stall_seconds: float) -> None:
    """Registers the event loop's liveness on ``health`` and keeps it fresh until cancelled.

    A tick every ``TICK_SECONDS``; /livez fails once none ran for ``stall_seconds`` (a coroutine
    blocking the loop: every RPC of this process would hang with it).
    """
    last = time.monotonic()

    def check() -> str | None:
        silent = time.monotonic() - last
        return f"the event loop did not run for {silent:.0f} s" if silent > stall_seconds else None

    health.add_liveness("event_loop", check)
    try:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            last = time.monotonic()
    finally:
        health.remove("event_loop")


def _app(health: Health) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/livez", "/readyz"):
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        failing = health.failing("live" if path == "/livez" else "ready")
        body = ("\n".join(failing) + "\n" if failing else "ok\n").encode()
        status = "503 Service Unavailable" if failing else "200 OK"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood stderr; the access log is not wanted."""


def start_metrics_server(address: str, health: Health = HEALTH) -> None:
    """Serves /metrics, /livez and /readyz on HOST:PORT in a daemon thread.

    Raises MetricsPortInUse (a clear one-line error) when the address is taken, OSError otherwise.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")

    class _Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        httpd = make_server(host, int(port), _app(health), _Server, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsPortInUse(
                f"metrics address {address} is already in use; set ESCALATION_METRICS_ADDR"
            ) from None
        raise
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
