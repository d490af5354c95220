"""`escalation serve` with gRPC TLS and mTLS, as a real process, with certificates made in the test (issue 11 §1).

Clients that trust the server's CA get health and authenticated RPCs; clients trusting another CA, or
speaking plaintext, are refused; with a client CA, only clients presenting a certificate it issued are
let in; replacing the certificate files is picked up by the next connection, without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalation.auth import Role, mint
from escalation.v1 import ops_pb2, ops_pb2_grpc
from tests.certificates import CertificateAuthority, Issued
from tests.conftest import JWT_SECRET
from tests.e2e.harness import clean_env, run
from tests.e2e.replicas import ESCALATION, Replica, channel, serving, wait_serving

pytestmark = pytest.mark.timeout(90)


def _trusting(ca: CertificateAuthority, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
    return grpc.ssl_channel_credentials(ca.cert_pem, private_key=client.key_pem, certificate_chain=client.cert_pem)


async def _health(replica: Replica, credentials: grpc.ChannelCredentials | None) -> int:
    async with channel(replica, credentials) as ch:
        answer = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(answer.status)


async def _refused(replica: Replica, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(replica, credentials)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def _http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status)


def _replace(issued: Issued, cert: Path, key: Path) -> None:
    """As kubelet updates a mounted Secret: new files renamed over the old ones (atomic)."""
    for data, target in ((issued.cert_pem, cert), (issued.key_pem, key)):
        staged = target.with_suffix(".new")
        staged.write_bytes(data)
        os.replace(staged, target)


async def test_tls_clients_trusting_the_ca_are_served_and_others_refused(database_url: str, tmp_path: Path) -> None:
    ca, other = CertificateAuthority("escalation-test-ca"), CertificateAuthority("someone-else")
    cert, key = ca.issue("localhost", server=True).write(tmp_path, "server")
    env = {"ESCALATION_GRPC_TLS_CERT_FILE": str(cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(key)}
    with serving(database_url, tmp_path / "logs", count=1, **env) as (replica,):
        await wait_serving(replica, credentials=_trusting(ca))
        assert await _health(replica, _trusting(ca)) == health_pb2.HealthCheckResponse.SERVING
        token = mint(key=JWT_SECRET, algorithm="HS256", subject="ops-1", role=Role.OPS)
        async with channel(replica, _trusting(ca)) as ch:
            listed = await ops_pb2_grpc.OpsServiceStub(ch).ListWarnings(
                ops_pb2.ListWarningsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        assert list(listed.warnings) == []
        await _refused(replica, _trusting(other))
        await _refused(replica, None)  # plaintext
        # Kubernetes probes (plaintext HTTP, no certificate) use /livez and /readyz next to /metrics.
        for path in ("/livez", "/readyz"):
            assert await asyncio.to_thread(_http_status, f"http://{replica.metrics_addr}{path}") == 200


async def test_replaced_certificate_files_are_served_to_new_connections(database_url: str, tmp_path: Path) -> None:
    old_ca, new_ca = CertificateAuthority("old-ca"), CertificateAuthority("new-ca")
    cert, key = old_ca.issue("localhost", server=True).write(tmp_path, "server")
    env = {"ESCALATION_GRPC_TLS_CERT_FILE": str(cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(key)}
    with serving(database_url, tmp_path / "logs", count=1, **env) as (replica,):
        await wait_serving(replica, credentials=_trusting(old_ca))
        await _refused(replica, _trusting(new_ca))

        # A half-done replacement (a key that is not the certificate's) keeps the last good pair.
        key.write_bytes(new_ca.issue("localhost", server=True).key_pem)
        assert await _health(replica, _trusting(old_ca)) == health_pb2.HealthCheckResponse.SERVING
        assert "grpc.tls_reload_failed" in replica.output()

        # No signal is needed; one sent out of habit changes nothing (SIGHUP would otherwise end it).
        replica.proc.send_signal(signal.SIGHUP)
        _replace(new_ca.issue("localhost", server=True), cert, key)
        assert await _health(replica, _trusting(new_ca)) == health_pb2.HealthCheckResponse.SERVING
        await _refused(replica, _trusting(old_ca))
        assert "grpc.tls_reloaded" in replica.output()
        assert replica.proc.poll() is None


def _metric(replica: Replica, name: str) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{replica.metrics_addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    (line,) = (line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_an_expired_replacement_is_refused_once_and_the_old_pair_keeps_serving(
    database_url: str, tmp_path: Path
) -> None:
    old_ca, new_ca = CertificateAuthority("old-ca"), CertificateAuthority("new-ca")
    good = old_ca.issue("localhost", server=True)
    cert, key = good.write(tmp_path, "server")
    good_until = x509.load_pem_x509_certificate(good.cert_pem).not_valid_after_utc
    env = {"ESCALATION_GRPC_TLS_CERT_FILE": str(cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(key)}
    expiry = "escalation_tls_certificate_expiry_timestamp_seconds"
    with serving(database_url, tmp_path / "logs", count=1, **env) as (replica,):
        await wait_serving(replica, credentials=_trusting(old_ca))
        assert "grpc.tls_loaded" in replica.output()
        assert await asyncio.to_thread(_metric, replica, expiry) == good_until.timestamp()

        day = datetime.timedelta(days=1)
        _replace(new_ca.issue("localhost", server=True, valid_from=-2 * day, valid_until=-day), cert, key)
        for _ in range(8):  # each a new connection, so a new handshake
            assert await _health(replica, _trusting(old_ca)) == health_pb2.HealthCheckResponse.SERVING
        await _refused(replica, _trusting(new_ca))
        assert replica.output().count("grpc.tls_reload_failed") == 1
        assert "expired at" in replica.output()
        assert "grpc.tls_reloaded" not in replica.output()
        assert await asyncio.to_thread(_metric, replica, expiry) == good_until.timestamp()


async def test_mtls_admits_only_clients_with_a_certificate_from_the_client_ca(
    database_url: str, tmp_path: Path
) -> None:
    server_ca, client_ca, stranger = (CertificateAuthority(n) for n in ("server-ca", "client-ca", "stranger"))
    cert, key = server_ca.issue("localhost", server=True).write(tmp_path, "server")
    env = {
        "ESCALATION_GRPC_TLS_CERT_FILE": str(cert),
        "ESCALATION_GRPC_TLS_KEY_FILE": str(key),
        "ESCALATION_GRPC_TLS_CLIENT_CA_FILE": str(client_ca.write(tmp_path, "clients")),
    }
    good_client = client_ca.issue("probe", server=False)
    with serving(database_url, tmp_path / "logs", count=1, **env) as (replica,):
        await wait_serving(replica, credentials=_trusting(server_ca, good_client))
        assert await _health(replica, _trusting(server_ca, good_client)) == health_pb2.HealthCheckResponse.SERVING
        await _refused(replica, _trusting(server_ca))  # no client certificate
        await _refused(replica, _trusting(server_ca, stranger.issue("probe", server=False)))
        await _refused(replica, None)


def test_unusable_certificate_files_stop_serve_with_one_line(tmp_path: Path) -> None:
    ca = CertificateAuthority("ca")
    cert, key = ca.issue("localhost", server=True).write(tmp_path, "server")
    _, foreign_key = ca.issue("localhost", server=True).write(tmp_path, "other")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    day = datetime.timedelta(days=1)
    expired_cert, expired_key = ca.issue("localhost", server=True, valid_from=-2 * day, valid_until=-day).write(
        tmp_path, "expired"
    )
    future_cert, future_key = ca.issue("localhost", server=True, valid_from=day).write(tmp_path, "future")
    cases = [
        (
            {"ESCALATION_GRPC_TLS_CERT_FILE": str(tmp_path / "missing.crt"), "ESCALATION_GRPC_TLS_KEY_FILE": str(key)},
            "missing.crt",
        ),
        (
            {"ESCALATION_GRPC_TLS_CERT_FILE": str(cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(foreign_key)},
            "does not belong",
        ),
        (
            {"ESCALATION_GRPC_TLS_CERT_FILE": str(tmp_path / "garbage.pem"), "ESCALATION_GRPC_TLS_KEY_FILE": str(key)},
            "no PEM certificate",
        ),
        ({"ESCALATION_GRPC_TLS_CERT_FILE": str(cert)}, "must be set together"),
        (
            {"ESCALATION_GRPC_TLS_CERT_FILE": str(expired_cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(expired_key)},
            "expired at",
        ),
        (
            {"ESCALATION_GRPC_TLS_CERT_FILE": str(future_cert), "ESCALATION_GRPC_TLS_KEY_FILE": str(future_key)},
            "is not valid before",
        ),
    ]
    base = clean_env(ESCALATION_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", ESCALATION_JWT_SECRET=JWT_SECRET)
    for env, says in cases:
        result = run((*ESCALATION, "serve"), base | env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "ESCALATION_GRPC_TLS" in lines[0]
        assert says in lines[0]
