"""`escalation serve | worker … | tickets tail | migrate | token | dev | platform | workbench`: the one entry."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg
import structlog

from escalation import auth, config
from escalation.bus import kafka
from escalation.observability import logging as obs_logging
from escalation.observability import tracing

if TYPE_CHECKING:
    from workers.warnings import WarningsConfig

log = structlog.get_logger(__name__)

EXIT_CONFIG = 2


class _MigrationBlocked(Exception):
    """A migration gave up waiting for a table lock (lock_timeout); re-run it when the writer is gone."""


class _DatabaseUnreachable(Exception):
    """The database cannot be reached at start (later, database errors are per-RPC statuses)."""


async def _connect_pool(settings: config.Settings) -> asyncpg.Pool:
    from escalation.store import db

    try:
        return await db.create_pool(
            settings.require_database_url(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout_seconds,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _DatabaseUnreachable(str(exc)) from exc


def _settings() -> config.Settings:
    try:
        return config.load()
    except config.ConfigError as exc:
        print(f"escalation: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _fail_config(message: str) -> None:
    print(f"escalation: configuration error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


async def _serve(settings: config.Settings) -> None:
    from escalation.api.server import Server, serve_until_signalled
    from escalation.observability.http import HEALTH, start_metrics_server, tick_forever

    pool = await _connect_pool(settings)
    ticker = asyncio.create_task(tick_forever(HEALTH, settings.liveness_stall_seconds), name="liveness")
    try:
        start_metrics_server(settings.metrics_addr)
        server = Server(settings, pool)
        HEALTH.add_readiness("grpc", lambda: None if server.serving else "gRPC health is not SERVING")
        HEALTH.add_readiness("jwks", server.jwks_readiness)
        await serve_until_signalled(server)
    finally:
        ticker.cancel()
        await pool.close()


async def _migrate(settings: config.Settings) -> None:
    from escalation.store.migrate import migrate

    try:
        conn = await asyncpg.connect(settings.require_database_url())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _DatabaseUnreachable(str(exc)) from exc
    try:
        applied = await migrate(conn)
    except asyncpg.LockNotAvailableError as exc:
        # A migration waited longer than its lock_timeout behind a live transaction (docs/migrations.md):
        # nothing of it was applied; re-running later is safe.
        raise _MigrationBlocked(str(exc)) from exc
    finally:
        await conn.close()
    print(
        f"migrated: {len(applied)} applied"
        + (f" ({', '.join(f'{m.version:04d}_{m.name}' for m in applied)})" if applied else ", already current")
    )


def _kafka_settings(settings: config.Settings) -> kafka.KafkaSettings:
    return kafka.KafkaSettings(
        bootstrap=settings.require_kafka_bootstrap(),
        idempotence=settings.kafka_idempotence,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        topic_prefix=settings.kafka_topic_prefix,
        security=settings.kafka_security,
    )


async def _worker(settings: config.Settings, name: str) -> None:
    """Runs one worker until SIGTERM/SIGINT, serving its own /metrics, /livez and /readyz."""
    from escalation.observability.http import HEALTH, start_metrics_server
    from escalation.services.sessions import SessionPolicy
    from workers.deadlines import DeadlineConfig, DeadlineWorker
    from workers.outbox import OutboxConfig, OutboxRelay
    from workers.warnings import WarningsWorker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await _connect_pool(settings)
    try:
        HEALTH.stall_seconds = settings.liveness_stall_seconds
        start_metrics_server(settings.metrics_addr)
        dsn = settings.require_database_url()
        if name == "deadlines":
            config_ = DeadlineConfig(
                batch_size=settings.deadline_batch_size,
                poll_interval=settings.deadline_poll_seconds,
                policy=SessionPolicy.from_settings(settings),
                event_retention_seconds=settings.event_retention_hours * 3600,
            )
            await DeadlineWorker(pool, config_).run(stop, dsn)
        elif name == "warnings":
            await WarningsWorker(pool, _warnings_config(settings)).run(stop, dsn)
        else:
            relay = OutboxRelay(
                pool,
                _kafka_settings(settings),
                OutboxConfig(
                    batch_size=settings.outbox_batch_size,
                    poll_interval=settings.outbox_poll_seconds,
                    retention_seconds=settings.outbox_retention_hours * 3600,
                    max_attempts=settings.outbox_max_attempts,
                ),
            )
            await relay.run(stop, dsn)
    finally:
        await pool.close()


async def _outbox_retry(settings: config.Settings, outbox_id: int | None) -> int:
    from escalation import outbox_admin

    try:
        conn = await asyncpg.connect(settings.require_database_url())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _DatabaseUnreachable(str(exc)) from exc
    try:
        rows = await outbox_admin.retry_parked(conn, outbox_id=outbox_id)
    finally:
        await conn.close()
    text, status = outbox_admin.report(rows, outbox_id=outbox_id)
    print(text)
    return status


def _warnings_config(settings: config.Settings) -> WarningsConfig:
    from datetime import timedelta

    from escalation.domain.timeliness import WarningRule
    from workers.warnings import WarningsConfig

    return WarningsConfig(
        rule=WarningRule(
            reply_rate_threshold=settings.warning_reply_rate_threshold,
            min_sessions=settings.warning_min_sessions,
            average_response=timedelta(seconds=settings.warning_average_response_seconds),
        ),
        interval=settings.warning_interval_seconds,
    )


def _token(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    role = auth.Role(args.role)
    if role is auth.Role.MERCHANT and not args.merchant_id:
        _fail_config("--merchant-id is required for --role merchant")
    if args.private_key:
        key, algorithm = Path(args.private_key).read_text(), "RS256"
    else:
        key, algorithm = os.environ.get("ESCALATION_JWT_SECRET", ""), "HS256"
        if len(key.encode()) < config.MIN_HS256_SECRET_BYTES:
            _fail_config(
                f"ESCALATION_JWT_SECRET must be set to at least {config.MIN_HS256_SECRET_BYTES} bytes "
                "(or pass --private-key for RS256)"
            )
    print(
        auth.mint(
            key=key,
            algorithm=algorithm,
            subject=args.sub,
            role=role,
            merchant_id=args.merchant_id if role is auth.Role.MERCHANT else None,
            ttl_seconds=args.ttl,
            audience=os.environ.get("ESCALATION_JWT_AUDIENCE") or None,
            issuer=os.environ.get("ESCALATION_JWT_ISSUER") or None,
        )
    )


_WORKERS_HELP = """Runs one background worker until SIGTERM; each is safe with N replicas.

  deadlines  closes sessions whose reply deadline passed into tickets (SPEC R5, R7), sends reply
             reminders, and deletes merchant events past their retention
  outbox     publishes tickets and merchant warnings from the outbox to Kafka (creates the topics)
  warnings   warns merchants whose reply timeliness over the trailing 24 h is poor (SPEC R10)"""


class _Version(argparse.Action):
    """``--version``: computed only when asked (the revision may need a git call)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from escalation.observability import build_info

        print(build_info.describe())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="escalation", description=__doc__)
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and source revision")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    sub.add_parser(
        "serve",
        help="serve gRPC and /metrics (stateless; run N replicas)",
        description="Serves the four gRPC services, health and reflection, and /metrics. Stateless: run N replicas.",
        epilog=config.variables_help("serve"),
        formatter_class=raw,
    )
    sub.add_parser(
        "migrate",
        help="apply pending database migrations (safe to run concurrently)",
        description="Applies pending migrations to ESCALATION_DATABASE_URL; safe to run from several processes.",
        epilog=config.variables_help("migrate"),
        formatter_class=raw,
    )
    token = sub.add_parser("token", help="mint a development token (HS256 from ESCALATION_JWT_SECRET)")
    token.add_argument("--role", required=True, choices=[r.value for r in auth.Role])
    token.add_argument("--sub", required=True, help="agent id")
    token.add_argument("--merchant-id", help="required for --role merchant")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until exp (default one day)")
    token.add_argument("--private-key", help="PEM private key file: sign RS256 instead")
    worker = sub.add_parser(
        "worker",
        help="run a background worker (each safe with N replicas)",
        description=_WORKERS_HELP,
        epilog="\n\n".join(f"{name}:\n{config.variables_help(name)}" for name in ("deadlines", "outbox", "warnings")),
        formatter_class=raw,
    )
    worker.add_argument("name", choices=["deadlines", "outbox", "warnings"], help="which worker (see above)")
    tickets = sub.add_parser("tickets", help="service tickets on Kafka")
    tickets_sub = tickets.add_subparsers(dest="tickets_command", required=True)
    tail = tickets_sub.add_parser(
        "tail",
        help="print tickets as they are published (a consumer-group member)",
        epilog=config.variables_help("tail"),
        formatter_class=raw,
    )
    tail.add_argument("--group", default="escalation-tickets-tail", help="consumer group id")
    tail.add_argument("--from-beginning", action="store_true", help="with a new group, start at the oldest ticket")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--max", type=int, default=None, help="exit after this many distinct tickets")
    outbox = sub.add_parser("outbox", help="operate the transactional outbox")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    retry = outbox_sub.add_parser("retry", help="re-drive parked outbox rows (all, or one with --id); prints each")
    retry.add_argument("--id", type=int, default=None, dest="outbox_id", help="only this outbox row")
    from escalation.consoles.platform import add_arguments as platform_arguments

    platform_arguments(
        sub.add_parser(
            "platform",
            help="a platform agent's console: open, send, watch, close, list sessions",
            description="A platform support agent's console on the public API (docs/clients.md).",
        )
    )
    dev = sub.add_parser("dev", help="run everything locally: embedded PostgreSQL and broker, migrate, seed, serve")
    dev.add_argument("--data-dir", default=".data", help="where PostgreSQL keeps its data (default .data)")
    dev.add_argument(
        "--demo", action="store_true", help="also run a scripted platform agent opening sessions (`make demo`)"
    )
    from escalation.workbench.main import add_arguments as workbench_arguments

    workbench_arguments(
        sub.add_parser(
            "workbench",
            help="a merchant agent's terminal app: sessions, countdowns, quick replies (docs/clients.md)",
            description="A merchant agent's terminal app on the public API (needs the 'workbench' extra).",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from escalation.api.server import GrpcPortInUse
    from escalation.observability.http import MetricsPortInUse

    if args.command == "token":
        _token(args)
        return
    if args.command == "platform":
        from escalation.consoles.platform import run as run_platform

        raise SystemExit(run_platform(args))
    if args.command == "dev":
        from escalation.devenv.runner import run_dev

        raise SystemExit(run_dev(data_dir=args.data_dir, demo=args.demo))
    if args.command == "workbench":
        from escalation.workbench.main import run as run_workbench

        raise SystemExit(run_workbench(args))
    settings = _settings()
    obs_logging.configure(log_format=settings.log_format, level=settings.log_level)
    from escalation.observability import build_info

    build_info.publish(settings.build_revision)
    try:
        if args.command in ("serve", "worker"):
            worker = f"-{args.name}" if args.command == "worker" else ""
            tracing.configure_from_env(service_name=f"escalation-{args.command}{worker}")
        if args.command == "serve":
            settings.require_jwt()
            settings.require_database_url()
            asyncio.run(_serve(settings))
        elif args.command == "migrate":
            settings.require_database_url()
            asyncio.run(_migrate(settings))
        elif args.command == "worker":
            settings.require_database_url()
            if args.name == "outbox":
                settings.require_kafka_bootstrap()
            asyncio.run(_worker(settings, args.name))
        elif args.command == "outbox":
            settings.require_database_url()
            raise SystemExit(asyncio.run(_outbox_retry(settings, args.outbox_id)))
        elif args.command == "tickets":
            from escalation.bus.tickets_tail import BrokerUnreachable, tail

            try:
                asyncio.run(
                    tail(
                        _kafka_settings(settings),
                        group_id=args.group,
                        from_beginning=args.from_beginning,
                        as_json=args.json,
                        max_tickets=args.max,
                    )
                )
            except BrokerUnreachable as exc:
                print(
                    f"escalation tickets tail: cannot reach Kafka at {exc.bootstrap} (ESCALATION_KAFKA_BOOTSTRAP)"
                    " — is `make run` running?",
                    file=sys.stderr,
                )
                raise SystemExit(1) from None
    except (config.ConfigError, tracing.TracingConfigError) as exc:
        _fail_config(str(exc))
    except (MetricsPortInUse, GrpcPortInUse) as exc:
        print(f"escalation: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except _MigrationBlocked as exc:
        print(
            f"escalation: a migration waited too long for a lock ({exc}); nothing of it was applied, run it again",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    except _DatabaseUnreachable as exc:
        print(f"escalation: cannot use the database at ESCALATION_DATABASE_URL: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
