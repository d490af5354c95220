"""N `escalation serve` OS processes on one database, for tests of rules that must hold across replicas.

Each replica gets its own free gRPC and metrics ports and its output in files (tests/e2e/harness.py);
all of them are stopped and reaped when the context exits, whatever happened inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from escalation.devenv.ports import free_port
from tests.e2e.harness import (
    ESCALATION,
    READY_TIMEOUT,
    REPO,
    STOP_TIMEOUT,
    channel,
    escalation,
    service_env,
    wait_serving,
)
from tests.e2e.harness import Process as Replica

__all__ = ["ESCALATION", "READY_TIMEOUT", "REPO", "STOP_TIMEOUT", "Replica", "channel", "serving", "wait_serving"]


def _distinct_addrs(count: int) -> list[str]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return [f"127.0.0.1:{port}" for port in ports]


@contextmanager
def serving(database_url: str, logs: Path, count: int = 2, **extra: str) -> Iterator[list[Replica]]:
    """``count`` `escalation serve` processes sharing ``database_url``; not yet known to be ready."""
    addrs = _distinct_addrs(2 * count)
    with ExitStack() as stack:
        replicas = []
        for n in range(count):
            env = service_env(database_url, grpc_addr=addrs[2 * n], metrics_addr=addrs[2 * n + 1], **extra)
            replicas.append(stack.enter_context(escalation(["serve"], env, logs, f"replica-{n}")))
        yield replicas
