"""PlatformService. Every RPC answers UNIMPLEMENTED until the Sessions issue lands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from escalation import errors
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def OpenSession(
        self, request: platform_pb2.OpenSessionRequest, context: Context
    ) -> platform_pb2.OpenSessionResponse:
        raise errors.Unimplemented()

    async def SendMessage(self, request: platform_pb2.SendMessageRequest, context: Context) -> common_pb2.Message:
        raise errors.Unimplemented()

    async def CloseSession(self, request: platform_pb2.CloseSessionRequest, context: Context) -> common_pb2.Session:
        raise errors.Unimplemented()

    async def GetSession(self, request: platform_pb2.GetSessionRequest, context: Context) -> common_pb2.Session:
        raise errors.Unimplemented()

    async def ListSessions(
        self, request: platform_pb2.ListSessionsRequest, context: Context
    ) -> platform_pb2.ListSessionsResponse:
        raise errors.Unimplemented()

    async def ListMessages(
        self, request: platform_pb2.ListMessagesRequest, context: Context
    ) -> platform_pb2.ListMessagesResponse:
        raise errors.Unimplemented()

    async def WatchSession(
        self, request: platform_pb2.WatchSessionRequest, context: Context
    ) -> AsyncIterator[platform_pb2.WatchSessionResponse]:
        raise errors.Unimplemented()
        yield  # unreachable; makes this an async generator, as a streaming RPC must be
