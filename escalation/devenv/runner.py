"""`escalation dev` (what `make run` runs): embedded PostgreSQL and broker, migrate, seed, serve.

One supervised process tree: PostgreSQL, the broker and `escalation serve` are children of this
process. SIGINT/SIGTERM/SIGHUP (a closed terminal), or any child dying, stops them all in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation import auth, config
from escalation.devenv import demo as demo_script
from escalation.devenv import seed
from escalation.devenv.broker import EmbeddedBroker, TansuNotFoundError
from escalation.devenv.ports import PortInUseError, ensure_free
from escalation.devenv.postgres import EmbeddedPostgres, PostgresNotFoundError
from escalation.devenv.process import StartupError, spawn, stop_process
from escalation.observability import logging as obs_logging
from escalation.store.migrate import migrate

DATABASE = "escalation"
# Each gets the metrics port after serve's (9465, 9466, 9467 by default).
WORKERS = ("deadlines", "outbox", "warnings")
TOKEN_TTL_SECONDS = 30 * 24 * 3600
# `make run` serves this machine only unless told otherwise (issue 10 §6): its tokens are printed and
# its secret sits in .data. Production processes default to every interface (config.py).
DEV_BIND = {"ESCALATION_GRPC_ADDR": "127.0.0.1:50051", "ESCALATION_METRICS_ADDR": "127.0.0.1:9464"}


@dataclass(frozen=True)
class DevPorts:
    postgres: int
    kafka: int
    grpc_addr: str
    metrics_addr: str

    @classmethod
    def from_env(cls) -> DevPorts:
        """Reads the ports (gRPC and metrics on loopback unless set); a bad value is a ConfigError naming it."""
        env = dict(os.environ)
        for name, default in (("ESCALATION_DEV_PG_PORT", "55432"), ("ESCALATION_DEV_KAFKA_PORT", "19092")):
            raw = env.get(name) or default
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise config.ConfigError(f"{name}={raw!r} is invalid: expected a port number 1..65535")
        settings = config.load({name: env.get(name) or default for name, default in DEV_BIND.items()})
        return cls(
            postgres=int(env.get("ESCALATION_DEV_PG_PORT") or "55432"),
            kafka=int(env.get("ESCALATION_DEV_KAFKA_PORT") or "19092"),
            grpc_addr=settings.grpc_addr,
            metrics_addr=settings.metrics_addr,
        )

    def check_free(self) -> None:
        ensure_free("127.0.0.1", self.postgres, "embedded PostgreSQL", "ESCALATION_DEV_PG_PORT")
        ensure_free("127.0.0.1", self.kafka, "embedded Kafka broker", "ESCALATION_DEV_KAFKA_PORT")
        for addr, what, var in (
            (self.grpc_addr, "gRPC", "ESCALATION_GRPC_ADDR"),
            (self.metrics_addr, "metrics", "ESCALATION_METRICS_ADDR"),
        ):
            host, _, port = addr.rpartition(":")
            ensure_free(host, int(port), what, var)
        # The workers serve their metrics on the next ports (see run(): metrics port + 1, + 2, …).
        host, _, port = self.metrics_addr.rpartition(":")
        for offset, name in enumerate(WORKERS, start=1):
            ensure_free(host, int(port) + offset, f"metrics of worker {name}", "ESCALATION_METRICS_ADDR")

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_addr.rpartition(":")[2])


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (0600), from the first byte on.

    The file is created 0600 (never world-readable, not even between a write and a chmod), and an
    existing file with looser bits is tightened first: both dev files hold the dev JWT secret or
    tokens signed with it (issue 10 §6).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _jwt_secret(data_dir: Path) -> str:
    """A random secret per checkout, kept across runs so printed tokens stay valid."""
    path = data_dir / "dev-jwt-secret"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(48))
    path.chmod(0o600)  # a checkout from before this rule may hold it with looser bits
    return path.read_text().strip()


async def _prepare_database(admin_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await seed.seed_demo(pool)
    finally:
        await pool.close()


class _Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived while starting up: skip the rest and stop what runs."""


