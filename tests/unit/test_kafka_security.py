"""Kafka TLS/SASL settings: validated at start in one line, and they reach the real aiokafka clients (issue 11 §2).

The producer (relay: tickets and merchant warnings), the consumer (`tickets tail`) and the admin client
(topic creation) are built from the environment exactly as the CLI builds them, then their aiokafka
client is inspected. No broker is contacted: constructing a client does not connect.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from escalation import cli, config
from escalation.bus import kafka
from tests.certificates import CertificateAuthority

BOOTSTRAP = {"ESCALATION_KAFKA_BOOTSTRAP": "kafka-1:9093,kafka-2:9093"}


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    return CertificateAuthority("kafka-ca").write(tmp_path, "kafka-ca")


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[dict[str, str]], list[Any]]]:
    """Builds the three clients from an environment as the CLI does; stops them all afterwards."""
    made: list[AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient] = []

    def build(env: dict[str, str]) -> list[Any]:
        settings = cli._kafka_settings(config.load(BOOTSTRAP | env))
        producer = kafka.producer(settings)
        consumer = kafka.consumer(settings, kafka.TICKETS_TOPIC, "g", from_beginning=True)
        admin = AIOKafkaAdminClient(**kafka.connection_kwargs(settings))
        made.extend((producer, consumer, admin))
        return [producer.client, consumer._client, admin._client]

    yield build
    for client in made:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "scram-sha-512"])
async def test_sasl_ssl_reaches_producer_consumer_and_admin(
    clients: Callable[[dict[str, str]], list[Any]], mechanism: str, ca_file: Path
) -> None:
    env = {
        "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ESCALATION_KAFKA_SASL_MECHANISM": mechanism,
        "ESCALATION_KAFKA_SASL_USERNAME": "escalation",
        "ESCALATION_KAFKA_SASL_PASSWORD": "pa ss:word",
        "ESCALATION_KAFKA_SSL_CA_FILE": str(ca_file),
    }
    for client in clients(env):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == mechanism.upper()
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("escalation", "pa ss:word")
        context = client._ssl_context
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "kafka-ca"),),)]


async def test_credentials_from_files_drop_one_trailing_newline(
    clients: Callable[[dict[str, str]], list[Any]], tmp_path: Path
) -> None:
    (tmp_path / "user").write_text("escalation\n")
    (tmp_path / "password").write_text("s3cret \n")  # a mounted Secret often ends in a newline
    env = {
        "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ESCALATION_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "ESCALATION_KAFKA_SASL_USERNAME_FILE": str(tmp_path / "user"),
        "ESCALATION_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
    }
    for client in clients(env):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._ssl_context is None
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("escalation", "s3cret ")


async def test_ssl_with_a_client_certificate(
    clients: Callable[[dict[str, str]], list[Any]], tmp_path: Path, ca_file: Path
) -> None:
    cert, key = CertificateAuthority("clients").issue("escalation", server=False).write(tmp_path, "client")
    env = {
        "ESCALATION_KAFKA_SECURITY_PROTOCOL": "ssl",
        "ESCALATION_KAFKA_SSL_CA_FILE": str(ca_file),
        "ESCALATION_KAFKA_SSL_CERT_FILE": str(cert),
        "ESCALATION_KAFKA_SSL_KEY_FILE": str(key),
    }
    for client in clients(env):
        assert client._security_protocol == "SSL"
        assert isinstance(client._ssl_context, ssl.SSLContext)


async def test_plaintext_by_default(
    clients: Callable[[dict[str, str]], list[Any]],
) -> None:
    for client in clients({}):
        assert client._security_protocol == "PLAINTEXT"
        assert client._ssl_context is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs ESCALATION_KAFKA_SASL_MECHANISM"),
        (
            {"ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN"},
            "needs ESCALATION_KAFKA_SASL_USERNAME[_FILE], ESCALATION_KAFKA_SASL_PASSWORD[_FILE]",
        ),
        (
            {
                "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN",
                "ESCALATION_KAFKA_SASL_USERNAME": "u",
            },
            "needs ESCALATION_KAFKA_SASL_PASSWORD[_FILE]",
        ),
        ({"ESCALATION_KAFKA_SECURITY_PROTOCOL": "TLS"}, "ESCALATION_KAFKA_SECURITY_PROTOCOL='TLS' is invalid"),
        (
            {"ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ESCALATION_KAFKA_SASL_MECHANISM": "GSSAPI"},
            "ESCALATION_KAFKA_SASL_MECHANISM='GSSAPI' is invalid",
        ),
        ({"ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN"}, "PLAINTEXT does not use SASL"),
        ({"ESCALATION_KAFKA_SSL_CA_FILE": "/etc/ca.pem"}, "PLAINTEXT has no TLS"),
        (
            {"ESCALATION_KAFKA_SECURITY_PROTOCOL": "SSL", "ESCALATION_KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "/nonexistent/ca.pem",
        ),
        (
            {
                "ESCALATION_KAFKA_SASL_PASSWORD": "p",
                "ESCALATION_KAFKA_SASL_PASSWORD_FILE": "/run/secrets/p",
            },
            "ESCALATION_KAFKA_SASL_PASSWORD or ESCALATION_KAFKA_SASL_PASSWORD_FILE, not both",
        ),
        ({"ESCALATION_KAFKA_SECURITY_PROTOCOL": "SSL", "ESCALATION_KAFKA_SSL_CERT_FILE": "/c.pem"}, "set together"),
    ],
)
def test_inconsistent_settings_are_one_line_at_start(env: dict[str, str], says: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(BOOTSTRAP | env)
    message = str(caught.value)
    assert "\n" not in message
    assert says in message


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "says"),
    [
        (datetime.timedelta(days=-30), datetime.timedelta(days=-1), "expired at"),
        (datetime.timedelta(hours=-2), datetime.timedelta(seconds=-5), "expired at"),
        (datetime.timedelta(hours=1), datetime.timedelta(days=30), "is not valid before"),
    ],
)
@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_client_certificate_outside_its_validity_is_one_line_at_start(
    tmp_path: Path,
    ca_file: Path,
    protocol: str,
    valid_from: datetime.timedelta,
    valid_until: datetime.timedelta,
    says: str,
) -> None:
    issued = CertificateAuthority("clients").issue(
        "escalation", server=False, valid_from=valid_from, valid_until=valid_until
    )
    cert, key = issued.write(tmp_path, "client")
    env = {
        "ESCALATION_KAFKA_SECURITY_PROTOCOL": protocol,
        "ESCALATION_KAFKA_SSL_CA_FILE": str(ca_file),
        "ESCALATION_KAFKA_SSL_CERT_FILE": str(cert),
        "ESCALATION_KAFKA_SSL_KEY_FILE": str(key),
    }
    if protocol == "SASL_SSL":
        env |= {
            "ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN",
            "ESCALATION_KAFKA_SASL_USERNAME": "u",
            "ESCALATION_KAFKA_SASL_PASSWORD": "p",
        }
    with pytest.raises(config.ConfigError) as caught:
        config.load(BOOTSTRAP | env)
    message = str(caught.value)
    assert "\n" not in message
    assert "ESCALATION_KAFKA_SSL_" in message
    assert says in message
    assert str(cert) in message


def test_the_password_is_never_in_the_settings_repr() -> None:
    settings = config.load(
        BOOTSTRAP
        | {
            "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN",
            "ESCALATION_KAFKA_SASL_USERNAME": "u",
            "ESCALATION_KAFKA_SASL_PASSWORD": "hunter2-secret",
        }
    )
    assert "hunter2-secret" not in repr(settings)
