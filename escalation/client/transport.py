"""The channel, the bearer token and the retry loop shared by MerchantClient and PlatformClient.

A token is a string or a callable (sync or async) returning one; the callable is asked before every
call and every (re)connect, so a client whose token expires (``UNAUTHENTICATED`` ``TOKEN_EXPIRED``) goes on
with a fresh one (docs/realtime.md "Token expiry ends a stream").
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message

from escalation.client.backoff import Backoff
from escalation.client.errors import from_rpc_error

__all__ = ["Retry", "TlsOptions", "TokenSource", "Transport"]

TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]
T = TypeVar("T")

# The server pings after 30 s of silence and allows a client ping every 10 s (api/server.py); a client
# that pings every 20 s on an open stream finds a dead server (a killed replica, a dropped NAT entry)
# within 30 s even when the server's heartbeats are configured rarely. Reconnect backoff of the channel
# itself starts at 100 ms (gRPC's default is 1 s), so a failover to another address is quick.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)
EXPIRED_REASON = "TOKEN_EXPIRED"  # the ErrorInfo reason of a stream or call past its token's exp


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the server: ``root_certificates`` (PEM; None: the system's roots), and for mTLS the client's
    ``certificate_chain`` and ``private_key`` (PEM); ``server_name`` overrides the name checked in the
    server's certificate (e.g. when connecting by IP address)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsOptions:
        """Reads PEM files: ``ca`` (roots), ``cert`` and ``key`` (the client certificate, both or neither)."""
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs both cert and key")
        return cls(
            root_certificates=Path(ca).read_bytes() if ca else None,
            certificate_chain=Path(cert).read_bytes() if cert else None,
            private_key=Path(key).read_bytes() if key else None,
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True)
class Retry:
    """Unary retries: at most ``attempts`` tries, ``backoff`` between them, ``timeout`` seconds per try."""

    attempts: int = 6
    timeout: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)


class Transport:
    """One lazily created channel to ``target`` plus the token; closed by ``close``.

    ``target``: a gRPC target, e.g. ``host:50051``, ``dns:///escalation.internal:50051`` (every address
    of the name) or ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (a list): gRPC's pick_first moves to the
    next address when one is gone, so a reconnect after a killed replica lands on a live one.
    """

    def __init__(self, target: str, token: TokenSource, tls: TlsOptions | None, retry: Retry) -> None:
        self.target = target
        self._token = token
        self._tls = tls
        self.retry = retry
        self._channel: grpc.aio.Channel | None = None

    @property
    def refreshable(self) -> bool:
        """True when the token comes from a callable (an expired one can be replaced)."""
        return not isinstance(self._token, str)

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
            if self._tls is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            else:
                if self._tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls.server_name))
                self._channel = grpc.aio.secure_channel(self.target, self._tls.credentials(), options=options)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(grace=None)

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: one ``authorization: Bearer <token>`` entry (SPEC §3 Auth)."""
        token = self._token
        if not isinstance(token, str):
            value = token()
            token = await value if inspect.isawaitable(value) else value
        assert isinstance(token, str)
        return (("authorization", f"Bearer {token}"),)

    async def unary(self, method: Callable[..., Any], request: Message, result: type[T]) -> T:
        """``method(request)`` (a stub's unary method) answered with a ``result``, retried as ``call`` says."""

        async def invoke(metadata: tuple[tuple[str, str], ...], seconds: float) -> T:
            return cast(T, await method(request, metadata=metadata, timeout=seconds))

        return await self.call(invoke)

    async def call(self, invoke: Callable[[tuple[tuple[str, str], ...], float], Awaitable[T]]) -> T:
        """Runs ``invoke(metadata, seconds)`` until it succeeds, retrying transient failures.

        Only for calls that are safe to repeat: reads, and writes carrying their idempotency key (the
        same request_id / client_msg_id on every try; AIP-155, SPEC R4). Waits a full-jitter backoff, at
        least the server's RetryInfo, between tries; an expired token is replaced at once when the token
        is refreshable. Raises ClientError: the first non-transient failure, or the last one after
        ``retry.attempts`` tries.
        """
        attempt = 0
        while True:
            try:
                return await invoke(await self.metadata(), self.retry.timeout)
            except grpc.aio.AioRpcError as rpc_error:
                err = from_rpc_error(rpc_error)
            attempt += 1
            expired = err.code is grpc.StatusCode.UNAUTHENTICATED and err.reason == EXPIRED_REASON
            if attempt >= self.retry.attempts or not (err.transient or (expired and self.refreshable)):
                raise err
            if not expired:
                await asyncio.sleep(self.retry.backoff.delay(attempt - 1, at_least=err.retry_delay or 0.0))
