"""MerchantService. Quick-reply templates work; the session RPCs and Connect arrive with their issues."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from escalation import errors
from escalation.api import convert
from escalation.api.interceptors import current_identity
from escalation.domain import paging
from escalation.domain.validation import Violations
from escalation.services import directory
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_TEMPLATE_PAGE = 100


class MerchantServicer(merchant_pb2_grpc.MerchantServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ListReplyTemplates(
        self, request: merchant_pb2.ListReplyTemplatesRequest, context: Context
    ) -> merchant_pb2.ListReplyTemplatesResponse:
        check = Violations()
        size = check.page_size("page_size", request.page_size, default=DEFAULT_TEMPLATE_PAGE)
        check.raise_if_any()
        target = directory.scope(current_identity(), "")
        filters = ["templates", target.merchant_id]
        after = paging.decode(request.page_token, filters)
        rows = await directory.list_reply_templates(
            self._pool, target, after=[str(k) for k in after] if after else None, limit=size + 1
        )
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = paging.encode([last["create_time"].isoformat(), last["template_id"]], filters)
        return merchant_pb2.ListReplyTemplatesResponse(
            templates=[convert.reply_template(r) for r in rows[:size]], next_page_token=token
        )

    async def Connect(
        self, request_iterator: AsyncIterator[merchant_pb2.ConnectRequest], context: Context
    ) -> AsyncIterator[merchant_pb2.ConnectResponse]:
        raise errors.Unimplemented()
        yield  # unreachable; makes this an async generator, as a streaming RPC must be

    async def Reply(self, request: merchant_pb2.ReplyRequest, context: Context) -> common_pb2.Message:
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
