"""ESCALATION_JWT_JWKS_URL: alone or beside a static key, keys only over https (issue 11 §3)."""

from __future__ import annotations

import pytest

from escalation import config


@pytest.mark.parametrize(
    "url", ["https://idp.example.com/.well-known/jwks.json", "http://127.0.0.1:8080/jwks", "http://localhost/jwks"]
)
def test_a_jwks_url_alone_configures_jwt(url: str) -> None:
    jwt = config.load({"ESCALATION_JWT_JWKS_URL": url}).require_jwt()
    assert (jwt.jwks_url, jwt.key) == (url, "")
    assert (jwt.jwks_cache_seconds, jwt.jwks_min_refresh_seconds) == (300.0, 30.0)


def test_a_jwks_url_beside_a_static_secret_keeps_the_secret() -> None:
    jwt = config.load({"ESCALATION_JWT_JWKS_URL": "https://idp/jwks", "ESCALATION_JWT_SECRET": "s" * 32}).require_jwt()
    assert (jwt.key, jwt.algorithm) == ("s" * 32, "HS256")


@pytest.mark.parametrize(
    "url", ["http://idp.example.com/jwks", "ftp://idp/jwks", "https://", "idp.example.com/jwks", "http://10.0.0.1/j"]
)
def test_keys_only_over_https_except_on_loopback(url: str) -> None:
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_JWKS_URL"):
        config.load({"ESCALATION_JWT_JWKS_URL": url})


def test_serve_without_any_key_names_the_jwks_option() -> None:
    with pytest.raises(config.ConfigError, match="ESCALATION_JWT_JWKS_URL"):
        config.load({}).require_jwt()
