"""Knows when this server's own RPC handlers have all returned, so shutdown need not sit out its grace.

grpc.aio keeps a call alive until the client half-closes or cancels it, even after the handler has
returned and the status is sent. A bidi `Connect` client that keeps its send side open (grpc-go and
grpcurl do, after they have read the status) therefore holds `Server.stop(grace)` for the whole grace,
although nothing is left to do. Counting handlers tells "work in flight" from "calls the transport
still holds": once the count is zero, shutdown cancels what remains at once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc

from escalation.api.handlers import behavior_of, rebuilt

# A call accepted just before shutdown reaches its handler a few loop turns later; zero handlers for
# this long (seconds) means none is on the way.
SETTLE_SECONDS = 0.05


class InFlight(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts running handlers of ``services`` (health and reflection streams never end by themselves)."""

    def __init__(self, services: Collection[str]) -> None:
        self._services = frozenset(services)
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Handlers of the counted services that have started and not yet returned."""
        return self._running

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").partition("/")[0]
        if handler is None or service not in self._services:
            return handler
        return self._counted(handler)

    async def wait_idle(self) -> None:
        """Returns once no counted handler has run for ``SETTLE_SECONDS``; waits as long as one runs."""
        while True:
            await self._idle.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            if self._idle.is_set():
                return

    def _enter(self) -> None:
        self._running += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    def _counted(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        behavior = behavior_of(handler)
        wrapped: Callable[..., Any]
        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    self._leave()

            wrapped = streaming
        else:

            async def called(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                self._enter()
                try:
                    return await behavior(request, context)
                finally:
                    self._leave()

            wrapped = called
        return rebuilt(handler, wrapped)
