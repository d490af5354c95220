"""Configuration never prints a secret: not in the one-line error, not in a repr of the settings.

An operator pastes the error line into a ticket or a chat, and a traceback's locals or a debug log
show ``repr(settings)``: neither may carry the database password, the HS256 secret or the SASL
password (docs/production.md "Secrets").
"""

from __future__ import annotations

import pytest

from escalation import config
from tests.conftest import JWT_SECRET

SECRET = "S3cretDbPw"


def _error(env: dict[str, str]) -> str:
    with pytest.raises(config.ConfigError) as raised:
        config.load(env)
    return str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresq://app:{SECRET}@db.internal:5432/escalation",  # a typo in the scheme
        f"app:{SECRET}@db.internal:5432/escalation",  # no scheme at all
        f"postgresql//app:{SECRET}@db.internal/escalation",  # "://" mistyped
        f"mysql://app:{SECRET}@with@at@db.internal/escalation",  # an '@' inside the password
        f"mysql://app:{SECRET}\n@db.internal/escalation",  # a newline pasted in
        f"mysql://db.internal/escalation?user=app&password={SECRET}",  # libpq's query parameter
        f"mysql://db.internal/escalation?sslpassword={SECRET}&user=app",
    ],
)
def test_a_bad_database_url_is_named_without_its_password(url: str) -> None:
    message = _error({"ESCALATION_DATABASE_URL": url})
    assert message.startswith("ESCALATION_DATABASE_URL=")
    assert SECRET not in message
    assert "***" in message


def test_the_error_keeps_the_user_and_host_to_fix_the_url() -> None:
    message = _error({"ESCALATION_DATABASE_URL": f"postgresq://app:{SECRET}@db.internal:5432/escalation"})
    assert "'postgresq://app:***@db.internal:5432/escalation' is invalid" in message


def test_a_bad_jwks_url_is_named_without_its_credentials() -> None:
    message = _error({"ESCALATION_JWT_JWKS_URL": f"http://client:{SECRET}@idp.example.com/jwks"})
    assert "ESCALATION_JWT_JWKS_URL" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "env",
    [
        {"ESCALATION_JWT_SECRET": SECRET},  # too short for HS256
        {"ESCALATION_JWT_SECRET": SECRET * 4, "ESCALATION_JWT_ALGORITHM": "HS999"},
        {"ESCALATION_KAFKA_SASL_PASSWORD": SECRET},  # SASL settings without a SASL protocol
        {"ESCALATION_KAFKA_SASL_PASSWORD": SECRET, "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        {"ESCALATION_KAFKA_SASL_PASSWORD": SECRET, "ESCALATION_KAFKA_SASL_PASSWORD_FILE": "/nonexistent"},
    ],
)
def test_errors_about_secret_variables_never_show_them(env: dict[str, str]) -> None:
    assert SECRET not in _error(env)


@pytest.mark.parametrize(
    "name", ["ESCALATION_JWT_SECRET", "ESCALATION_KAFKA_SASL_PASSWORD", "ESCALATION_SOME_TOKEN", "X_PRIVATE_KEY"]
)
def test_a_secret_variable_value_is_hidden_whole(name: str) -> None:
    assert config.shown_value(name, f"{SECRET}:x@y") == config.HIDDEN


def test_the_repr_of_loaded_settings_holds_no_secret() -> None:
    settings = config.load(
        {
            "ESCALATION_DATABASE_URL": f"postgresql://app:{SECRET}@db.internal:5432/escalation",
            "ESCALATION_JWT_SECRET": JWT_SECRET,
            "ESCALATION_JWT_JWKS_URL": f"https://client:{SECRET}@idp.example.com/jwks",
            "ESCALATION_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "ESCALATION_KAFKA_SASL_MECHANISM": "PLAIN",
            "ESCALATION_KAFKA_SASL_USERNAME": "relay",
            "ESCALATION_KAFKA_SASL_PASSWORD": SECRET + "kafka",
        }
    )
    for shown in (repr(settings), str(settings), repr(settings.jwt)):
        assert SECRET not in shown
        assert JWT_SECRET not in shown
    assert settings.database_url is not None
    assert SECRET in settings.database_url  # still there for the code that connects