def _shown(path: Path) -> str:
    """A path as the user can paste it from the current directory."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _wait_serving(port: int, server: subprocess.Popen[bytes], stop: threading.Event, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and not stop.is_set():
            if server.poll() is not None:
                raise StartupError(f"`escalation serve` exited with status {server.returncode}; see its output above")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    if stop.is_set():
        raise _Interrupted
    raise StartupError(f"`escalation serve` did not report SERVING on port {port} within {timeout:.0f} s")


def _reply_timeout_note(override: str | None) -> str:
    """The banner's line on the reply timeout: the override in force, or how to set one."""
    if override:
        return (
            f"Unanswered sessions close after {override} s: ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS={override}\n"
            "overrides every merchant's reply timeout (unset it for the real 120–180 s)."
        )
    return (
        "Unanswered sessions close after the merchant's reply timeout (180 s unless changed with\n"
        "UpdateReplyTimeout); to watch one time out sooner, restart with\n"
        "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS=15 make run."
    )


def _idle_timeout_note(override: str | None) -> str:
    """The banner's line on the idle timeout (SPEC R12): the override in force, or how to set one."""
    if override:
        return (
            f"Answered sessions close as idle after {override} s without a message:\n"
            f"ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS={override} overrides every merchant's idle timeout."
        )
    return (
        "Answered sessions close as idle after the merchant's idle timeout (30 min unless changed with\n"
        "UpdateIdleTimeout); to watch one sooner, restart with ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS=30."
    )


def _banner(ports: DevPorts, secret: str, data_dir: Path) -> str:
    def tok(role: auth.Role, sub: str, merchant_id: str | None = None) -> str:
        return auth.mint(
            key=secret,
            algorithm="HS256",
            subject=sub,
            role=role,
            merchant_id=merchant_id,
            ttl_seconds=TOKEN_TTL_SECONDS,
        )

    grpcurl = Path(sys.executable).with_name("grpcurl")
    g = shlex.quote(_shown(grpcurl)) if grpcurl.exists() else "grpcurl"
    target = f"localhost:{ports.grpc_port}"
    env_file = data_dir / "dev.env"
    write_private(
        env_file,
        f"export OPS_TOKEN={tok(auth.Role.OPS, 'ops-demo')}\n"
        f"export MAIN_TOKEN={tok(auth.Role.MERCHANT, seed.DEMO_MAIN_ACCOUNT, seed.DEMO_MERCHANT)}\n"
        f"export AGENT_TOKEN={tok(auth.Role.MERCHANT, seed.DEMO_AGENTS[0], seed.DEMO_MERCHANT)}\n"
        f"export PLATFORM_TOKEN={tok(auth.Role.PLATFORM, 'platform-demo')}\n"
        f"export ESCALATION_JWT_SECRET={secret}\n",
    )
    rel_env = shlex.quote(_shown(env_file))
    cli = _shown(Path(sys.executable).with_name("escalation"))
    override = os.environ.get("ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS")
    timeout_note = (
        _reply_timeout_note(override)
        + "\n"
        + _idle_timeout_note(os.environ.get("ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS"))
    )
    return f"""
escalation is running (demo merchant {seed.DEMO_MERCHANT!r}: main account {seed.DEMO_MAIN_ACCOUNT!r},
designated agents {", ".join(seed.DEMO_AGENTS)}).

  gRPC      {target}            metrics  http://localhost:{ports.metrics_addr.rpartition(":")[2]}/metrics
  Postgres  postgresql://postgres@127.0.0.1:{ports.postgres}/{DATABASE}
  Kafka     127.0.0.1:{ports.kafka}

In another terminal (tokens are valid for 30 days; mint more with `escalation token`):

  source {rel_env}
  {g} -plaintext {target} list
  {g} -plaintext -H "authorization: Bearer $MAIN_TOKEN" {target} escalation.v1.MerchantAdminService/ListAgents
  {g} -plaintext -H "authorization: Bearer $MAIN_TOKEN" {target} escalation.v1.MerchantAdminService/GetReceptionSettings
  {g} -plaintext -H "authorization: Bearer $MAIN_TOKEN" -d '{{"reply_timeout": "150s"}}' \\
      {target} escalation.v1.MerchantAdminService/UpdateReplyTimeout
  {g} -plaintext -H "authorization: Bearer $OPS_TOKEN" \\
      -d '{{"merchant": {{"merchant_id": "shop-2", "main_account_id": "shop-2-main"}}}}' \\
      {target} escalation.v1.OpsService/UpsertMerchant

  # A platform agent asks the demo shop; the least saturated designated agent gets it.
  {g} -plaintext -H "authorization: Bearer $PLATFORM_TOKEN" \\
      -d '{{"request_id": "demo-1", "merchant_id": "demo-shop", "category": "CATEGORY_ORDER_OPERATION",
      "order_id": "order-42",
      "messages": [{{"text": {{"body": "The buyer wants it shipped today. Can you ship today?"}}}}]}}' \\
      {target} escalation.v1.PlatformService/OpenSession
  # The assigned agent (say demo-agent-1, AGENT_TOKEN) answers; SESSION_ID from the answer above.
  {g} -plaintext -H "authorization: Bearer $AGENT_TOKEN" \\
      -d '{{"session_id": "SESSION_ID", "content": {{"text": {{"body": "Yes, it ships today."}}}}}}' \\
      {target} escalation.v1.MerchantService/Reply
  {g} -plaintext -H "authorization: Bearer $PLATFORM_TOKEN" \\
      -d '{{"session_id": "SESSION_ID", "outcome": "OUTCOME_ESCALATED"}}' \\
      {target} escalation.v1.PlatformService/CloseSession
  # Tickets as the ticketing system sees them (sessions unanswered for the reply timeout, or escalated):
  ESCALATION_KAFKA_BOOTSTRAP=127.0.0.1:{ports.kafka} {cli} tickets tail --from-beginning

{timeout_note}

Ctrl-C stops everything; data stays in {_shown(data_dir)}/ for the next run.
"""


