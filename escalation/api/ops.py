"""OpsService: account sync from the platform, reply-timeliness statistics, merchant warnings (SPEC R10)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import grpc

from escalation.api.interceptors import current_identity
from escalation.api.session_requests import time_and_uuid_key
from escalation.domain import paging, timeliness
from escalation.domain.validation import Violations
from escalation.services import directory, records, stats, warnings
from escalation.v1 import events_pb2, ops_pb2, ops_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_WARNING_PAGE = 100


def _window(check: Violations, request: ops_pb2.GetResponseStatsRequest) -> tuple[datetime, datetime] | None:
    """[start_time, end_time), at most 31 days; None (with the violations noted) when it is not usable."""
    start = end = None
    for name in ("start_time", "end_time"):
        if not request.HasField(name):
            check.add(name, "is required")
    if request.HasField("start_time"):
        start = check.timestamp("start_time", request.start_time.seconds, request.start_time.nanos)
    if request.HasField("end_time"):
        end = check.timestamp("end_time", request.end_time.seconds, request.end_time.nanos)
    if start is not None and end is not None:
        if end <= start:
            check.add("end_time", "must be after start_time")
        elif end - start > timeliness.MAX_WINDOW:
            check.add("end_time", f"must be at most {timeliness.MAX_WINDOW.days} days after start_time")
        else:
            return start, end
    return None


class OpsServicer(ops_pb2_grpc.OpsServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def UpsertMerchant(self, request: ops_pb2.UpsertMerchantRequest, context: Context) -> ops_pb2.Merchant:
        check = Violations()
        if not request.HasField("merchant"):
            check.add("merchant", "is required")
        m = request.merchant
        check.identifier("merchant.merchant_id", m.merchant_id)
        check.identifier("merchant.main_account_id", m.main_account_id)
        name = check.text("merchant.display_name", m.display_name, max_chars=100, required=False, multiline=False)
        check.raise_if_any()
        row = await directory.upsert_merchant(
            self._pool,
            merchant_id=m.merchant_id,
            display_name=name,
            main_account_id=m.main_account_id,
            disabled=m.disabled,
            actor=current_identity(),
        )
        return records.merchant(row)

    async def GetResponseStats(
        self, request: ops_pb2.GetResponseStatsRequest, context: Context
    ) -> ops_pb2.ResponseStats:
        check = Violations()
        check.identifier("merchant_id", request.merchant_id)
        check.identifier("agent_id", request.agent_id, required=False)
        span = _window(check, request)
        check.raise_if_any()
        assert span is not None
        start, end = span
        window = stats.Window(start, end, request.agent_id or None)
        f, as_of = await stats.response_stats(self._pool, request.merchant_id, window)
        return ops_pb2.ResponseStats(
            merchant_id=request.merchant_id,
            agent_id=request.agent_id,
            start_time=records.timestamp(start),
            end_time=records.timestamp(end),
            sessions=f.sessions,
            sessions_answered_in_3m=f.sessions_answered_in_3m,
            session_reply_rate_3m=f.session_reply_rate,
            platform_messages=f.platform_messages,
            platform_messages_answered_in_3m=f.platform_messages_answered_in_3m,
            message_reply_rate_3m=f.message_reply_rate,
            average_first_response=stats.duration(f.average_first_response),
            average_response=stats.duration(f.average_response),
            timeouts=f.timeouts,
            tickets=f.tickets,
            sessions_rated=f.sessions_rated,
            platform_messages_rated=f.platform_messages_rated,
            sessions_answered=f.sessions_answered,
            platform_messages_answered=f.platform_messages_answered,
            compute_time=records.timestamp(as_of),
        )

    async def ListWarnings(
        self, request: ops_pb2.ListWarningsRequest, context: Context
    ) -> ops_pb2.ListWarningsResponse:
        check = Violations()
        check.identifier("merchant_id", request.merchant_id, required=False)
        size = check.page_size("page_size", request.page_size, default=DEFAULT_WARNING_PAGE)
        filters = ["warnings", request.merchant_id]
        after = time_and_uuid_key(check, paging.decode(request.page_token, filters, check))
        check.raise_if_any()
        rows = await warnings.list_warnings(self._pool, request.merchant_id or None, after=after, limit=size + 1)
        items, token = paging.bounded_page(
            rows,
            size,
            lambda r: events_pb2.MerchantWarning.FromString(r["payload"]),
            lambda r: [r["create_time"].isoformat(), str(r["warning_id"])],
            filters,
        )
        return ops_pb2.ListWarningsResponse(warnings=items, next_page_token=token)
