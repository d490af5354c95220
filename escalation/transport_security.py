"""TLS and SASL settings for gRPC and Kafka, read from the environment and checked at start.

``config.load`` calls the readers here; each bad variable becomes one message naming it (SPEC §3: one
clear line). Files are read and parsed at start, so a missing file, a key that is not the certificate's
or a PEM that does not parse is reported before the process serves anything. docs/production.md
explains every variable.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

GRPC_TLS_VARIABLES = (
    "ESCALATION_GRPC_TLS_CERT_FILE",
    "ESCALATION_GRPC_TLS_KEY_FILE",
    "ESCALATION_GRPC_TLS_CLIENT_CA_FILE",
)
KAFKA_SECURITY_VARIABLES = (
    "ESCALATION_KAFKA_SECURITY_PROTOCOL",
    "ESCALATION_KAFKA_SASL_MECHANISM",
    "ESCALATION_KAFKA_SASL_USERNAME",
    "ESCALATION_KAFKA_SASL_USERNAME_FILE",
    "ESCALATION_KAFKA_SASL_PASSWORD",
    "ESCALATION_KAFKA_SASL_PASSWORD_FILE",
    "ESCALATION_KAFKA_SSL_CA_FILE",
    "ESCALATION_KAFKA_SSL_CERT_FILE",
    "ESCALATION_KAFKA_SSL_KEY_FILE",
)


@dataclass(frozen=True)
class GrpcTls:
    """Files of the gRPC server's identity; with ``client_ca_file`` clients must present a certificate (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class PemIdentity:
    """A certificate chain and its private key, as PEM bytes, known to belong together; ``leaf`` is the first."""

    certificate_chain: bytes
    private_key: bytes
    leaf: x509.Certificate


class CertificateNotYetValid(ValueError):
    """The certificate's notBefore is in the future (``not_before``, UTC): usable later, not now."""

    def __init__(self, message: str, not_before: datetime.datetime) -> None:
        super().__init__(message)
        self.not_before = not_before


def read_identity(cert_file: Path, key_file: Path, now: datetime.datetime | None = None) -> PemIdentity:
    """Reads and checks a PEM certificate chain and its private key, valid at ``now`` (UTC; default: the clock).

    Raises ValueError (one line: which file, what is wrong) when a file is unreadable, does not hold a
    PEM certificate/key, the key is not the first certificate's, or that certificate has expired
    (notAfter passed); CertificateNotYetValid (a ValueError) when its notBefore is still ahead. A peer
    refuses such a certificate anyway (RFC 5280 §4.1.2.5), so serving it only moves the error to every
    client's handshake (CERTIFICATE_VERIFY_FAILED) where the operator does not see it.
    """
    chain, key = _read(cert_file), _read(key_file)
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as exc:
        raise ValueError(f"{cert_file} holds no PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{key_file} holds no unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.PEM, public) != leaf.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise ValueError(f"the key in {key_file} does not belong to the certificate in {cert_file}")
    now = now or datetime.datetime.now(datetime.UTC)
    if now > leaf.not_valid_after_utc:
        raise ValueError(f"the certificate in {cert_file} expired at {leaf.not_valid_after_utc.isoformat()} (notAfter)")
    if now < leaf.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"the certificate in {cert_file} is not valid before {leaf.not_valid_before_utc.isoformat()} (notBefore)",
            leaf.not_valid_before_utc,
        )
    return PemIdentity(certificate_chain=chain, private_key=key, leaf=leaf)


def describe(certificate: x509.Certificate) -> dict[str, object]:
    """What an operator needs to tell certificates apart in a log line: subject (RFC 4514), DNS/IP SANs,
    notAfter (ISO 8601, UTC) and serial (hex)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans: list[str] = []
    else:
        sans = [str(n) for n in names.get_values_for_type(x509.DNSName)]
        sans += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return {
        "subject": certificate.subject.rfc4514_string(),
        "sans": sans,
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "serial": format(certificate.serial_number, "x"),
    }


def read_ca(ca_file: Path) -> bytes:
    """PEM CA certificates (one or more); ValueError when unreadable or not PEM certificates."""
    data = _read(ca_file)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{ca_file} holds no PEM CA certificate ({exc})") from None
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def grpc_tls(env: Mapping[str, str], errors: list[str]) -> GrpcTls | None:
    """The gRPC TLS settings, or None (plaintext) when no certificate is configured; problems go to ``errors``."""
    cert, key, ca = (env.get(name, "") for name in GRPC_TLS_VARIABLES)
    if not (cert or key or ca):
        return None
    if not (cert and key):
        errors.append(
            "ESCALATION_GRPC_TLS_CERT_FILE and ESCALATION_GRPC_TLS_KEY_FILE must be set together"
            + (" (ESCALATION_GRPC_TLS_CLIENT_CA_FILE needs them)" if ca and not (cert or key) else "")
        )
        return None
    try:
        read_identity(Path(cert), Path(key))
    except ValueError as exc:
        errors.append(f"ESCALATION_GRPC_TLS_CERT_FILE/ESCALATION_GRPC_TLS_KEY_FILE: {exc}")
    if ca:
        try:
            read_ca(Path(ca))
        except ValueError as exc:
            errors.append(f"ESCALATION_GRPC_TLS_CLIENT_CA_FILE: {exc}")
    return GrpcTls(Path(cert), Path(key), Path(ca) if ca else None)


@dataclass(frozen=True)
class KafkaSecurity:
    """How the Kafka clients authenticate and encrypt (aiokafka's ``security_protocol`` and friends)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    # None: the system's trust store (with SSL/SASL_SSL).
    ca_file: Path | None = None
    # Client certificate for brokers that require one (ssl.client.auth=required).
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (hostname checked), or None without TLS; raises OSError/ssl.SSLError on bad files."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def __repr__(self) -> str:  # never print the password (e.g. in a traceback's locals)
        return f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r})"