def _demo_note(secret: str, data_dir: Path, target: str) -> str:
    """`make demo`'s lines on opening the workbench as each demo agent; writes their tokens to
    ``demo.env`` (0600, like dev.env) so that no token appears on a command line."""
    names = {f"DEMO_AGENT_{n}_TOKEN": agent for n, agent in enumerate(seed.DEMO_AGENTS, start=1)}
    names["DEMO_MAIN_TOKEN"] = seed.DEMO_MAIN_ACCOUNT
    env_file = data_dir / "demo.env"
    write_private(
        env_file,
        "".join(
            f"export {name}="
            + auth.mint(
                key=secret,
                algorithm="HS256",
                subject=agent,
                role=auth.Role.MERCHANT,
                merchant_id=seed.DEMO_MERCHANT,
                ttl_seconds=TOKEN_TTL_SECONDS,
            )
            + "\n"
            for name, agent in names.items()
        ),
    )
    cli = shlex.quote(_shown(Path(sys.executable).with_name("escalation")))
    lines = [
        "The demo platform agent opens a session for the demo shop every half minute or so. Open the",
        "workbench as a demo agent in another terminal (each gets the sessions assigned to it; the main",
        "account sees the whole shop), answer with a quick reply (type / or press Ctrl+T), and leave one",
        "unanswered to watch it time out into a ticket:",
        "",
        f"  source {shlex.quote(_shown(env_file))}",
    ]
    lines += [f"  {cli} workbench --target {target} --token-env {name}   # as {agent}" for name, agent in names.items()]
    return "\n".join(lines) + "\n"


