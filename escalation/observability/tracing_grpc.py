"""The OpenTelemetry grpc.aio server interceptor, taught our ``context.write`` streams.

Imported only when tracing is on (observability/tracing.py). The upstream interceptor wraps every
response-streaming handler as an async generator (``async for response in behavior(...)``); our
``Connect`` and ``WatchSession`` are coroutines that write with ``context.write`` (so each write can
time out, docs/realtime.md), which it fails with ``TypeError: 'async for' requires an object with
__aiter__``. Such a handler is traced like a unary one instead: one span from its start to its status,
around the same wrapped context, whose ``write`` and ``read`` pass through.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import filters
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.instrumentation.grpc.version import __version__
from opentelemetry.sdk.trace import TracerProvider

# Not traced: load balancers probe health every few seconds, and reflection is tooling.
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
# What the upstream factory (opentelemetry.instrumentation.grpc.aio_server_interceptor) passes.
_SCHEMA_URL = "https://opentelemetry.io/schemas/1.11.0"


class _Interceptor(OpenTelemetryAioServerInterceptor):
    def _intercept_aio_server_stream(
        self, behavior: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            return super()._intercept_aio_server_stream(behavior, handler_call_details)  # type: ignore[no-untyped-call,no-any-return]
        return self._intercept_aio_server_unary(behavior, handler_call_details)  # type: ignore[no-untyped-call,no-any-return]


def server_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:  # type: ignore[type-arg]
    """A SERVER span per RPC but health and reflection, named by its method, with its gRPC status."""
    tracer = trace.get_tracer("opentelemetry.instrumentation.grpc", __version__, provider, schema_url=_SCHEMA_URL)
    untraced = filters.any_of(*(filters.service_name(name) for name in UNTRACED_SERVICES))
    interceptor: grpc.aio.ServerInterceptor = _Interceptor(tracer, filter_=filters.negate(untraced))  # type: ignore[type-arg,no-untyped-call]
    return interceptor
