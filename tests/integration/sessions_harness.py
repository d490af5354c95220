"""Shared setup for session tests: a shop with agents, and request builders."""

from __future__ import annotations

import uuid

import grpc

from escalation.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ops_pb2, ops_pb2_grpc, platform_pb2
from tests.integration.grpc_harness import OPS, bearer

PLATFORM = bearer("platform", "pa-1")
OTHER_PLATFORM = bearer("platform", "pa-2")
SUPERVISOR = bearer("platform_supervisor", "sup-1")


def text(body: str) -> common_pb2.MessageContent:
    return common_pb2.MessageContent(text=common_pb2.Text(body=body))


def open_request(
    merchant_id: str = "shop-a", request_id: str | None = None, body: str = "Can you ship today?"
) -> platform_pb2.OpenSessionRequest:
    return platform_pb2.OpenSessionRequest(
        request_id=request_id or uuid.uuid4().hex,
        merchant_id=merchant_id,
        category=common_pb2.CATEGORY_ORDER_OPERATION,
        order_id="order-1",
        messages=[text(body)],
    )


async def make_shop(
    channel: grpc.aio.Channel,
    merchant_id: str = "shop-a",
    agents: dict[str, int] | None = None,
    *,
    designate: bool = True,
) -> list[str]:
    """A merchant whose designated agents have the given capacities; returns their ids."""
    ops = ops_pb2_grpc.OpsServiceStub(channel)
    admin = admin_pb2_grpc.MerchantAdminServiceStub(channel)
    await ops.UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(
            merchant=ops_pb2.Merchant(merchant_id=merchant_id, main_account_id=f"{merchant_id}-main")
        ),
        metadata=OPS,
    )
    agents = agents if agents is not None else {f"{merchant_id}-sub-{n}": 10 for n in (1, 2, 3)}
    for agent_id, capacity in agents.items():
        await admin.UpsertAgent(
            admin_pb2.UpsertAgentRequest(
                merchant_id=merchant_id, agent=admin_pb2.Agent(agent_id=agent_id, im_permission=True, capacity=capacity)
            ),
            metadata=OPS,
        )
    if designate and agents:
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(merchant_id=merchant_id, agent_ids=list(agents)), metadata=OPS
        )
    return list(agents)
