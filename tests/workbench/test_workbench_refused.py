"""A token the service refuses stops the workbench with the reason and exit status 2; a service that
is away is waited for (the retry loop of app.py ``_follow``)."""

from __future__ import annotations

import pytest

from escalation import auth
from escalation.client import MemoryCursorStore, MerchantClient
from escalation.devenv import seed
from escalation.workbench.app import EXIT_REFUSED, Workbench
from escalation.workbench.run_app import SdkBackend
from escalation.workbench.state import WorkbenchState
from tests.integration.grpc_harness import token
from tests.workbench.harness import AGENT, MERCHANT, SIZE, Clock, Service, until

REFUSED = {
    "not a JWT": ("not-a-jwt", "UNAUTHENTICATED"),
    "another key": (
        auth.mint(
            key="another-secret-" * 4,
            algorithm="HS256",
            subject=AGENT,
            role=auth.Role.MERCHANT,
            merchant_id=MERCHANT,
            ttl_seconds=600,
        ),
        "UNAUTHENTICATED",
    ),
    "expired": (token("merchant", AGENT, MERCHANT, ttl=-600), "UNAUTHENTICATED"),
    "a platform agent's": (token("platform", "pa-1"), "PERMISSION_DENIED"),
}


def _workbench(target: str, bearer: str) -> tuple[MerchantClient, Workbench]:
    client = MerchantClient(target, token=bearer, cursor_store=MemoryCursorStore())
    state = WorkbenchState(agent_id=AGENT, merchant_id=MERCHANT)
    app = Workbench(SdkBackend(client), state, target=target, clock=Clock(), tick_seconds=0)
    return client, app


@pytest.mark.parametrize("which", list(REFUSED))
async def test_a_refused_token_stops_the_workbench_with_the_reason(service: Service, which: str) -> None:
    bearer, code = REFUSED[which]
    client, app = _workbench(service.target, bearer)
    async with client, app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.stopped is not None, "the workbench to stop")
        assert app.connection.startswith(f"stopped: {code}")
    assert app.return_code == EXIT_REFUSED
    assert app.stopped is not None
    assert app.stopped.startswith(code)


async def test_a_service_that_is_away_is_waited_for(service: Service) -> None:
    await service.channel.close(grace=None)
    assert service.server is not None
    await service.server.stop(grace=0)
    service.server = None
    client, app = _workbench(service.target, token("merchant", seed.DEMO_AGENTS[0], MERCHANT))
    async with client, app.run_test(size=SIZE) as pilot:
        wanted = f"waiting for the service: cannot reach {service.target} — is the service running? (--target)"
        await until(pilot, lambda: app.connection == wanted, "a wait")
        assert app.stopped is None
        assert app.is_running
