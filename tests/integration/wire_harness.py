"""Calls any method of the server with raw request bytes, as a client with identity serializers would.

The methods come from the service descriptors of everything the server registers (our services, health,
reflection), so a new RPC is covered by every test that walks ``all_methods()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import descriptor, descriptor_pool, message_factory
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from escalation.api.interceptors import PUBLIC_SERVICES, SERVICE_ROLES
from escalation.api.server import SERVICE_NAMES
from escalation.auth import Role
from tests.integration.grpc_harness import RpcFailure, bearer, failure

SHOP = "shop-a"
# One caller each service admits (SPEC §3); the public services need none.
_CALLERS: dict[Role, tuple[tuple[str, str], ...]] = {
    Role.PLATFORM: bearer("platform", "pa-1"),
    Role.PLATFORM_SUPERVISOR: bearer("platform_supervisor", "sup-1"),
    Role.MERCHANT: bearer("merchant", f"{SHOP}-main", SHOP),
    Role.OPS: bearer("ops", "ops-1"),
}


@dataclass(frozen=True)
class Method:
    descriptor: descriptor.MethodDescriptor
    metadata: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def request_type(self) -> Any:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    def __str__(self) -> str:
        return self.path


def all_methods() -> list[Method]:
    """Every method of every service the server registers, each with a caller its service admits."""
    pool = descriptor_pool.Default()
    found: list[Method] = []
    for name in (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME):
        service = pool.FindServiceByName(name)
        roles = sorted(SERVICE_ROLES.get(name, frozenset()), key=lambda r: r.value)
        metadata = _CALLERS[roles[0]] if roles else ()
        found.extend(Method(m, metadata) for m in service.methods)
    return found


@dataclass(frozen=True)
class Outcome:
    """How a call ended: OK (a response arrived, or a stream answered a first frame) or a failure."""

    code: grpc.StatusCode
    failure: RpcFailure | None = None


async def call_raw(
    channel: grpc.aio.Channel, method: Method, frames: Sequence[bytes], *, wait: float = 10.0, quiet: float = 1.0
) -> Outcome:
    """Sends ``frames`` (one for a unary request) as raw bytes; the first response or the error ends it.

    A stream that answers (an event, a heartbeat, a reflection response), or stays open and silent for
    ``quiet`` seconds (a Connect stream waiting for events), counts as OK and is cancelled.
    """
    d = method.descriptor
    # The stubs want serializers; None is grpc's identity (raw bytes), the point of this harness.
    untyped: Any = channel
    call: Any
    if d.client_streaming:
        call = untyped.stream_stream(method.path)(metadata=method.metadata)
    elif d.server_streaming:
        call = untyped.unary_stream(method.path)(frames[0], metadata=method.metadata)
    else:
        call = untyped.unary_unary(method.path)(frames[0], metadata=method.metadata, timeout=wait)
    try:
        if d.client_streaming:
            for frame in frames:
                try:
                    await asyncio.wait_for(call.write(frame), wait)
                except asyncio.InvalidStateError:
                    break  # the server already ended the stream: read its status below
        if d.server_streaming:
            await asyncio.wait_for(call.read(), quiet)
        else:
            await call
    except TimeoutError:
        pass
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            return Outcome(err.code())  # details may be missing: that is the fault being looked for
        if method.descriptor.containing_service.full_name in PUBLIC_SERVICES and _no_details(err):
            return Outcome(err.code())  # health and reflection answer their own mistakes without ErrorInfo
        return Outcome(err.code(), failure(err))
    finally:
        call.cancel()
    return Outcome(grpc.StatusCode.OK)


def _no_details(err: grpc.aio.AioRpcError) -> bool:
    pairs = cast("tuple[tuple[str, str | bytes], ...]", tuple(err.trailing_metadata() or ()))
    return not any(key == "grpc-status-details-bin" for key, _ in pairs)


def decodes(method: Method, raw: bytes) -> bool:
    """Whether protobuf itself accepts ``raw`` as the method's request (the oracle for MALFORMED_REQUEST)."""
    try:
        method.request_type.FromString(raw)
    except Exception:
        return False
    return True
