"""The shipped entry points as real OS processes: `escalation serve | token | dev`, called with grpcurl.

Every process gets free ports (never the defaults a developer's `make run` may hold), a deadline, and is
stopped and reaped in a ``finally`` even when an assertion fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from escalation.devenv.ports import free_port
from escalation.devenv.postgres import find_pg_bin, make_data_dir
from tests.conftest import JWT_SECRET
from tests.e2e.harness import ESCALATION, Process, clean_env, free_addr, run, service_env, started

pytestmark = pytest.mark.e2e

GRPCURL = Path(sys.executable).with_name("grpcurl")

SERVICES = (
    "escalation.v1.PlatformService",
    "escalation.v1.MerchantService",
    "escalation.v1.MerchantAdminService",
    "escalation.v1.OpsService",
    "grpc.health.v1.Health",
)
DEMO_AGENTS = ("demo-agent-1", "demo-agent-2", "demo-agent-3")

SERVE_READY_TIMEOUT = 30.0
SERVE_STOP_TIMEOUT = 15.0
DEV_READY_TIMEOUT = 60.0
DEV_STOP_TIMEOUT = 30.0


# --- processes -------------------------------------------------------------------------------------


@contextmanager
def _started(argv: tuple[str, ...], env: Mapping[str, str], logs: Path, name: str) -> Iterator[Process]:
    """Starts ``argv`` with output to files in ``logs``; on exit it is stopped and reaped, whatever happened."""
    with started(argv, env, logs, name, stop_timeout=DEV_STOP_TIMEOUT) as process:
        yield process


def _token(role: str, sub: str, merchant_id: str | None = None, secret: str = JWT_SECRET) -> str:
    argv: tuple[str, ...] = (*ESCALATION, "token", "--role", role, "--sub", sub)
    if merchant_id is not None:
        argv += ("--merchant-id", merchant_id)
    result = run(argv, clean_env(ESCALATION_JWT_SECRET=secret))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2, result.stdout
    return token


# --- grpcurl ---------------------------------------------------------------------------------------


def _grpcurl(
    addr: str, *args: str, token: str | None = None, data: Mapping[str, Any] | None = None, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    argv: tuple[str, ...] = (str(GRPCURL), "-plaintext", "-connect-timeout", "2", "-max-time", str(timeout))
    if token is not None:
        argv += ("-H", f"authorization: Bearer {token}")
    if data is not None:
        argv += ("-d", json.dumps(data))
    return run((*argv, addr, *args), os.environ, timeout=timeout + 5)


def _call(addr: str, method: str, token: str, data: Mapping[str, Any]) -> dict[str, Any]:
    result = _grpcurl(addr, method, token=token, data=data)
    assert result.returncode == 0, f"{method} failed ({result.returncode}): {result.stdout}{result.stderr}"
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


def _list_agents(addr: str, token: str) -> dict[str, dict[str, Any]]:
    response = _call(addr, "escalation.v1.MerchantAdminService/ListAgents", token, {})
    return {agent["agent_id"]: agent for agent in response.get("agents", [])}


def _wait_listing(addr: str, server: Process, timeout: float = SERVE_READY_TIMEOUT) -> list[str]:
    """Polls `grpcurl list` until the server answers; fails fast (with its output) if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with status {server.proc.returncode} before serving\n{server.output()}")
        result = _grpcurl(addr, "list", timeout=2)
        if result.returncode == 0:
            return result.stdout.split()
        if time.monotonic() >= deadline:
            pytest.fail(f"`grpcurl list` on {addr} failed for {timeout:.0f} s: {result.stderr}\n{server.output()}")
        time.sleep(0.1)


@contextmanager
def _serving(database_url: str, logs: Path, name: str, **extra: str) -> Iterator[tuple[Process, str, str]]:
    """An `escalation serve` on free ports; yields (process, gRPC address, metrics address)."""
    grpc_addr, metrics_addr = free_addr(), free_addr()
    env = service_env(database_url, grpc_addr=grpc_addr, metrics_addr=metrics_addr, **extra)
    with _started((*ESCALATION, "serve"), env, logs, name) as server:
        yield server, grpc_addr, metrics_addr


