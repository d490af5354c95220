"""Configuration: every bad value is one clear line naming its variable."""

from __future__ import annotations

import pytest

from escalation import config

SECRET = "s" * 32


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ESCALATION_GRPC_ADDR": "nonsense"}, "ESCALATION_GRPC_ADDR"),
        ({"ESCALATION_METRICS_ADDR": "host:99999"}, "ESCALATION_METRICS_ADDR"),
        ({"ESCALATION_DATABASE_URL": "mysql://x"}, "ESCALATION_DATABASE_URL"),
        ({"ESCALATION_KAFKA_BOOTSTRAP": "a:1,b"}, "ESCALATION_KAFKA_BOOTSTRAP"),
        ({"ESCALATION_KAFKA_IDEMPOTENCE": "maybe"}, "ESCALATION_KAFKA_IDEMPOTENCE"),
        ({"ESCALATION_DB_POOL_MAX": "0"}, "ESCALATION_DB_POOL_MAX"),
        ({"ESCALATION_DB_POOL_MIN": "5", "ESCALATION_DB_POOL_MAX": "2"}, "ESCALATION_DB_POOL_MIN"),
        ({"ESCALATION_LOG_FORMAT": "xml"}, "ESCALATION_LOG_FORMAT"),
        ({"ESCALATION_SHUTDOWN_GRACE_SECONDS": "-1"}, "ESCALATION_SHUTDOWN_GRACE_SECONDS"),
        ({"ESCALATION_JWT_SECRET": "short"}, "ESCALATION_JWT_SECRET"),
        ({"ESCALATION_JWT_ALGORITHM": "none", "ESCALATION_JWT_SECRET": SECRET}, "ESCALATION_JWT_ALGORITHM"),
        ({"ESCALATION_JWT_ALGORITHM": "RS256", "ESCALATION_JWT_PUBLIC_KEY": "nope"}, "ESCALATION_JWT_PUBLIC_KEY"),
        (
            {"ESCALATION_JWT_ALGORITHM": "RS256", "ESCALATION_JWT_PUBLIC_KEY_FILE": "/no/such.pem"},
            "ESCALATION_JWT_PUBLIC_KEY_FILE",
        ),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(env)
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_defaults_match_the_spec() -> None:
    settings = config.load({})
    assert settings.grpc_addr == "0.0.0.0:50051"
    assert settings.metrics_addr == "0.0.0.0:9464"
    assert settings.kafka_idempotence is True
    assert settings.jwt is None


def test_serve_needs_a_database_and_a_jwt_key() -> None:
    settings = config.load({})
    with pytest.raises(config.ConfigError, match="ESCALATION_DATABASE_URL"):
        settings.require_database_url()
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_SECRET"):
        settings.require_jwt()


def test_values_are_parsed() -> None:
    settings = config.load(
        {
            "ESCALATION_DATABASE_URL": "postgresql://u@h:5432/db",
            "ESCALATION_KAFKA_BOOTSTRAP": "k1:9092, k2:9092",
            "ESCALATION_KAFKA_IDEMPOTENCE": "off",
            "ESCALATION_LOG_FORMAT": "CONSOLE",
            "ESCALATION_JWT_SECRET": SECRET,
            "ESCALATION_JWT_AUDIENCE": "escalation",
        }
    )
    assert settings.kafka_idempotence is False
    assert settings.log_format == "console"
    jwt = settings.require_jwt()
    assert (jwt.algorithm, jwt.key, jwt.audience) == ("HS256", SECRET, "escalation")


@pytest.mark.parametrize(
    "env",
    [
        {"ESCALATION_GRPC_ADDR": "nonsense", "ESCALATION_LOG_FORMAT": "xml"},
        {
            "ESCALATION_DATABASE_URL": "mysql://x",
            "ESCALATION_DB_POOL_MAX": "0",
            "ESCALATION_JWT_SECRET": "short",
            "ESCALATION_OUTBOX_BATCH_SIZE": "-3",
        },
        {
            "ESCALATION_DB_POOL_MIN": "5",
            "ESCALATION_DB_POOL_MAX": "2",
            "ESCALATION_KAFKA_BOOTSTRAP": "a:1,b",
            "ESCALATION_JWT_ALGORITHM": "RS256",
            "ESCALATION_JWT_PUBLIC_KEY": "nope",
        },
    ],
)
def test_every_bad_variable_is_reported_at_once_in_one_line(env: dict[str, str]) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(env)
    message = str(caught.value)
    assert "\n" not in message
    bad = set(env) - {"ESCALATION_JWT_ALGORITHM"}  # RS256 is valid: the key is what is wrong
    assert {name for name in bad if name in message} == bad
    assert message.startswith(f"{message.count('; ') + 1} invalid variables: ")
