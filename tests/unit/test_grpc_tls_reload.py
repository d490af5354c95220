"""The gRPC certificate fetcher on reload (issue 11 §1, review): a replacement outside its validity is
refused and the last good pair keeps serving; a refused replacement is read and warned about once per
change of the files, not on every handshake; what is loaded is logged and exported as a gauge.

grpc calls the fetcher before each new handshake; here it is called directly, as grpc would, with a
clock the test moves. The real server's behaviour is in tests/e2e/test_grpc_tls.py.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from escalation.api.tls import CertificateFiles
from escalation.transport_security import GrpcTls
from tests.certificates import CertificateAuthority, Issued

DAY = datetime.timedelta(days=1)
HANDSHAKES = 50


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def _replace(issued: Issued, cert: Path, key: Path) -> None:
    """As kubelet updates a mounted Secret: new files renamed over the old ones."""
    for data, target in ((issued.cert_pem, cert), (issued.key_pem, key)):
        staged = target.with_suffix(".new")
        staged.write_bytes(data)
        os.replace(staged, target)


def _expiry_gauge() -> float | None:
    return REGISTRY.get_sample_value("escalation_tls_certificate_expiry_timestamp_seconds")


def _events(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def _not_after(issued: Issued) -> datetime.datetime:
    return x509.load_pem_x509_certificate(issued.cert_pem).not_valid_after_utc


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority("reload-ca")


def test_the_loaded_certificate_is_logged_and_its_expiry_exported(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue("localhost", server=True)
    cert, key = issued.write(tmp_path, "server")
    with capture_logs() as logs:
        CertificateFiles(GrpcTls(cert, key))
    (loaded,) = _events(logs, "grpc.tls_loaded")
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    assert loaded["subject"] == "CN=localhost"
    assert loaded["sans"] == ["localhost", "127.0.0.1"]
    assert loaded["not_after"] == leaf.not_valid_after_utc.isoformat()
    assert loaded["serial"] == format(leaf.serial_number, "x")
    assert _expiry_gauge() == leaf.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "says"),
    [
        (-2 * DAY, -DAY, "expired at"),
        (-DAY, -datetime.timedelta(seconds=1), "expired at"),
        (DAY, 2 * DAY, "is not valid before"),
    ],
    ids=["expired", "just-expired", "not-yet-valid"],
)
def test_a_replacement_outside_its_validity_is_refused_once_and_the_old_pair_serves(
    ca: CertificateAuthority,
    tmp_path: Path,
    valid_from: datetime.timedelta,
    valid_until: datetime.timedelta,
    says: str,
) -> None:
    good = ca.issue("localhost", server=True)
    cert, key = good.write(tmp_path, "server")
    files = CertificateFiles(GrpcTls(cert, key), Clock())
    _replace(ca.issue("localhost", server=True, valid_from=valid_from, valid_until=valid_until), cert, key)
    with capture_logs() as logs:
        answers = [files() for _ in range(HANDSHAKES)]
    assert answers == [None] * HANDSHAKES  # None: grpc keeps the configuration it has
    (failed,) = _events(logs, "grpc.tls_reload_failed")
    assert says in failed["error"]
    assert not _events(logs, "grpc.tls_reloaded")
    assert _expiry_gauge() == _not_after(good).timestamp()


def test_each_change_of_a_broken_replacement_is_warned_about_once(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert, key = ca.issue("localhost", server=True).write(tmp_path, "server")
    files = CertificateFiles(GrpcTls(cert, key), Clock())
    with capture_logs() as logs:
        key.write_bytes(ca.issue("localhost", server=True).key_pem)  # a key that is not the certificate's
        assert [files() for _ in range(HANDSHAKES)] == [None] * HANDSHAKES
        (cert.parent / "garbage").write_text("not a certificate\n")
        os.replace(cert.parent / "garbage", cert)
        assert [files() for _ in range(HANDSHAKES)] == [None] * HANDSHAKES
    errors = [entry["error"] for entry in _events(logs, "grpc.tls_reload_failed")]
    assert len(errors) == 2
    assert "does not belong" in errors[0]
    assert "no PEM certificate" in errors[1]

    fixed = ca.issue("localhost", server=True)
    _replace(fixed, cert, key)
    with capture_logs() as logs:
        assert files() is not None
        assert files() is None  # loaded once; unchanged files are not read again
    (reloaded,) = _events(logs, "grpc.tls_reloaded")
    assert reloaded["not_after"] == _not_after(fixed).isoformat()
    assert reloaded["subject"] == "CN=localhost"
    assert _expiry_gauge() == _not_after(fixed).timestamp()


def test_a_not_yet_valid_replacement_is_taken_once_its_not_before_has_passed(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert, key = ca.issue("localhost", server=True).write(tmp_path, "server")
    clock = Clock()
    files = CertificateFiles(GrpcTls(cert, key), clock)
    early = ca.issue("localhost", server=True, valid_from=datetime.timedelta(minutes=10))
    _replace(early, cert, key)
    with capture_logs() as logs:
        assert files() is None
        clock.now += datetime.timedelta(minutes=5)
        assert files() is None
        clock.now += datetime.timedelta(minutes=6)
        assert files() is not None
    assert len(_events(logs, "grpc.tls_reload_failed")) == 1
    (reloaded,) = _events(logs, "grpc.tls_reloaded")
    assert reloaded["not_after"] == _not_after(early).isoformat()
