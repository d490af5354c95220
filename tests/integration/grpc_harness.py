"""An in-process server on a test database, plus tokens and status-detail helpers for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from escalation import auth, config
from escalation.api.server import Server
from tests.conftest import JWT_SECRET, POOL_DSN, UNTHROTTLED_ENV

# Raised far above the defaults (see UNTHROTTLED_ENV); test_limits.py passes its own.
UNTHROTTLED = config.load(UNTHROTTLED_ENV).limits


def settings(limits: config.LimitSettings = UNTHROTTLED) -> config.Settings:
    return config.Settings(
        jwt=config.JwtSettings(algorithm="HS256", key=JWT_SECRET), shutdown_grace_seconds=1, limits=limits
    )


def token(role: auth.Role | str, sub: str, merchant_id: str | None = None, ttl: int = 6 * 3600) -> str:
    """A test token; several modules mint theirs at import, so it must outlive the whole suite on a loaded
    machine (a 600 s lifetime expired mid-run once the suite took 11 minutes)."""
    return auth.mint(
        key=JWT_SECRET,
        algorithm="HS256",
        subject=sub,
        role=auth.Role(role),
        merchant_id=merchant_id,
        ttl_seconds=ttl,
    )


def bearer(role: auth.Role | str, sub: str, merchant_id: str | None = None) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token(role, sub, merchant_id)}"),)


OPS = bearer("ops", "ops-1")


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    field_violations: dict[str, str]


def failure(err: grpc.aio.AioRpcError) -> RpcFailure:
    """Decodes the AIP-193 details of a failed call; asserts exactly one ErrorInfo is present."""
    pairs = cast("tuple[tuple[str, str | bytes], ...]", tuple(err.trailing_metadata() or ()))
    raw = next((value for key, value in pairs if key == "grpc-status-details-bin"), None)
    assert isinstance(raw, bytes), f"no status details on {err.code()}: {err.details()}"
    status = status_pb2.Status.FromString(raw)
    infos, violations = [], {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
    assert len(infos) == 1, f"expected one ErrorInfo, got {len(infos)}"
    return RpcFailure(
        code=err.code(),
        message=err.details() or "",
        reason=infos[0].reason,
        domain=infos[0].domain,
        metadata=dict(infos[0].metadata),
        field_violations=violations,
    )


@asynccontextmanager
async def running_server(
    pool: asyncpg.Pool, dsn: str | None = None, config: config.Settings | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    server = Server(config or settings(), pool, address="127.0.0.1:0", dsn=dsn or POOL_DSN[id(pool)])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield channel
    finally:
        await channel.close(grace=None)
        await server.stop(grace=0.5)
