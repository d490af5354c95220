"""The one process harness of the tests: `escalation <subcommand>` as a real OS process.

One place builds a child's environment (``clean_env``: the developer's ESCALATION_* removed, gRPC fork
support off; ``service_env``: database, JWT secret, addresses, no throttling), one class holds a started
process (``Process``: output, JSON log events, terminate, stop, kill), one context manager starts and
always stops it (``started``, on ``escalation.devenv.process.spawn``, so a killed test run leaves no
child holding a port), and two waits say when it is ready (``wait_serving``: gRPC health SERVING;
``wait_started``: the worker logged ``worker.started``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation.devenv.ports import free_port
from escalation.devenv.process import spawn, stop_process
from tests.conftest import JWT_SECRET, UNTHROTTLED_ENV

REPO = Path(__file__).resolve().parents[2]
ESCALATION = (sys.executable, "-m", "escalation")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 30.0


# --- environment -----------------------------------------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment minus any ESCALATION_* a developer's shell may carry, plus ``overrides``.

    GRPC_ENABLE_FORK_SUPPORT is off as in tests/conftest.py (why: see there) unless ``overrides`` say
    otherwise; a child that forks nothing loses nothing by it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATION_")}
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    env.update(overrides)
    return env


def free_addr() -> str:
    """``127.0.0.1:<port>`` on a free port: never the defaults a developer's `make run` may hold."""
    return f"127.0.0.1:{free_port()}"


def service_env(
    database_url: str, *, grpc_addr: str | None = None, metrics_addr: str | None = None, **overrides: str
) -> dict[str, str]:
    """The environment of an `escalation serve` under test: ``database_url``, the tests' JWT secret, the
    given (or free) addresses, a 2 s shutdown grace, no throttling (UNTHROTTLED_ENV), then ``overrides``."""
    return clean_env(
        **{
            "ESCALATION_DATABASE_URL": database_url,
            "ESCALATION_JWT_SECRET": JWT_SECRET,
            "ESCALATION_GRPC_ADDR": grpc_addr or free_addr(),
            "ESCALATION_METRICS_ADDR": metrics_addr or free_addr(),
            "ESCALATION_SHUTDOWN_GRACE_SECONDS": "2",
            **UNTHROTTLED_ENV,
            **overrides,  # may override the defaults above
        }
    )


# --- processes -------------------------------------------------------------------------------------


@dataclass
class Process:
    """A started child; its stdout and stderr are files in the test's log directory."""

    name: str
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    metrics_addr: str = ""
    grpc_addr: str = ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- {self.name} stdout ---\n{self.stdout()}\n--- {self.name} stderr ---\n{self.stderr()}"

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line of both streams (other lines are skipped: see ``foreign_lines``)."""
        events: list[dict[str, Any]] = []
        for line in (self.stdout() + "\n" + self.stderr()).splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def foreign_lines(self) -> list[str]:
        """Output lines that are not JSON log events (e.g. a raw traceback, a library's print)."""
        lines = []
        for line in (self.stdout() + "\n" + self.stderr()).splitlines():
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError:
                lines.append(line)
        return lines

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == name]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; raises TimeoutExpired (the context's cleanup then kills it)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL if that is not enough, and always reap."""
        stop_process(self.proc, signal.SIGTERM, timeout)


@contextmanager
def started(
    argv: Sequence[str],
    env: Mapping[str, str],
    logs: Path,
    name: str,
    *,
    metrics_addr: str = "",
    grpc_addr: str = "",
    stop_timeout: float = STOP_TIMEOUT,
) -> Iterator[Process]:
    """``argv`` started in ``REPO`` with output to ``logs/<name>.out|.err``; stopped and reaped on exit,
    whatever happened inside (SIGTERM, SIGKILL after ``stop_timeout`` seconds)."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = logs / f"{name}.out", logs / f"{name}.err"
    # spawn appends; a restarted process of the same name must not show its predecessor's lines.
    for path in (stdout_path, stderr_path):
        path.unlink(missing_ok=True)
    proc = spawn(argv, log_path=stdout_path, stderr_path=stderr_path, env=env, cwd=str(REPO))
    process = Process(name, proc, stdout_path, stderr_path, metrics_addr=metrics_addr, grpc_addr=grpc_addr)
    try:
        yield process
    finally:
        process.stop(stop_timeout)


@contextmanager
def escalation(
    args: Sequence[str], env: Mapping[str, str], logs: Path, name: str, *, stop_timeout: float = STOP_TIMEOUT
) -> Iterator[Process]:
    """``escalation <args>`` (``serve``, ``worker outbox``, ``dev``…); its addresses are read from ``env``."""
    with started(
        (*ESCALATION, *args),
        env,
        logs,
        name,
        metrics_addr=env.get("ESCALATION_METRICS_ADDR", ""),
        grpc_addr=env.get("ESCALATION_GRPC_ADDR", ""),
        stop_timeout=stop_timeout,
    ) as process:
        yield process


def run(
    argv: Sequence[str], env: Mapping[str, str], *, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` in ``REPO`` to completion, capturing text output; on timeout subprocess.run kills and
    reaps the child before raising TimeoutExpired."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- readiness -------------------------------------------------------------------------------------


def channel(process: Process, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to ``process``: plaintext, or TLS with ``credentials`` (its CA, and a client certificate for mTLS)."""
    if credentials is None:
        return grpc.aio.insecure_channel(process.grpc_addr)
    return grpc.aio.secure_channel(process.grpc_addr, credentials)


async def wait_serving(
    process: Process, within: float = READY_TIMEOUT, *, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Polls the gRPC health check until SERVING; fails fast (with its output) if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with channel(process, credentials) as channel_:
        health = health_pb2_grpc.HealthStub(channel_)
        while True:
            if not process.alive:
                pytest.fail(f"{process.name} exited with status {process.proc.returncode}\n{process.output()}")
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.aio.AioRpcError:
                pass
            else:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() >= deadline:
                pytest.fail(
                    f"{process.name} not SERVING on {process.grpc_addr} within {within:.0f} s\n{process.output()}"
                )
            await asyncio.sleep(0.05)


async def wait_started(process: Process, within: float = READY_TIMEOUT) -> None:
    """Until the worker logged ``worker.started``; fails fast (with its output) if it exits first."""
    deadline = time.monotonic() + within
    while not process.events_named("worker.started"):
        if not process.alive:
            pytest.fail(f"{process.name} exited with status {process.proc.returncode}\n{process.output()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{process.name} did not log worker.started within {within:.0f} s\n{process.output()}")
        await asyncio.sleep(0.05)
