"""PlatformService: open sessions, talk, close, read, and watch a session live."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc

from escalation.api import limits
from escalation.api import session_requests as req
from escalation.api.interceptors import current_identity
from escalation.api.streams import StreamConfig, watch_session
from escalation.domain.session import CloseReason, Sender
from escalation.domain.validation import Violations
from escalation.realtime.hub import Hub
from escalation.services import records, sessions
from escalation.services.sessions import SessionPolicy
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

MAX_OPENING_MESSAGES = 10


class PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    def __init__(self, pool: asyncpg.Pool, policy: SessionPolicy, hub: Hub, streams: StreamConfig) -> None:
        self._pool = pool
        self._policy = policy
        self._hub = hub
        self._streams = streams

    async def OpenSession(
        self, request: platform_pb2.OpenSessionRequest, context: Context
    ) -> platform_pb2.OpenSessionResponse:
        check = Violations()
        check.identifier("request_id", request.request_id)
        check.identifier("merchant_id", request.merchant_id)
        category = req.enum_value(check, "category", common_pb2.Category, request.category, required=True)
        check.identifier("order_id", request.order_id, required=False)
        if not 1 <= len(request.messages) <= MAX_OPENING_MESSAGES:
            check.add("messages", f"must hold 1–{MAX_OPENING_MESSAGES} opening messages")
        opening = [
            req.new_message(check, f"messages[{i}]", m, Sender.PLATFORM, None) for i, m in enumerate(request.messages)
        ]
        check.raise_if_any()
        assert category is not None
        opened = await sessions.open_session(
            self._pool,
            current_identity(),
            sessions.OpenRequest(
                request_id=request.request_id,
                request_hash=req.request_hash(request),
                merchant_id=request.merchant_id,
                category=category,
                order_id=request.order_id or None,
                messages=[m for m in opening if m is not None],
            ),
            self._policy,
        )
        if not opened.replayed:
            limits.charge_opened_session(request.merchant_id)
        return records.opened(opened.session_pb, opened.message_pbs)

    async def SendMessage(self, request: platform_pb2.SendMessageRequest, context: Context) -> common_pb2.Message:
        check = Violations()
        sid = req.session_id(check, request.session_id)
        msg_id = req.client_msg_id(check, request.client_msg_id)
        message = req.new_message(check, "content", request.content, Sender.PLATFORM, msg_id)
        check.raise_if_any()
        assert message is not None
        row = await sessions.add_message(self._pool, current_identity(), sid, message, self._policy)
        return records.sent_message(row)

    async def CloseSession(self, request: platform_pb2.CloseSessionRequest, context: Context) -> common_pb2.Session:
        check = Violations()
        sid = req.session_id(check, request.session_id)
        outcome = req.enum_value(
            check, "outcome", platform_pb2.CloseSessionRequest.Outcome, request.outcome, required=True
        )
        check.raise_if_any()
        assert outcome is not None
        reason = CloseReason.RESOLVED if outcome == "RESOLVED" else CloseReason.PLATFORM_ESCALATED
        row = await sessions.close_session(self._pool, current_identity(), sid, reason, self._policy)
        return records.closed_session(row)

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

    async def WatchSession(self, request: platform_pb2.WatchSessionRequest, context: Context) -> None:  # type: ignore[override]  # context.write style, so each write can time out
        check = Violations()
        sid = req.session_id(check, request.session_id)
        if request.after_seq < 0:
            check.add("after_seq", "must not be negative")
        check.raise_if_any()
        await watch_session(self._pool, self._hub, self._streams, current_identity(), sid, request.after_seq, context)