def _secret(env: Mapping[str, str], name: str, errors: list[str]) -> str | None:
    """``name`` or the contents of ``name``_FILE (one trailing newline stripped), not both."""
    value, file = env.get(name, ""), env.get(name + "_FILE", "")
    if value and file:
        errors.append(f"set {name} or {name}_FILE, not both")
        return None
    if file:
        try:
            return Path(file).read_text().removesuffix("\n") or None
        except OSError as exc:
            errors.append(f"{name}_FILE={file!r} cannot be read: {exc.strerror or exc}")
            return None
    return value or None


def kafka_security(env: Mapping[str, str], errors: list[str]) -> KafkaSecurity:
    """The Kafka security settings; every inconsistency (e.g. SASL_SSL without credentials) goes to ``errors``."""
    raw_protocol = env.get("ESCALATION_KAFKA_SECURITY_PROTOCOL", "") or "PLAINTEXT"
    protocol = raw_protocol.upper()
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        choices = ", ".join(KAFKA_SECURITY_PROTOCOLS)
        errors.append(f"ESCALATION_KAFKA_SECURITY_PROTOCOL={raw_protocol!r} is invalid: one of {choices}")
        protocol = "PLAINTEXT"
    raw_mechanism = env.get("ESCALATION_KAFKA_SASL_MECHANISM", "")
    mechanism = raw_mechanism.upper() or None
    if mechanism is not None and mechanism not in KAFKA_SASL_MECHANISMS:
        errors.append(
            f"ESCALATION_KAFKA_SASL_MECHANISM={raw_mechanism!r} is invalid: one of {', '.join(KAFKA_SASL_MECHANISMS)}"
        )
        mechanism = None
    username = _secret(env, "ESCALATION_KAFKA_SASL_USERNAME", errors)
    password = _secret(env, "ESCALATION_KAFKA_SASL_PASSWORD", errors)
    files = {
        name: Path(env[name]) if env.get(name) else None
        for name in ("ESCALATION_KAFKA_SSL_CA_FILE", "ESCALATION_KAFKA_SSL_CERT_FILE", "ESCALATION_KAFKA_SSL_KEY_FILE")
    }
    security = KafkaSecurity(
        protocol,
        mechanism,
        username,
        password,
        files["ESCALATION_KAFKA_SSL_CA_FILE"],
        files["ESCALATION_KAFKA_SSL_CERT_FILE"],
        files["ESCALATION_KAFKA_SSL_KEY_FILE"],
    )
    if security.uses_sasl:
        missing = [
            name
            for name, value in (
                ("ESCALATION_KAFKA_SASL_MECHANISM", mechanism or raw_mechanism),
                ("ESCALATION_KAFKA_SASL_USERNAME[_FILE]", username),
                ("ESCALATION_KAFKA_SASL_PASSWORD[_FILE]", password),
            )
            if not value
        ]
        if missing:
            errors.append(f"ESCALATION_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
    elif mechanism or username or password:
        errors.append(f"SASL settings are set but ESCALATION_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL")
    if not security.uses_tls and any(files.values()):
        errors.append(
            f"ESCALATION_KAFKA_SSL_* files are set but ESCALATION_KAFKA_SECURITY_PROTOCOL={protocol} has no TLS"
        )
    elif security.uses_tls:
        if (security.cert_file is None) != (security.key_file is None):
            errors.append("ESCALATION_KAFKA_SSL_CERT_FILE and ESCALATION_KAFKA_SSL_KEY_FILE must be set together")
        else:
            _check_kafka_files(security, errors)
    return security


def _check_kafka_files(security: KafkaSecurity, errors: list[str]) -> None:
    try:
        if security.ca_file is not None:
            read_ca(security.ca_file)
        if security.cert_file is not None and security.key_file is not None:
            read_identity(security.cert_file, security.key_file)
        security.ssl_context()
    except ValueError as exc:
        errors.append(f"ESCALATION_KAFKA_SSL_*: {exc}")
    except (OSError, ssl.SSLError) as exc:
        errors.append(f"ESCALATION_KAFKA_SSL_* files cannot be used: {exc}")
