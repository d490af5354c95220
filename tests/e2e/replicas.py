"""N `escalation serve` OS processes on one database, for tests of rules that must hold across replicas.

Each replica gets its own free gRPC and metrics ports (never the defaults a developer's `make run` may
hold) and its output in files; all of them are stopped and reaped when the context exits, whatever
happened inside it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation.devenv.ports import free_port
from tests.conftest import JWT_SECRET, UNTHROTTLED_ENV

REPO = Path(__file__).resolve().parents[2]
ESCALATION = (sys.executable, "-m", "escalation")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    grpc_addr: str
    metrics_addr: str
    stdout_path: Path
    stderr_path: Path

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace")
        err = self.stderr_path.read_text(errors="replace")
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr ---\n{err}"

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; raises TimeoutExpired (the context's cleanup then kills it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL if that is not enough, and always reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


def _env(**overrides: str) -> dict[str, str]:
    """This environment minus any ESCALATION_* a developer's shell may carry, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATION_")}
    env.update(overrides)
    return env


def _distinct_addrs(count: int) -> list[str]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return [f"127.0.0.1:{port}" for port in ports]


@contextmanager
def _replica(name: str, env: dict[str, str], logs: Path, grpc_addr: str, metrics_addr: str) -> Iterator[Replica]:
    stdout_path, stderr_path = logs / f"{name}.out", logs / f"{name}.err"
    # The child has its own copies of the descriptors; ours are closed straight away.
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            (*ESCALATION, "serve"), env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    replica = Replica(name, proc, grpc_addr, metrics_addr, stdout_path, stderr_path)
    try:
        yield replica
    finally:
        replica.stop()


@contextmanager
def serving(database_url: str, logs: Path, count: int = 2, **extra: str) -> Iterator[list[Replica]]:
    """``count`` `escalation serve` processes sharing ``database_url``; not yet known to be ready."""
    logs.mkdir(parents=True, exist_ok=True)
    addrs = _distinct_addrs(2 * count)
    with ExitStack() as stack:
        replicas = []
        for n in range(count):
            grpc_addr, metrics_addr = addrs[2 * n], addrs[2 * n + 1]
            env = _env(
                **{
                    "ESCALATION_DATABASE_URL": database_url,
                    "ESCALATION_JWT_SECRET": JWT_SECRET,
                    "ESCALATION_GRPC_ADDR": grpc_addr,
                    "ESCALATION_METRICS_ADDR": metrics_addr,
                    "ESCALATION_SHUTDOWN_GRACE_SECONDS": "2",
                    **UNTHROTTLED_ENV,
                    **extra,  # may override the defaults above
                }
            )
            replicas.append(stack.enter_context(_replica(f"replica-{n}", env, logs, grpc_addr, metrics_addr)))
        yield replicas


def channel(replica: Replica, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to ``replica``: plaintext, or TLS with ``credentials`` (its CA, and a client certificate for mTLS)."""
    if credentials is None:
        return grpc.aio.insecure_channel(replica.grpc_addr)
    return grpc.aio.secure_channel(replica.grpc_addr, credentials)


async def wait_serving(
    replica: Replica, within: float = READY_TIMEOUT, *, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Polls the gRPC health check until SERVING; fails fast (with its output) if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with channel(replica, credentials) as channel_:
        health = health_pb2_grpc.HealthStub(channel_)
        while True:
            if replica.proc.poll() is not None:
                pytest.fail(f"{replica.name} exited with status {replica.proc.returncode}\n{replica.output()}")
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.aio.AioRpcError:
                pass
            else:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() >= deadline:
                pytest.fail(
                    f"{replica.name} not SERVING on {replica.grpc_addr} within {within:.0f} s\n{replica.output()}"
                )
            await asyncio.sleep(0.05)
