"""One Connect call: the outgoing frames (hello first, then acks and read receipts) and reads with a
liveness bound. MerchantClient makes a new one per (re)connect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from escalation.v1 import merchant_pb2, merchant_pb2_grpc

__all__ = ["Connection", "IdleTimeout"]

EOF_: object = getattr(grpc.aio, "EOF")  # noqa: B009 (typeshed lacks grpc.aio.EOF)


class IdleTimeout(Exception):
    """No frame arrived for the idle bound: the server or the path to it is gone without a word."""


class Connection:
    """A started Connect call; ``close`` cancels it. Frames are sent in the order ``send`` is called."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        last_cursor: int | None,
    ) -> None:
        # send_started: the server confirms the stream's position before any event (merchant.proto).
        hello = merchant_pb2.Hello(send_started=True)
        if last_cursor is not None:
            hello.last_cursor = last_cursor
        self._closed = False
        self._outbox: asyncio.Queue[merchant_pb2.ConnectRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(merchant_pb2.ConnectRequest(hello=hello))
        stub = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel))
        self.call: Any = stub.Connect(self._frames(), metadata=metadata)

    async def _frames(self) -> AsyncIterator[merchant_pb2.ConnectRequest]:
        while (frame := await self._outbox.get()) is not None:
            yield frame

    def send(self, frame: merchant_pb2.ConnectRequest) -> None:
        self._outbox.put_nowait(frame)

    async def read(self, idle_timeout: float) -> merchant_pb2.ConnectResponse | None:
        """The next server frame; None at a clean end of the stream.

        Raises grpc.aio.AioRpcError (the stream's error status) or IdleTimeout (nothing for
        ``idle_timeout`` seconds, though the server sends a heartbeat whenever it has been quiet).
        """
        try:
            async with asyncio.timeout(idle_timeout):
                frame = await self.call.read()
        except TimeoutError:
            raise IdleTimeout(f"no frame for {idle_timeout:g} s") from None
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError from a call cancelled locally: by close(), that is the end.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                return None
            raise
        if frame is EOF_:
            return None
        return cast(merchant_pb2.ConnectResponse, frame)

    def close(self) -> None:
        self._closed = True
        self._outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            self.call.cancel()
