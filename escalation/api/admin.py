"""MerchantAdminService: who receives platform sessions, the reply timeout, quick-reply templates."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
from google.protobuf import empty_pb2

from escalation.api.interceptors import current_identity
from escalation.domain import paging
from escalation.domain.reception import (
    MAX_CAPACITY,
    MAX_IDLE_TIMEOUT_SECONDS,
    MAX_RECEPTION_AGENTS,
    MAX_REPLY_TIMEOUT_SECONDS,
    MIN_CAPACITY,
    MIN_IDLE_TIMEOUT_SECONDS,
    MIN_REPLY_TIMEOUT_SECONDS,
)
from escalation.domain.validation import IDENTIFIER, Violations
from escalation.services import directory, records
from escalation.v1 import admin_pb2, admin_pb2_grpc, merchant_pb2

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_AGENT_PAGE = 100
MAX_TEMPLATE_TITLE, MAX_TEMPLATE_TEXT = 50, 2000


class MerchantAdminServicer(admin_pb2_grpc.MerchantAdminServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def _scope(self, merchant_id: str, check: Violations) -> directory.MerchantScope:
        if merchant_id:
            check.identifier("merchant_id", merchant_id)
        check.raise_if_any()
        return directory.scope(current_identity(), merchant_id)

    async def UpsertAgent(self, request: admin_pb2.UpsertAgentRequest, context: Context) -> admin_pb2.Agent:
        check = Violations()
        if not request.HasField("agent"):
            check.add("agent", "is required")
        a = request.agent
        check.identifier("agent.agent_id", a.agent_id)
        name = check.text("agent.display_name", a.display_name, max_chars=100, required=False, multiline=False)
        if a.capacity != 0 and not MIN_CAPACITY <= a.capacity <= MAX_CAPACITY:
            check.add("agent.capacity", f"must be between {MIN_CAPACITY} and {MAX_CAPACITY} (0 means 10)")
        target = self._scope(request.merchant_id, check)
        row = await directory.upsert_agent(
            self._pool,
            target,
            agent_id=a.agent_id,
            display_name=name,
            im_permission=a.im_permission,
            disabled=a.disabled,
            capacity=a.capacity,
        )
        return records.agent(row)

    async def ListAgents(self, request: admin_pb2.ListAgentsRequest, context: Context) -> admin_pb2.ListAgentsResponse:
        check = Violations()
        size = check.page_size("page_size", request.page_size, default=DEFAULT_AGENT_PAGE)
        filters = ["agents", request.merchant_id, current_identity().merchant_id]
        after = paging.decode(request.page_token, filters, check)
        if after is not None and (
            len(after) != 1 or not isinstance(after[0], str) or not IDENTIFIER.fullmatch(after[0])
        ):
            check.add("page_token", paging.NOT_OURS)
        target = self._scope(request.merchant_id, check)
        rows = await directory.list_agents(
            self._pool, target, after_agent_id=after[0] if after else None, limit=size + 1
        )
        items, token = paging.bounded_page(rows, size, records.agent, lambda r: [r["agent_id"]], filters)
        return admin_pb2.ListAgentsResponse(agents=items, next_page_token=token)

    async def SetReceptionAgents(
        self, request: admin_pb2.SetReceptionAgentsRequest, context: Context
    ) -> admin_pb2.ReceptionSettings:
        check = Violations()
        ids = list(request.agent_ids)
        if len(ids) > MAX_RECEPTION_AGENTS:
            check.add("agent_ids", f"must list at most {MAX_RECEPTION_AGENTS} agents")
        for i, agent_id in enumerate(ids):
            check.identifier(f"agent_ids[{i}]", agent_id)
        if len(set(ids)) != len(ids):
            check.add("agent_ids", "must not repeat an agent")
        target = self._scope(request.merchant_id, check)
        return records.reception_settings(await directory.set_reception_agents(self._pool, target, ids))

    async def GetReceptionSettings(
        self, request: admin_pb2.GetReceptionSettingsRequest, context: Context
    ) -> admin_pb2.ReceptionSettings:
        target = self._scope(request.merchant_id, Violations())
        return records.reception_settings(await directory.get_reception_settings(self._pool, target))

    async def UpdateReplyTimeout(
        self, request: admin_pb2.UpdateReplyTimeoutRequest, context: Context
    ) -> admin_pb2.ReceptionSettings:
        check = Violations()
        timeout = request.reply_timeout
        low, high = MIN_REPLY_TIMEOUT_SECONDS, MAX_REPLY_TIMEOUT_SECONDS
        if not request.HasField("reply_timeout"):
            check.add("reply_timeout", f"is required: whole seconds between {low} and {high}")
        elif timeout.nanos != 0 or not low <= timeout.seconds <= high:
            check.add("reply_timeout", f"must be whole seconds between {low} and {high}")
        target = self._scope(request.merchant_id, check)
        return records.reception_settings(await directory.update_reply_timeout(self._pool, target, timeout.seconds))

    async def UpdateIdleTimeout(
        self, request: admin_pb2.UpdateIdleTimeoutRequest, context: Context
    ) -> admin_pb2.ReceptionSettings:
        """SPEC R12: validated like UpdateReplyTimeout (whole seconds, 300–7200, INVALID_ARGUMENT naming
        ``idle_timeout``); main account or ops only (NOT_MAIN_ACCOUNT / PERMISSION_DENIED otherwise)."""
        check = Violations()
        timeout = request.idle_timeout
        low, high = MIN_IDLE_TIMEOUT_SECONDS, MAX_IDLE_TIMEOUT_SECONDS
        if not request.HasField("idle_timeout"):
            check.add("idle_timeout", f"is required: whole seconds between {low} and {high}")
        elif timeout.nanos != 0 or not low <= timeout.seconds <= high:
            check.add("idle_timeout", f"must be whole seconds between {low} and {high}")
        target = self._scope(request.merchant_id, check)
        return records.reception_settings(await directory.update_idle_timeout(self._pool, target, timeout.seconds))

    async def CreateReplyTemplate(
        self, request: admin_pb2.CreateReplyTemplateRequest, context: Context
    ) -> merchant_pb2.ReplyTemplate:
        check = Violations()
        if not request.HasField("template"):
            check.add("template", "is required")
        title = check.text("template.title", request.template.title, max_chars=MAX_TEMPLATE_TITLE, multiline=False)
        text = check.text("template.text", request.template.text, max_chars=MAX_TEMPLATE_TEXT)
        target = self._scope(request.merchant_id, check)
        row = await directory.create_reply_template(self._pool, target, title=title, body=text)
        return records.reply_template(row)

    async def DeleteReplyTemplate(
        self, request: admin_pb2.DeleteReplyTemplateRequest, context: Context
    ) -> empty_pb2.Empty:
        check = Violations()
        check.identifier("template_id", request.template_id)
        target = self._scope(request.merchant_id, check)
        await directory.delete_reply_template(self._pool, target, request.template_id)
        return empty_pb2.Empty()
