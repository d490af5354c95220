"""Directory RPCs end to end over gRPC against a real database: auth, roles, R1, settings, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    merchant_pb2,
    merchant_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
)
from tests.integration.grpc_harness import OPS, bearer, failure, running_server

pytestmark = pytest.mark.integration

MAIN = bearer("merchant", "shop-a-main", "shop-a")
SUB = bearer("merchant", "shop-a-sub-1", "shop-a")
OTHER_SHOP = bearer("merchant", "shop-b-main", "shop-b")


@pytest.fixture
async def channel(pool: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    async with running_server(pool) as ch:
        yield ch


@pytest.fixture
def ops(channel: grpc.aio.Channel) -> ops_pb2_grpc.OpsServiceAsyncStub:
    return ops_pb2_grpc.OpsServiceStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.MerchantAdminServiceAsyncStub:
    return admin_pb2_grpc.MerchantAdminServiceStub(channel)


async def _shop(
    ops: ops_pb2_grpc.OpsServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    merchant_id: str = "shop-a",
) -> None:
    await ops.UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(
            merchant=ops_pb2.Merchant(merchant_id=merchant_id, main_account_id=f"{merchant_id}-main")
        ),
        metadata=OPS,
    )
    for n, im in ((1, True), (2, True), (3, False)):
        await admin.UpsertAgent(
            admin_pb2.UpsertAgentRequest(
                merchant_id=merchant_id,
                agent=admin_pb2.Agent(agent_id=f"{merchant_id}-sub-{n}", im_permission=im),
            ),
            metadata=OPS,
        )


async def test_call_without_token_is_unauthenticated_with_error_info(
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ListAgents(admin_pb2.ListAgentsRequest())
    got = failure(caught.value)
    assert got.code is grpc.StatusCode.UNAUTHENTICATED
    assert (got.reason, got.domain) == ("TOKEN_MISSING", "escalation")


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-jwt", "TOKEN_INVALID"),
        ("Basic dXNlcjpwYXNz", "TOKEN_MALFORMED"),
        (
            "Bearer "
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4Iiwicm9sZSI6Im9wcyIsImV4cCI6OTk5OTk5OTk5OX0."
            "wrong-signature-wrong-signature-wrong-sig",
            "TOKEN_INVALID",
        ),
    ],
)
async def test_bad_tokens_are_unauthenticated(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, authorization: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.UpsertMerchant(ops_pb2.UpsertMerchantRequest(), metadata=(("authorization", authorization),))
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_expired_token_is_unauthenticated(ops: ops_pb2_grpc.OpsServiceAsyncStub) -> None:
    from tests.integration.grpc_harness import token

    stale = token("ops", "ops-1", ttl=-3600)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.UpsertMerchant(ops_pb2.UpsertMerchantRequest(), metadata=(("authorization", f"Bearer {stale}"),))
    assert failure(caught.value).reason == "TOKEN_EXPIRED"


async def test_merchant_token_calling_upsert_merchant_is_permission_denied(
    ops: ops_pb2_grpc.OpsServiceAsyncStub,
) -> None:
    request = ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="x"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.UpsertMerchant(request, metadata=MAIN)
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


async def test_platform_token_cannot_call_admin_or_merchant_services(channel: grpc.aio.Channel) -> None:
    platform = bearer("platform", "pa-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_pb2_grpc.MerchantAdminServiceStub(channel).ListAgents(
            admin_pb2.ListAgentsRequest(merchant_id="shop-a"), metadata=platform
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchant_pb2_grpc.MerchantServiceStub(channel).ListReplyTemplates(
            merchant_pb2.ListReplyTemplatesRequest(), metadata=platform
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_upsert_merchant_creates_main_account_that_receives_by_default(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    merchant = await ops.UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(
            merchant=ops_pb2.Merchant(merchant_id="shop-a", display_name="Shop A", main_account_id="shop-a-main")
        ),
        metadata=OPS,
    )
    assert (merchant.merchant_id, merchant.display_name, merchant.main_account_id) == (
        "shop-a",
        "Shop A",
        "shop-a-main",
    )
    settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=MAIN)
    assert list(settings.eligible_agent_ids) == ["shop-a-main"]
    assert list(settings.reception_agent_ids) == []
    assert settings.reply_timeout.seconds == 180


async def test_changing_main_account_demotes_the_previous_one(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    for main in ("old-main", "new-main"):
        await ops.UpsertMerchant(
            ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id=main)),
            metadata=OPS,
        )
    agents = await admin.ListAgents(admin_pb2.ListAgentsRequest(merchant_id="shop-a"), metadata=OPS)
    assert {a.agent_id: a.main_account for a in agents.agents} == {"new-main": True, "old-main": False}
    settings = await admin.GetReceptionSettings(
        admin_pb2.GetReceptionSettingsRequest(merchant_id="shop-a"), metadata=OPS
    )
    assert list(settings.eligible_agent_ids) == ["new-main"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.UpdateReplyTimeout(
            admin_pb2.UpdateReplyTimeoutRequest(reply_timeout=duration_pb2.Duration(seconds=150)),
            metadata=bearer("merchant", "old-main", "shop-a"),
        )
    assert failure(caught.value).reason == "NOT_MAIN_ACCOUNT"


async def test_designating_agent_without_im_permission_is_failed_precondition(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(agent_ids=["shop-a-sub-1", "shop-a-sub-3"]), metadata=MAIN
        )
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_NO_IM_PERMISSION")
    assert got.metadata == {"agent_ids": "shop-a-sub-3"}
    settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=MAIN)
    assert list(settings.reception_agent_ids) == [], "a rejected designation must change nothing"


async def test_designated_agents_replace_the_main_account_and_lose_eligibility_with_im(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    settings = await admin.SetReceptionAgents(
        admin_pb2.SetReceptionAgentsRequest(agent_ids=["shop-a-sub-2", "shop-a-sub-1"]), metadata=MAIN
    )
    assert list(settings.reception_agent_ids) == ["shop-a-sub-1", "shop-a-sub-2"]
    assert list(settings.eligible_agent_ids) == ["shop-a-sub-1", "shop-a-sub-2"]

    await admin.UpsertAgent(
        admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="shop-a-sub-1", im_permission=False)),
        metadata=MAIN,
    )
    settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=MAIN)
    assert list(settings.reception_agent_ids) == ["shop-a-sub-1", "shop-a-sub-2"]
    assert list(settings.eligible_agent_ids) == ["shop-a-sub-2"]

    await admin.UpsertAgent(
        admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="shop-a-sub-2", im_permission=True, disabled=True)),
        metadata=MAIN,
    )
    settings = await admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=MAIN)
    assert list(settings.eligible_agent_ids) == [], "the main account does not take over while others are designated"

    settings = await admin.SetReceptionAgents(admin_pb2.SetReceptionAgentsRequest(agent_ids=[]), metadata=MAIN)
    assert list(settings.eligible_agent_ids) == ["shop-a-main"]


async def test_designating_unknown_agent_is_not_found(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetReceptionAgents(admin_pb2.SetReceptionAgentsRequest(agent_ids=["ghost"]), metadata=MAIN)
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


async def test_reply_timeout_of_300_seconds_names_the_field(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    for seconds, nanos in ((300, 0), (119, 0), (150, 5)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.UpdateReplyTimeout(
                admin_pb2.UpdateReplyTimeoutRequest(reply_timeout=duration_pb2.Duration(seconds=seconds, nanos=nanos)),
                metadata=MAIN,
            )
        got = failure(caught.value)
        assert got.code is grpc.StatusCode.INVALID_ARGUMENT
        assert list(got.field_violations) == ["reply_timeout"]
    settings = await admin.UpdateReplyTimeout(
        admin_pb2.UpdateReplyTimeoutRequest(reply_timeout=duration_pb2.Duration(seconds=120)), metadata=MAIN
    )
    assert settings.reply_timeout.seconds == 120


async def test_only_main_account_or_ops_change_settings_and_sub_accounts_may_read(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    writes: list[Awaitable[object]] = [
        admin.SetReceptionAgents(admin_pb2.SetReceptionAgentsRequest(agent_ids=["shop-a-sub-1"]), metadata=SUB),
        admin.UpdateReplyTimeout(
            admin_pb2.UpdateReplyTimeoutRequest(reply_timeout=duration_pb2.Duration(seconds=150)),
            metadata=SUB,
        ),
        admin.UpsertAgent(admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="shop-a-sub-9")), metadata=SUB),
    ]
    for call in writes:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        got = failure(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_MAIN_ACCOUNT")
    agents = await admin.ListAgents(admin_pb2.ListAgentsRequest(), metadata=SUB)
    assert [a.agent_id for a in agents.agents] == [
        "shop-a-main",
        "shop-a-sub-1",
        "shop-a-sub-2",
        "shop-a-sub-3",
    ]
    ops_settings = await admin.UpdateReplyTimeout(
        admin_pb2.UpdateReplyTimeoutRequest(merchant_id="shop-a", reply_timeout=duration_pb2.Duration(seconds=160)),
        metadata=OPS,
    )
    assert ops_settings.reply_timeout.seconds == 160


async def test_another_shop_is_not_found(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin, "shop-a")
    await _shop(ops, admin, "shop-b")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ListAgents(admin_pb2.ListAgentsRequest(merchant_id="shop-a"), metadata=OTHER_SHOP)
    assert failure(caught.value).code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(merchant_id="shop-a", agent_ids=["shop-a-sub-1"]),
            metadata=OTHER_SHOP,
        )
    assert failure(caught.value).code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetReceptionAgents(
            admin_pb2.SetReceptionAgentsRequest(agent_ids=["shop-a-sub-1"]), metadata=OTHER_SHOP
        )
    assert failure(caught.value).reason == "AGENT_NOT_FOUND"


async def test_list_agents_pages_through_every_agent_once(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.ListAgents(admin_pb2.ListAgentsRequest(page_size=3, page_token=token), metadata=MAIN)
        seen += [a.agent_id for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["shop-a-main", "shop-a-sub-1", "shop-a-sub-2", "shop-a-sub-3"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ListAgents(admin_pb2.ListAgentsRequest(page_token="garbage!!"), metadata=MAIN)
    assert list(failure(caught.value).field_violations) == ["page_token"]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (ops_pb2.UpsertMerchantRequest(), {"merchant", "merchant.merchant_id", "merchant.main_account_id"}),
        (
            ops_pb2.UpsertMerchantRequest(
                merchant=ops_pb2.Merchant(merchant_id="bad id", main_account_id="m" * 65, display_name="a\x07b")
            ),
            {"merchant.merchant_id", "merchant.main_account_id", "merchant.display_name"},
        ),
    ],
)
async def test_upsert_merchant_bad_input_names_every_field(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, request_: ops_pb2.UpsertMerchantRequest, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.UpsertMerchant(request_, metadata=OPS)
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS")
    assert set(got.field_violations) == fields


async def test_admin_bad_input_names_every_field(
    ops: ops_pb2_grpc.OpsServiceAsyncStub, admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub
) -> None:
    await _shop(ops, admin)
    cases: list[tuple[Awaitable[object], set[str]]] = [
        (
            admin.UpsertAgent(
                admin_pb2.UpsertAgentRequest(agent=admin_pb2.Agent(agent_id="", capacity=51, display_name="x" * 101)),
                metadata=MAIN,
            ),
            {"agent.agent_id", "agent.capacity", "agent.display_name"},
        ),
        (
            admin.SetReceptionAgents(
                admin_pb2.SetReceptionAgentsRequest(agent_ids=["ok", "ok", "not ok"]), metadata=MAIN
            ),
            {"agent_ids", "agent_ids[2]"},
        ),
        (admin.ListAgents(admin_pb2.ListAgentsRequest(page_size=10_000), metadata=MAIN), {"page_size"}),
        (admin.ListAgents(admin_pb2.ListAgentsRequest(page_size=-1), metadata=MAIN), {"page_size"}),
        (admin.GetReceptionSettings(admin_pb2.GetReceptionSettingsRequest(), metadata=OPS), {"merchant_id"}),
        (admin.UpdateReplyTimeout(admin_pb2.UpdateReplyTimeoutRequest(), metadata=MAIN), {"reply_timeout"}),
        (
            admin.CreateReplyTemplate(
                admin_pb2.CreateReplyTemplateRequest(template=merchant_pb2.ReplyTemplate(title=" ", text="x" * 2001)),
                metadata=MAIN,
            ),
            {"template.title", "template.text"},
        ),
    ]
    for call, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        got = failure(caught.value)
        assert got.code is grpc.StatusCode.INVALID_ARGUMENT, got
        assert set(got.field_violations) == fields


async def test_reply_templates_are_kept_by_main_account_and_listed_by_agents(
    ops: ops_pb2_grpc.OpsServiceAsyncStub,
    admin: admin_pb2_grpc.MerchantAdminServiceAsyncStub,
    channel: grpc.aio.Channel,
) -> None:
    await _shop(ops, admin, "shop-a")
    await _shop(ops, admin, "shop-b")
    created = [
        await admin.CreateReplyTemplate(
            admin_pb2.CreateReplyTemplateRequest(
                template=merchant_pb2.ReplyTemplate(title=f"t{i}", text=f"  we ship today ({i})  ")
            ),
            metadata=MAIN,
        )
        for i in range(5)
    ]
    assert created[0].text == "we ship today (0)"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.CreateReplyTemplate(
            admin_pb2.CreateReplyTemplateRequest(template=merchant_pb2.ReplyTemplate(title="t", text="x")),
            metadata=SUB,
        )
    assert failure(caught.value).reason == "NOT_MAIN_ACCOUNT"
    await admin.DeleteReplyTemplate(
        admin_pb2.DeleteReplyTemplateRequest(template_id=created[1].template_id), metadata=MAIN
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.DeleteReplyTemplate(
            admin_pb2.DeleteReplyTemplateRequest(template_id=created[1].template_id), metadata=MAIN
        )
    assert failure(caught.value).code is grpc.StatusCode.NOT_FOUND

    merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
    titles: list[str] = []
    token = ""
    while True:
        page = await merchant.ListReplyTemplates(
            merchant_pb2.ListReplyTemplatesRequest(page_size=2, page_token=token), metadata=SUB
        )
        titles += [t.title for t in page.templates]
        token = page.next_page_token
        if not token:
            break
    assert titles == ["t0", "t2", "t3", "t4"]
    other = await merchant.ListReplyTemplates(merchant_pb2.ListReplyTemplatesRequest(), metadata=OTHER_SHOP)
    assert list(other.templates) == []


async def test_health_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service="escalation.v1.PlatformService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        names |= {s.name for s in response.list_services_response.service}
    assert {
        "escalation.v1.PlatformService",
        "escalation.v1.MerchantService",
        "escalation.v1.MerchantAdminService",
        "escalation.v1.OpsService",
        "grpc.health.v1.Health",
    } <= names


async def test_inbound_message_over_one_mebibyte_is_refused(ops: ops_pb2_grpc.OpsServiceAsyncStub) -> None:
    huge = ops_pb2.UpsertMerchantRequest(
        merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="m", display_name="x" * (1024 * 1024 + 1))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.UpsertMerchant(huge, metadata=OPS)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_request_id_is_returned_in_trailing_metadata(ops: ops_pb2_grpc.OpsServiceAsyncStub) -> None:
    call = ops.UpsertMerchant(
        ops_pb2.UpsertMerchantRequest(merchant=ops_pb2.Merchant(merchant_id="shop-a", main_account_id="shop-a-main")),
        metadata=(*OPS, ("x-request-id", "req-123")),
    )
    await call
    assert ("x-request-id", "req-123") in tuple(await call.trailing_metadata() or ())
