"""OpsService: account sync from the platform; stats and warnings arrive with their issues."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc

from escalation import errors
from escalation.api import convert
from escalation.domain.validation import Violations
from escalation.services import directory
from escalation.v1 import ops_pb2, ops_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


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
        )
        return convert.merchant(row)

    async def GetResponseStats(
        self, request: ops_pb2.GetResponseStatsRequest, context: Context
    ) -> ops_pb2.ResponseStats:
        raise errors.Unimplemented()

    async def ListWarnings(
        self, request: ops_pb2.ListWarningsRequest, context: Context
    ) -> ops_pb2.ListWarningsResponse:
        raise errors.Unimplemented()
