"""MerchantService: the Connect stream, replies, the shop's sessions (R9 scope), quick replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from escalation.api import session_requests as req
from escalation.api.interceptors import current_identity
from escalation.api.replies import reply
from escalation.api.streams import MerchantStream, StreamConfig
from escalation.domain import paging
from escalation.domain.validation import Violations
from escalation.realtime.hub import Hub
from escalation.services import directory, records
from escalation.services.sessions import SessionPolicy
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_TEMPLATE_PAGE = 100


class MerchantServicer(merchant_pb2_grpc.MerchantServiceServicer):
    def __init__(self, pool: asyncpg.Pool, policy: SessionPolicy, hub: Hub, streams: StreamConfig) -> None:
        self._pool = pool
        self._policy = policy
        self._hub = hub
        self._streams = streams

    async def ListReplyTemplates(
        self, request: merchant_pb2.ListReplyTemplatesRequest, context: Context
    ) -> merchant_pb2.ListReplyTemplatesResponse:
        check = Violations()
        size = check.page_size("page_size", request.page_size, default=DEFAULT_TEMPLATE_PAGE)
        target = directory.scope(current_identity(), "")
        filters = ["templates", target.merchant_id]
        after = req.time_and_id_key(check, paging.decode(request.page_token, filters, check))
        check.raise_if_any()
        rows = await directory.list_reply_templates(self._pool, target, after=after, limit=size + 1)
        items, token = paging.bounded_page(
            rows, size, records.reply_template, lambda r: [r["create_time"].isoformat(), r["template_id"]], filters
        )
        return merchant_pb2.ListReplyTemplatesResponse(templates=items, next_page_token=token)

    async def Connect(self, request_iterator: AsyncIterator[merchant_pb2.ConnectRequest], context: Context) -> None:  # type: ignore[override]  # context.write style, so each write can time out
        stream = MerchantStream(self._pool, self._hub, self._policy, self._streams, current_identity(), context)
        await stream.run(request_iterator)

    async def Reply(self, request: merchant_pb2.ReplyRequest, context: Context) -> common_pb2.Message:
        return records.sent_message(await reply(self._pool, self._policy, request))

    async def GetSession(self, request: platform_pb2.GetSessionRequest, context: Context) -> common_pb2.Session:
        return await req.get_session(self._pool, request)

    async def ListSessions(
        self, request: platform_pb2.ListSessionsRequest, context: Context
    ) -> platform_pb2.ListSessionsResponse:
        return await req.list_sessions(self._pool, request)

    async def ListMessages(
        self, request: platform_pb2.ListMessagesRequest, context: Context
    ) -> platform_pb2.ListMessagesResponse:
        return await req.list_messages(self._pool, request)
