"""Builds and runs the gRPC server: our four services, health, reflection, their interceptors and limits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence

import asyncpg
import grpc
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from escalation.api.admin import MerchantAdminServicer
from escalation.api.drain import InFlight
from escalation.api.interceptors import ServerInterceptor
from escalation.api.limits import Limits, LimitsInterceptor
from escalation.api.merchant import MerchantServicer
from escalation.api.ops import OpsServicer
from escalation.api.platform import PlatformServicer
from escalation.api.streams import StreamConfig, connect_frame
from escalation.api.tls import server_credentials
from escalation.auth import TokenVerifier
from escalation.config import ConfigError, Settings
from escalation.jwks import JwksKeys
from escalation.observability import gauges, tracing
from escalation.realtime.hub import Hub
from escalation.services.sessions import SessionPolicy
from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    merchant_pb2,
    merchant_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)

log = structlog.get_logger(__name__)

MAX_INBOUND_MESSAGE_BYTES = 1024 * 1024
SERVICE_NAMES: Sequence[str] = (
    platform_pb2.DESCRIPTOR.services_by_name["PlatformService"].full_name,
    merchant_pb2.DESCRIPTOR.services_by_name["MerchantService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["MerchantAdminService"].full_name,
    ops_pb2.DESCRIPTOR.services_by_name["OpsService"].full_name,
)

# Find dead peers on long-lived streams: ping after 30 s of silence, give up 10 s later. This is what
# reaps the Connect streams a vanished client left behind (and their per-identity slots, api/limits.py).
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# A refused stream's RetryInfo: by then keepalive has closed a dead client's streams (docs/security.md).
STREAM_RETRY_SECONDS = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000


def _options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_INBOUND_MESSAGE_BYTES),
        # A second server on a taken port must fail, not silently share it.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Streams one client connection may hold at a time (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
        ("grpc.max_concurrent_streams", settings.limits.max_concurrent_streams),
    ]


def _connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core's max_connection_age (and grace): GOAWAY to each connection after its age.

    Clients behind an L4 balancer (a Kubernetes Service) otherwise keep their first replica for
    life: new replicas from a scale-up or a rollout would get no traffic. Unset when the age is 0.
    """
    if settings.grpc_max_connection_age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.grpc_max_connection_age_grace_seconds * 1000)),
    ]


class GrpcPortInUse(OSError):
    """The gRPC address cannot be bound."""


class Server:
    """The gRPC server bound to its address, with health status kept in step with its life."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, *, address: str | None = None, dsn: str | None = None
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._gauges: asyncio.Task[None] | None = None
        # True while health reports SERVING: what /readyz answers (observability/http.py).
        self.serving = False
        policy = SessionPolicy.from_settings(settings)
        self.hub = Hub(dsn or settings.require_database_url(), pool, frame=connect_frame)
        streams = StreamConfig(
            heartbeat_seconds=settings.stream_heartbeat_seconds,
            write_timeout_seconds=settings.stream_write_timeout_seconds,
            max_lag_events=settings.stream_max_lag_events,
        )
        # Outermost, so a handler counts as running until its status is decided (see stop()).
        self._in_flight = InFlight(SERVICE_NAMES)
        jwt_settings = settings.require_jwt()
        self._jwks = (
            JwksKeys(
                jwt_settings.jwks_url,
                cache_seconds=jwt_settings.jwks_cache_seconds,
                min_refresh_seconds=jwt_settings.jwks_min_refresh_seconds,
            )
            if jwt_settings.jwks_url
            else None
        )
        self.limits = Limits(settings.limits, pool=pool, stream_retry_seconds=STREAM_RETRY_SECONDS)
        self._server = grpc.aio.server(
            # Tracing (when on) sits outside ours, so its span sees the status ours decides; the limits
            # come after authentication and decoding (api/limits.py).
            interceptors=[
                self._in_flight,
                *tracing.server_interceptors(),
                ServerInterceptor(TokenVerifier(jwt_settings, self._jwks)),
                LimitsInterceptor(self.limits),
            ],
            options=_options(settings) + _connection_age_options(settings),
        )
        platform_pb2_grpc.add_PlatformServiceServicer_to_server(
            PlatformServicer(pool, policy, self.hub, streams), self._server
        )
        merchant_pb2_grpc.add_MerchantServiceServicer_to_server(
            MerchantServicer(pool, policy, self.hub, streams), self._server
        )
        admin_pb2_grpc.add_MerchantAdminServiceServicer_to_server(MerchantAdminServicer(pool), self._server)
        ops_pb2_grpc.add_OpsServiceServicer_to_server(OpsServicer(pool), self._server)
        self.tls = "off" if settings.grpc_tls is None else "mtls" if settings.grpc_tls.client_ca_file else "tls"
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        bind = address or settings.grpc_addr
        # Built before binding: a bad certificate file is a ValueError, reported as configuration.
        try:
            credentials = server_credentials(settings.grpc_tls) if settings.grpc_tls is not None else None
        except ValueError as exc:
            raise ConfigError(f"ESCALATION_GRPC_TLS_*: {exc}") from None
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(bind)
            else:
                self.port = self._server.add_secure_port(bind, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise GrpcPortInUse(f"cannot listen on gRPC address {bind} (in use?); set ESCALATION_GRPC_ADDR")

    def jwks_readiness(self) -> str | None:
        """/readyz check: a reason while no token can be verified (JWKS only, no key fetched yet), else None."""
        if self._jwks is None or self._settings.require_jwt().key or self._jwks.loaded:
            return None
        return "no signing keys fetched from ESCALATION_JWT_JWKS_URL yet"

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.start()
        await self.hub.start()
        self._gauges = asyncio.create_task(gauges.refresh_forever(self._pool), name="gauges")
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    async def stop(self, grace: float | None = None) -> None:
        """Drains and stops: returns as soon as in-flight RPCs are done, at most ``grace`` seconds later.

        Reports NOT_SERVING first so balancers drain us; ends every stream with UNAVAILABLE
        SHUTTING_DOWN so its client reconnects to another replica; refuses new RPCs and lets unary
        ones in flight finish (``grace`` defaults to ESCALATION_SHUTDOWN_GRACE_SECONDS); then cancels
        whatever the transport still holds. SPEC §5: ≤ 1 s with open streams and no unary call.
        """
        grace = self._settings.shutdown_grace_seconds if grace is None else grace
        self.serving = False
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.hub.close()
        stopping = asyncio.ensure_future(self._server.stop(grace))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._in_flight.wait_idle(), grace)
        # Every handler has returned (or the grace is over): what is left are calls whose status was
        # sent but whose client never half-closed, which grpc.aio would otherwise wait out.
        await self._server.stop(None)
        await stopping
        if self._jwks is not None:
            await self._jwks.close()
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve_until_signalled(server: Server) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully (see ``Server.stop``); SIGHUP is ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP's default action would end the process; certificate files are re-read without it
    # (escalation/api/tls.py), so an operator's habitual `kill -HUP` is logged and otherwise harmless.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("server.sighup_ignored", reason="TLS files are watched"))
    await server.start()
    log.info("server.started", port=server.port, tls=server.tls)
    await stop.wait()
    log.info("server.stopping")
    await server.stop()
    log.info("server.stopped")