def run_dev(data_dir: str = ".data", *, demo: bool = False) -> int:
    """Runs until SIGINT/SIGTERM/SIGHUP or until a child dies; returns the exit status.

    ``demo`` (`make demo`) also runs the scripted platform agent of escalation/devenv/demo.py as a
    child like the workers, and prints how to open the workbench as each demo agent.

    SIGHUP (the terminal of `make run` closed) is a stop like the others: by default it would kill us,
    and the parent-death signal would then SIGKILL PostgreSQL mid-write (issue 9 §9).
    """
    obs_logging.configure(log_format=os.environ.get("ESCALATION_LOG_FORMAT", "console"), level="info")
    root = Path(data_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    try:
        ports = DevPorts.from_env()
    except config.ConfigError as exc:
        print(f"escalation dev: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    def interrupted() -> None:
        if stop.is_set():
            raise _Interrupted

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    postgres = EmbeddedPostgres(root / "pg", port=ports.postgres, log_path=logs / "postgres.log")
    broker = EmbeddedBroker(port=ports.kafka, log_path=logs / "broker.log")
    server: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = {}
    status = 0
    started = False
    try:
        ports.check_free()
        started = True
        print(f"starting PostgreSQL on 127.0.0.1:{ports.postgres} (data in {_shown(postgres.data_dir)})", flush=True)
        postgres.init()
        postgres.start()
        interrupted()
        dsn = postgres.dsn(DATABASE)
        print("migrating and seeding the demo merchant", flush=True)
        asyncio.run(_prepare_database(postgres.dsn("postgres"), dsn))
        interrupted()
        print(f"starting the Kafka-protocol broker on 127.0.0.1:{ports.kafka}", flush=True)
        broker.start()
        interrupted()
        secret = _jwt_secret(root)
        env = {
            **os.environ,
            "ESCALATION_DATABASE_URL": dsn,
            "ESCALATION_KAFKA_BOOTSTRAP": broker.bootstrap,
            # The embedded broker lacks InitProducerId; Apache Kafka keeps the default (on).
            "ESCALATION_KAFKA_IDEMPOTENCE": "false",
            "ESCALATION_GRPC_ADDR": ports.grpc_addr,
            "ESCALATION_METRICS_ADDR": ports.metrics_addr,
            "ESCALATION_JWT_ALGORITHM": "HS256",
            "ESCALATION_JWT_SECRET": secret,
            "ESCALATION_LOG_FORMAT": os.environ.get("ESCALATION_LOG_FORMAT", "console"),
            # One embedded broker: topics cannot have more replicas than that.
            "ESCALATION_KAFKA_REPLICATION_FACTOR": "1",
            "ESCALATION_KAFKA_TOPIC_PARTITIONS": os.environ.get("ESCALATION_KAFKA_TOPIC_PARTITIONS", "3"),
        }
        print("starting `escalation serve` and the workers", flush=True)
        server = spawn(
            [sys.executable, "-m", "escalation", "serve"],
            log_path=None,
            env=env,
            cwd=os.getcwd(),
            inherit_output=True,
        )
        metrics_host, _, metrics_port = ports.metrics_addr.rpartition(":")
        for offset, name in enumerate(WORKERS, start=1):
            worker_env = {**env, "ESCALATION_METRICS_ADDR": f"{metrics_host}:{int(metrics_port) + offset}"}
            workers[name] = spawn(
                [sys.executable, "-m", "escalation", "worker", name],
                log_path=None,
                env=worker_env,
                cwd=os.getcwd(),
                inherit_output=True,
            )
        _wait_serving(ports.grpc_port, server, stop)
        interrupted()
        print(_banner(ports, secret, root), flush=True)
        if demo:
            target = f"localhost:{ports.grpc_port}"
            print(_demo_note(secret, root, target), flush=True)
            workers["demo platform agent"] = spawn(
                [sys.executable, "-m", "escalation.devenv.demo", "--target", target],
                log_path=None,
                env={
                    **env,
                    demo_script.JWT_VARIABLE: auth.mint(
                        key=secret,
                        algorithm="HS256",
                        subject=demo_script.PLATFORM_AGENT,
                        role=auth.Role.PLATFORM,
                        ttl_seconds=TOKEN_TTL_SECONDS,
                    ),
                },
                cwd=os.getcwd(),
                inherit_output=True,
            )
        while not stop.wait(0.5):
            children = [("server", server.poll() is None)] + [
                (n if n not in WORKERS else f"worker {n}", p.poll() is None) for n, p in workers.items()
            ]
            died = [
                name
                for name, alive in (
                    *children,
                    ("PostgreSQL", postgres.is_running),
                    ("broker", broker.is_running),
                )
                if not alive
            ]
            if died:
                print(
                    f"escalation dev: {', '.join(died)} stopped unexpectedly; shutting down",
                    file=sys.stderr,
                    flush=True,
                )
                status = 1
                break
    except _Interrupted:
        pass
    except (PortInUseError, PostgresNotFoundError, TansuNotFoundError, StartupError, PermissionError) as exc:
        print(f"escalation dev: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        if started:
            _say("stopping")
        for proc in [*workers.values(), *([server] if server is not None else [])]:
            stop_process(proc, signal.SIGTERM, timeout=15)
        broker.stop()
        postgres.stop()
        if started:
            _say("stopped")
    return status


def _say(line: str) -> None:
    """Prints while stopping; after SIGHUP the terminal may be gone, which must not skip the stop."""
    with contextlib.suppress(OSError):
        print(line, flush=True)
