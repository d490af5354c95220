"""The bench's own world: durable embedded PostgreSQL, the embedded broker, and child processes.

Everything started here is registered on ``BenchEnv`` and stopped by ``close()`` (children first, then
the broker, then PostgreSQL), and the scratch directories are removed, whatever happened.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation.devenv.broker import EmbeddedBroker
from escalation.devenv.ports import free_port, wait_for_port
from escalation.devenv.postgres import EmbeddedPostgres, make_data_dir
from escalation.devenv.process import log_tail, spawn, stop_process
from escalation.store.migrate import migrate
from tests.conftest import UNTHROTTLED_ENV
from tests.e2e.harness import clean_env

REPO = Path(__file__).resolve().parents[2]
# Any 32+ byte secret: the bench mints its own tokens for the `escalation serve` it starts.
JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
# UNTHROTTLED_ENV, as for every server under test: the bench drives one platform agent at hundreds of
# OpenSession/SendMessage a second, holds ~70 Connect streams per merchant agent and ~500 streams per
# client connection, far beyond the production limits (SPEC §3 "Limits"), which it does not measure.

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

_START = time.monotonic()


def say(message: str) -> None:
    """One progress line, prefixed with seconds since the bench started."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and carries the relevant log tail."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(self.failure(f"exited with status {self.proc.returncode}"))

    def failure(self, what: str) -> str:
        return f"{self.name} {what}\n--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, STOP_TIMEOUT)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


class BenchEnv:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="escalation-bench-"))
        self._pg_dir: Path | None = None
        self.pg: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self.keep_logs = False

    # --- services ------------------------------------------------------------------------------

    def start_services(self) -> None:
        self._pg_dir = make_data_dir()
        # fast=False: fsync, synchronous_commit and full_page_writes stay on, as in production.
        self.pg = EmbeddedPostgres(self._pg_dir / "pg", port=free_port(), fast=False)
        self.pg.start()
        self.broker = EmbeddedBroker(port=free_port(), log_path=self.workdir / "tansu.log")
        self.broker.start()

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    def dsn(self, database: str = "postgres") -> str:
        assert self.pg is not None
        return self.pg.dsn(database)

    async def create_database(self, name: str) -> str:
        """A new, migrated database on the bench's server; returns its URL."""
        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        url = _with_database(self.dsn(), name)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return url

    async def server_facts(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.dsn())
        try:
            facts: dict[str, str] = {}
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers"):
                facts[name] = str(await conn.fetchval(f"SHOW {name}"))
            return facts
        finally:
            await conn.close()

    # --- child processes -----------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        proc = spawn(argv, log_path=log_path, env=clean_env(**(env or {})), cwd=str(REPO))
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop_child(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def escalation(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        """An ``escalation …`` CLI process (``serve``, ``worker deadlines``, ``worker outbox``)."""
        return self.spawn(name, [sys.executable, "-m", "escalation", *args], env)

    async def serve(
        self, name: str, database_url: str, extra_env: Mapping[str, str] | None = None
    ) -> tuple[Child, str]:
        """``escalation serve`` with default settings (but ``extra_env``) on free ports; returns once SERVING."""
        grpc_addr = f"127.0.0.1:{free_port()}"
        env = {
            "ESCALATION_DATABASE_URL": database_url,
            "ESCALATION_JWT_SECRET": JWT_SECRET,
            "ESCALATION_GRPC_ADDR": grpc_addr,
            "ESCALATION_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "ESCALATION_SHUTDOWN_GRACE_SECONDS": "2",
            **UNTHROTTLED_ENV,
            **(extra_env or {}),
        }
        child = self.escalation(name, ["serve"], env)
        await wait_serving(child, grpc_addr)
        return child, grpc_addr

    async def worker(self, name: str, kind: str, env: Mapping[str, str]) -> Child:
        """``escalation worker <kind>``; returns once its /metrics listens (it is then running)."""
        metrics_port = free_port()
        child = self.escalation(name, ["worker", kind], {**env, "ESCALATION_METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
        await asyncio.to_thread(wait_for_port, "127.0.0.1", metrics_port, READY_TIMEOUT, child.proc, child.log_path)
        return child

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{child.name}: {exc}")
        self.children.clear()
        for stop in (self.broker, self.pg):
            if stop is not None:
                try:
                    stop.stop()
                except Exception as exc:
                    errors.append(f"{type(stop).__name__}: {exc}")
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
        if self.keep_logs:
            say(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            say("cleanup problems: " + "; ".join(errors))


async def wait_serving(child: Child, grpc_addr: str, within: float = READY_TIMEOUT) -> None:
    """Polls the gRPC health check until SERVING; fails fast, with the log, if the process exits."""
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            child.check_alive()
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.aio.AioRpcError:
                pass
            else:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() >= deadline:
                raise BenchError(child.failure(f"not SERVING on {grpc_addr} within {within:.0f} s"))
            await asyncio.sleep(0.05)