def _upsert_merchant(addr: str, merchant_id: str, main_account_id: str) -> dict[str, Any]:
    return _call(
        addr,
        "escalation.v1.OpsService/UpsertMerchant",
        _token("ops", "ops-1"),
        {"merchant": {"merchant_id": merchant_id, "main_account_id": main_account_id}},
    )


def _assert_one_clear_line(stderr: str, *mentions: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    assert lines[0].strip(), stderr
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"


# --- /proc -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    start_time: int  # clock ticks after boot: tells a reused pid from the original
    cmdline: str


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ..."; comm may hold spaces or parentheses, so split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[Proc]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[Proc] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        fields = _stat_fields(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields is not None:
            found.append(Proc(pid, int(fields[19]), cmdline.strip()))
    return found


def _is_gone(proc: Proc) -> bool:
    """Gone, reused by another process, or a zombie (this sandbox's PID 1 does not reap orphans)."""
    fields = _stat_fields(proc.pid)
    return fields is None or fields[0] == "Z" or int(fields[19]) != proc.start_time


# --- serve -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "overrides"),
    [
        ("ESCALATION_GRPC_ADDR", {"ESCALATION_GRPC_ADDR": "nonsense"}),
        ("ESCALATION_JWT_SECRET", {"ESCALATION_JWT_SECRET": "too-short"}),
        ("ESCALATION_DB_POOL_MAX", {"ESCALATION_DB_POOL_MAX": "0"}),
        ("ESCALATION_DATABASE_URL", {"ESCALATION_DATABASE_URL": ""}),
        ("ESCALATION_LOG_FORMAT", {"ESCALATION_LOG_FORMAT": "xml"}),
    ],
    ids=["grpc-addr", "jwt-secret-too-short", "pool-max-zero", "database-url-missing", "log-format"],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(variable: str, overrides: dict[str, str]) -> None:
    # Everything else valid, and nothing listens on the database port: a bad value must stop us before any I/O.
    env = clean_env(
        ESCALATION_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/escalation",
        ESCALATION_JWT_SECRET=JWT_SECRET,
        ESCALATION_GRPC_ADDR=free_addr(),
        ESCALATION_METRICS_ADDR=free_addr(),
    )
    env.update(overrides)
    result = run((*ESCALATION, "serve"), env)
    assert result.returncode == 2, result.stderr
    _assert_one_clear_line(result.stderr, variable)
    assert result.stdout == ""


def test_serve_answers_grpcurl_and_stops_gracefully_on_sigterm(database_url: str, tmp_path: Path) -> None:
    with _serving(database_url, tmp_path, "serve", ESCALATION_LOG_FORMAT="json") as (server, addr, metrics):
        listed = _wait_listing(addr, server)
        assert set(SERVICES) <= set(listed), listed

        merchant = _upsert_merchant(addr, "m1", "m-main")
        assert merchant["merchant_id"] == "m1"
        assert merchant["main_account_id"] == "m-main"

        agents = _list_agents(addr, _token("merchant", "m-main", "m1"))
        assert list(agents) == ["m-main"]
        assert agents["m-main"]["main_account"] is True
        assert agents["m-main"]["merchant_id"] == "m1"

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{metrics}/metrics", timeout=5) as response:
            assert response.status == 200
            exposition = response.read().decode()
        assert "grpc_server_handled_total" in exposition
        assert 'grpc_method="UpsertMerchant"' in exposition

        assert server.terminate(SERVE_STOP_TIMEOUT) == 0, server.output()

        events = []
        for stream, text in (("stdout", server.stdout()), ("stderr", server.stderr())):
            for line in text.splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    pytest.fail(f"{stream} line is not JSON: {line!r}\n{server.output()}")
                assert isinstance(event, dict), line
                assert "event" in event, line
                assert "level" in event, line
                events.append(event["event"])
        assert events[0] == "server.started", events
        assert events[-2:] == ["server.stopping", "server.stopped"], events


def test_taken_grpc_port_is_a_clear_message_not_a_traceback(database_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        env = clean_env(
            ESCALATION_DATABASE_URL=database_url,
            ESCALATION_JWT_SECRET=JWT_SECRET,
            ESCALATION_GRPC_ADDR=addr,
            ESCALATION_METRICS_ADDR=free_addr(),
        )
        result = run((*ESCALATION, "serve"), env)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("escalation:")]
    assert len(ours) == 1, result.stderr
    assert addr in ours[0], ours
    assert "ESCALATION_GRPC_ADDR" in ours[0], ours


def test_taken_metrics_port_is_a_clear_message_not_a_traceback(database_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        env = clean_env(
            ESCALATION_DATABASE_URL=database_url,
            ESCALATION_JWT_SECRET=JWT_SECRET,
            ESCALATION_GRPC_ADDR=free_addr(),
            ESCALATION_METRICS_ADDR=addr,
        )
        result = run((*ESCALATION, "serve"), env)
    assert result.returncode != 0, result.stderr
    _assert_one_clear_line(result.stderr, addr, "ESCALATION_METRICS_ADDR")


def test_two_serve_processes_share_one_database(database_url: str, tmp_path: Path) -> None:
    with (
        _serving(database_url, tmp_path, "serve-a") as (server_a, addr_a, _),
        _serving(database_url, tmp_path, "serve-b") as (server_b, addr_b, _),
    ):
        _wait_listing(addr_a, server_a)
        _wait_listing(addr_b, server_b)
        main = _token("merchant", "shared-main", "shared")

        _upsert_merchant(addr_a, "shared", "shared-main")
        assert list(_list_agents(addr_b, main)) == ["shared-main"]

        _upsert_merchant(addr_b, "shared", "shared-main-2")
        agents = _list_agents(addr_a, _token("merchant", "shared-main-2", "shared"))
        assert agents["shared-main-2"]["main_account"] is True
        assert agents["shared-main"].get("main_account", False) is False

        assert server_a.terminate(SERVE_STOP_TIMEOUT) == 0, server_a.output()
        assert server_b.terminate(SERVE_STOP_TIMEOUT) == 0, server_b.output()


# --- dev -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevPorts:
    postgres: int
    kafka: int
    grpc_addr: str
    metrics_addr: str

    @classmethod
    def free(cls) -> DevPorts:
        return cls(free_port(), free_port(), free_addr(), free_addr())

    def env(self) -> dict[str, str]:
        return clean_env(
            ESCALATION_DEV_PG_PORT=str(self.postgres),
            ESCALATION_DEV_KAFKA_PORT=str(self.kafka),
            ESCALATION_GRPC_ADDR=self.grpc_addr,
            ESCALATION_METRICS_ADDR=self.metrics_addr,
        )


@pytest.fixture
def dev_data_dir() -> Iterator[Path]:
    """As root, PostgreSQL runs as `postgres`, which cannot enter pytest's 0700 tmp_path."""
    path = make_data_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_banner(runner: Process, timeout: float = DEV_READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while "escalation is running" not in runner.stdout():
        if runner.proc.poll() is not None:
            pytest.fail(
                f"`escalation dev` exited with status {runner.proc.returncode} before its banner\n{runner.output()}"
            )
        if time.monotonic() >= deadline:
            pytest.fail(f"no banner from `escalation dev` within {timeout:.0f} s\n{runner.output()}")
        time.sleep(0.1)


def _source(env_file: Path) -> dict[str, str]:
    """What `source dev.env` would export (the file holds only `export NAME=value` lines)."""
    exported: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        if line.strip():
            words = shlex.split(line)
            assert len(words) == 2, line
            assert words[0] == "export", line
            name, _, value = words[1].partition("=")
            exported[name] = value
    return exported


def _assert_demo_directory(addr: str, main_token: str) -> None:
    agents = _list_agents(addr, main_token)
    assert sorted(agents) == sorted(["demo-main", *DEMO_AGENTS]), agents
    for agent_id in DEMO_AGENTS:
        assert agents[agent_id].get("eligible") is True, agents[agent_id]
        assert agents[agent_id].get("im_permission") is True, agents[agent_id]
    assert agents["demo-main"].get("main_account") is True


def _run_dev_until_sigterm(data_dir: Path, ports: DevPorts, logs: Path, name: str, token: str | None) -> str:
    """One `escalation dev` run: banner, demo directory via grpcurl, SIGTERM, nothing left behind.

    Returns the MAIN_TOKEN from dev.env; ``token`` (from an earlier run) is checked to still work too.
    """
    argv = (*ESCALATION, "dev", "--data-dir", str(data_dir))
    with _started(argv, ports.env(), logs, name) as runner:
        _wait_banner(runner)
        assert (data_dir / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600
        exported = _source(data_dir / "dev.env")
        assert {"OPS_TOKEN", "MAIN_TOKEN", "AGENT_TOKEN", "PLATFORM_TOKEN", "ESCALATION_JWT_SECRET"} <= set(exported)
        main_token = exported["MAIN_TOKEN"]
        _assert_demo_directory(ports.grpc_addr, main_token)
        if token is not None:
            _assert_demo_directory(ports.grpc_addr, token)

        tree = _descendants(runner.proc.pid)
        for kind in ("postgres", "tansu", "escalation serve"):
            assert any(kind in p.cmdline for p in tree), f"no {kind!r} below the runner: {tree}"

        assert runner.terminate(DEV_STOP_TIMEOUT) == 0, runner.output()
        left = [p for p in tree if not _is_gone(p)]
        assert left == [], f"still running after the dev runner exited: {left}"
        assert "Traceback" not in runner.output(), runner.output()
        assert runner.stdout().rstrip().endswith("stopped"), runner.output()
    return main_token


def test_dev_runner_serves_seeded_demo_and_sigterm_leaves_no_process(dev_data_dir: Path, tmp_path: Path) -> None:
    ports = DevPorts.free()
    first_token = _run_dev_until_sigterm(dev_data_dir, ports, tmp_path, "dev-1", token=None)
    assert {"pg", "logs", "dev.env", "dev-jwt-secret"} <= {p.name for p in dev_data_dir.iterdir()}
    # Same data dir and ports again: the ports were released, the seed is idempotent, old tokens still work.
    _run_dev_until_sigterm(dev_data_dir, ports, tmp_path, "dev-2", token=first_token)


def test_dev_runner_with_taken_postgres_port_exits_nonzero_naming_the_variable(dev_data_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        free = DevPorts.free()
        ports = DevPorts(holder.getsockname()[1], free.kafka, free.grpc_addr, free.metrics_addr)
        result = run((*ESCALATION, "dev", "--data-dir", str(dev_data_dir)), ports.env())
    assert result.returncode != 0, result.stdout + result.stderr
    _assert_one_clear_line(result.stderr, "ESCALATION_DEV_PG_PORT", str(ports.postgres))
    assert "Traceback" not in result.stdout


def _cluster_state(pg_data: Path) -> str:
    """`Database cluster state` from pg_controldata: "shut down" after a clean stop, "in production" if killed."""
    result = run((str(find_pg_bin() / "pg_controldata"), str(pg_data)), os.environ)
    assert result.returncode == 0, result.stderr
    state = re.search(r"^Database cluster state:\s*(.+)$", result.stdout, re.MULTILINE)
    assert state is not None, result.stdout
    return state.group(1).strip()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["hup", "term", "int"])
def test_dev_runner_stops_postgres_cleanly_on_hangup_like_any_stop(
    sig: signal.Signals, dev_data_dir: Path, tmp_path: Path
) -> None:
    # SIGHUP is what closing the terminal of `make run` sends; by default it killed the runner and the
    # parent-death signal then SIGKILLed PostgreSQL, leaving the cluster "in production".
    ports = DevPorts.free()
    argv = (*ESCALATION, "dev", "--data-dir", str(dev_data_dir))
    with _started(argv, ports.env(), tmp_path, f"dev-{sig.name}") as runner:
        _wait_banner(runner)
        tree = _descendants(runner.proc.pid)
        assert _cluster_state(dev_data_dir / "pg") == "in production"
        runner.proc.send_signal(sig)
        assert runner.proc.wait(DEV_STOP_TIMEOUT) == 0, runner.output()
        left = [p for p in tree if not _is_gone(p)]
        assert left == [], f"still running after the dev runner exited: {left}"
        assert runner.stdout().rstrip().endswith("stopped"), runner.output()
    assert _cluster_state(dev_data_dir / "pg") == "shut down"
