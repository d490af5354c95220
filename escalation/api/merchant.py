"""MerchantService: the Connect stream, replies, the shop's sessions (R9 scope), quick replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from escalation.api import convert, limits
from escalation.api import session_requests as req
from escalation.api.interceptors import current_identity
from escalation.domain import paging
from escalation.domain.session import Kind, Sender
from escalation.domain.validation import Violations
from escalation.realtime.hub import Hub
from escalation.realtime.streams import MerchantStream, StreamConfig
from escalation.services import directory, records, sessions
from escalation.services.sessions import NewMessage, SessionPolicy
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
            rows, size, convert.reply_template, lambda r: [r["create_time"].isoformat(), r["template_id"]], filters
        )
        return merchant_pb2.ListReplyTemplatesResponse(templates=items, next_page_token=token)

    async def Connect(self, request_iterator: AsyncIterator[merchant_pb2.ConnectRequest], context: Context) -> None:  # type: ignore[override]  # context.write style, so each write can time out
        stream = MerchantStream(self._pool, self._hub, self._policy, self._streams, current_identity(), context)
        await stream.run(request_iterator)

    async def Reply(self, request: merchant_pb2.ReplyRequest, context: Context) -> common_pb2.Message:
        return records.message(await reply(self._pool, self._policy, request))

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


async def reply(pool: asyncpg.Pool, policy: SessionPolicy, request: merchant_pb2.ReplyRequest) -> asyncpg.Record:
    """A merchant reply (unary, or a Connect frame): text, image, emoji, or a quick-reply template.

    Charged to the sender's reply rate first (api/limits.py): a refused reply writes nothing.
    """
    await limits.take_reply(request.session_id, request.client_msg_id)
    check = Violations()
    sid = req.session_id(check, request.session_id)
    msg_id = req.client_msg_id(check, request.client_msg_id)
    has_content, template_id = request.HasField("content"), request.template_id
    message: NewMessage | None = None
    if has_content == bool(template_id):
        check.add("content", "set exactly one of content and template_id")
        check.add("template_id", "set exactly one of content and template_id")
    elif template_id:
        check.identifier("template_id", template_id)
        message = NewMessage(Kind.TEXT, b"", msg_id, template_id)
    else:
        message = req.new_message(check, "content", request.content, Sender.MERCHANT, msg_id)
    check.raise_if_any()
    assert message is not None
    return await sessions.add_message(pool, current_identity(), sid, message, policy)
