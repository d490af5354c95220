"""A JWKS-only `escalation serve` is not ready until it holds a signing key (issue 11 §3, deploy/k8s probes).

A real serve process is pointed at a loopback identity provider that answers a maintenance page: it
starts (the provider being down is no reason to crash-loop), /readyz fails naming the JWKS check,
/metrics counts the failed fetches, and once the provider publishes keys serve fetches them by itself
and becomes ready — without a token arriving, as a replica out of the balancer gets none.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import replicas
from tests.e2e.test_health_endpoints import _get, _until
from tests.integration.jwks_harness import identity_provider, rs256

pytestmark = pytest.mark.e2e


def _fetch_failures(metrics: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "escalation_jwks_fetch_failures_total"
    )


@pytest.mark.parametrize(
    "answer",
    [(200, b"<html><body>maintenance</body></html>"), (200, b"[]"), (503, b"unavailable")],
    ids=["html", "json array", "503"],
)
async def test_jwks_only_serve_is_not_ready_until_it_has_keys(
    database_url: str, tmp_path: Path, answer: tuple[int, bytes]
) -> None:
    with identity_provider() as idp:
        idp.broken = answer
        jwks_only = {
            "ESCALATION_JWT_SECRET": "",  # no static key: JWKS tokens are the only ones
            "ESCALATION_JWT_JWKS_URL": idp.url,
            "ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS": "1",
        }
        with replicas.serving(database_url, tmp_path, count=1, **jwks_only) as (server,):
            await replicas.wait_serving(server)  # started despite the broken provider
            body = await _until(server.metrics_addr, "/readyz", 503, "no keys yet", server.output())
            assert "jwks: no signing keys fetched" in body, body
            assert (await asyncio.to_thread(_get, server.metrics_addr, "/livez")) == (200, "ok\n")
            _, metrics = await asyncio.to_thread(_get, server.metrics_addr, "/metrics")
            assert _fetch_failures(metrics) >= 1, metrics
            assert "jwks.fetch_failed" in server.output()

            idp.publish(rs256("k1"))
            await _until(server.metrics_addr, "/readyz", 200, "ready once keys are published", server.output())
            assert server.proc.poll() is None
