"""ESCALATION_GRPC_TLS_*: unusable files are one configuration line at start (issue 11 §1, SPEC §3)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from escalation import config
from tests.certificates import CertificateAuthority


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = CertificateAuthority("ca")
    server = ca.issue("localhost", server=True)
    cert, key = server.write(tmp_path, "server")
    private = serialization.load_pem_private_key(server.key_pem, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    day = datetime.timedelta(days=1)
    expired_cert, expired_key = ca.issue("localhost", server=True, valid_from=-2 * day, valid_until=-day).write(
        tmp_path, "expired"
    )
    just_expired_cert, just_expired_key = ca.issue(
        "localhost", server=True, valid_from=-day, valid_until=-datetime.timedelta(seconds=5)
    ).write(tmp_path, "just-expired")
    future_cert, future_key = ca.issue("localhost", server=True, valid_from=datetime.timedelta(hours=1)).write(
        tmp_path, "future"
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return {
        "cert": cert,
        "key": key,
        "ca": ca.write(tmp_path, "ca"),
        "encrypted": encrypted,
        "garbage": garbage,
        "expired": expired_cert,
        "expired_key": expired_key,
        "just_expired": just_expired_cert,
        "just_expired_key": just_expired_key,
        "future": future_cert,
        "future_key": future_key,
    }


def test_a_valid_pair_with_a_client_ca_is_mtls(files: dict[str, Path]) -> None:
    tls = config.load(
        {
            "ESCALATION_GRPC_TLS_CERT_FILE": str(files["cert"]),
            "ESCALATION_GRPC_TLS_KEY_FILE": str(files["key"]),
            "ESCALATION_GRPC_TLS_CLIENT_CA_FILE": str(files["ca"]),
        }
    ).grpc_tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (files["cert"], files["key"], files["ca"])


@pytest.mark.parametrize(
    ("cert", "key", "ca", "says"),
    [
        ("cert", "encrypted", None, "no unencrypted PEM private key"),
        ("garbage", "key", None, "no PEM certificate"),
        ("cert", "key", "garbage", "ESCALATION_GRPC_TLS_CLIENT_CA_FILE"),
        ("cert", "key", "missing", "cannot read"),
        ("key", "key", None, "no PEM certificate"),
        (None, None, "ca", "must be set together"),
        (None, "key", None, "must be set together"),
        # Clients refuse these at every handshake (CERTIFICATE_VERIFY_FAILED); say so once, at start.
        ("expired", "expired_key", None, "expired at"),
        ("just_expired", "just_expired_key", "ca", "expired at"),
        ("future", "future_key", None, "is not valid before"),
    ],
)
def test_unusable_files_are_one_line(
    files: dict[str, Path], tmp_path: Path, cert: str | None, key: str | None, ca: str | None, says: str
) -> None:
    def path(name: str | None) -> str:
        return "" if name is None else str(files.get(name, tmp_path / name))

    env = {
        "ESCALATION_GRPC_TLS_CERT_FILE": path(cert),
        "ESCALATION_GRPC_TLS_KEY_FILE": path(key),
        "ESCALATION_GRPC_TLS_CLIENT_CA_FILE": path(ca),
    }
    with pytest.raises(config.ConfigError) as caught:
        config.load(env)
    assert "\n" not in str(caught.value)
    assert says in str(caught.value)
    assert "ESCALATION_GRPC_TLS" in str(caught.value)
