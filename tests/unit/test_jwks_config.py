"""ESCALATION_JWT_JWKS_URL: alone or beside a static key, keys only over https (issue 11 §3)."""

from __future__ import annotations

import pytest

from escalation import config


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "https://[2001:db8::1]/jwks",
        "https://[2001:db8::1]:8443/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://127.0.0.2/jwks",
        "http://localhost/jwks",
        "http://[::1]/jwks",
        "http://[::1]:8080/jwks",
    ],
)
def test_a_jwks_url_alone_configures_jwt(url: str) -> None:
    jwt = config.load({"ESCALATION_JWT_JWKS_URL": url}).require_jwt()
    assert (jwt.jwks_url, jwt.key) == (url, "")
    assert (jwt.jwks_cache_seconds, jwt.jwks_min_refresh_seconds) == (300.0, 30.0)


def test_a_jwks_url_beside_a_static_secret_keeps_the_secret() -> None:
    jwt = config.load({"ESCALATION_JWT_JWKS_URL": "https://idp/jwks", "ESCALATION_JWT_SECRET": "s" * 32}).require_jwt()
    assert (jwt.key, jwt.algorithm) == ("s" * 32, "HS256")


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks",
        "ftp://idp/jwks",
        "https://",
        "idp.example.com/jwks",
        "http://10.0.0.1/j",
        "http://[2001:db8::1]/jwks",
        "http://127.0.0.1@idp.example.com/jwks",
        "http://localhost.example.com/jwks",
        "https://idp.example.com:99999/jwks",
    ],
)
def test_keys_only_over_https_except_on_loopback(url: str) -> None:
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_JWKS_URL"):
        config.load({"ESCALATION_JWT_JWKS_URL": url})


def test_serve_without_any_key_names_the_jwks_option() -> None:
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_JWKS_URL"):
        config.load({}).require_jwt()


@pytest.mark.parametrize("seconds", ["0", "0.5", "-1", "3601"])
def test_the_unknown_kid_refetch_interval_is_at_least_a_second(seconds: str) -> None:
    env = {"ESCALATION_JWT_JWKS_URL": "https://idp/jwks", "ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS": seconds}
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS"):
        config.load(env)


def test_a_one_second_refetch_interval_is_accepted() -> None:
    env = {"ESCALATION_JWT_JWKS_URL": "https://idp/jwks", "ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS": "1"}
    assert config.load(env).require_jwt().jwks_min_refresh_seconds == 1.0
