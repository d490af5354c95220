"""Token verification: identity only from a verified token with sub, role and exp."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from escalation import auth, errors
from escalation.config import JwtSettings

SECRET = "k" * 40
HS = JwtSettings(algorithm="HS256", key=SECRET)


def _verify(token: str, settings: JwtSettings = HS) -> auth.Identity:
    return auth.TokenVerifier(settings).verify(f"Bearer {token}")


def test_minted_merchant_token_round_trips() -> None:
    token = auth.mint(key=SECRET, algorithm="HS256", subject="a1", role=auth.Role.MERCHANT, merchant_id="m1")
    assert _verify(token) == auth.Identity("a1", auth.Role.MERCHANT, "m1")


def test_merchant_id_claim_is_ignored_for_other_roles() -> None:
    token = jwt.encode({"sub": "p1", "role": "platform", "merchant_id": "m1", "exp": time.time() + 60}, SECRET)
    assert _verify(token) == auth.Identity("p1", auth.Role.PLATFORM, None)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a", "role": "ops"}, "TOKEN_INVALID"),  # no exp
        ({"role": "ops", "exp": 4e9}, "TOKEN_INVALID"),  # no sub
        ({"sub": "a", "exp": 4e9}, "TOKEN_INVALID"),  # no role
        ({"sub": "a", "role": "admin", "exp": 4e9}, "TOKEN_INVALID"),
        ({"sub": "a b", "role": "ops", "exp": 4e9}, "TOKEN_INVALID"),
        ({"sub": "a", "role": "merchant", "exp": 4e9}, "TOKEN_INVALID"),  # merchant without merchant_id
        ({"sub": "a", "role": "ops", "exp": time.time() - 3600}, "TOKEN_EXPIRED"),
    ],
)
def test_bad_claims_are_unauthenticated(claims: dict[str, object], reason: str) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        _verify(jwt.encode(claims, SECRET))
    assert caught.value.reason == reason


def test_wrong_key_and_alg_none_are_rejected() -> None:
    claims = {"sub": "a", "role": "ops", "exp": 4e9}
    with pytest.raises(errors.Unauthenticated):
        _verify(jwt.encode(claims, "x" * 40))
    with pytest.raises(errors.Unauthenticated):
        _verify(jwt.encode(claims, "", algorithm="none"))


@pytest.mark.parametrize(
    ("header", "reason"), [(None, "TOKEN_MISSING"), ("", "TOKEN_MISSING"), ("Token abc", "TOKEN_MALFORMED")]
)
def test_missing_or_malformed_header(header: str | None, reason: str) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        auth.TokenVerifier(HS).verify(header)
    assert caught.value.reason == reason


def test_rs256_verifies_with_the_public_key_only() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    token = auth.mint(key=private_pem, algorithm="RS256", subject="ops-1", role=auth.Role.OPS)
    settings = JwtSettings(algorithm="RS256", key=public_pem)
    assert _verify(token, settings) == auth.Identity("ops-1", auth.Role.OPS)
    # An HS256 token signed with the public key as secret must not pass (algorithm confusion).
    forged = jwt.encode({"sub": "x", "role": "ops", "exp": 4e9}, "p" * 40, algorithm="HS256")
    with pytest.raises(errors.Unauthenticated):
        _verify(forged, settings)


def test_audience_and_issuer_are_enforced_when_configured() -> None:
    settings = JwtSettings(algorithm="HS256", key=SECRET, audience="escalation", issuer="idp")
    good = auth.mint(
        key=SECRET, algorithm="HS256", subject="a", role=auth.Role.OPS, audience="escalation", issuer="idp"
    )
    assert _verify(good, settings).subject == "a"
    bad = auth.mint(key=SECRET, algorithm="HS256", subject="a", role=auth.Role.OPS, audience="other", issuer="idp")
    with pytest.raises(errors.Unauthenticated):
        _verify(bad, settings)


def test_a_remembered_token_still_expires() -> None:
    verifier = auth.TokenVerifier(JwtSettings(algorithm="HS256", key=SECRET, leeway_seconds=0))
    now = time.time()
    token = auth.mint(key=SECRET, algorithm="HS256", subject="a", role=auth.Role.OPS, ttl_seconds=1, now=now)
    assert verifier.verify(f"Bearer {token}").subject == "a"
    assert verifier.verify(f"Bearer {token}").subject == "a"  # from memory
    time.sleep(1.1)
    with pytest.raises(errors.Unauthenticated) as caught:
        verifier.verify(f"Bearer {token}")
    assert caught.value.reason == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "odd",
    [
        {"exp": 10**400},
        {"exp": -(10**400)},
        {"exp": "4000000000"},
        {"exp": True},
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": None},
        {"exp": [4e9]},
        {"iat": 10**400},
        {"iat": False},
        {"nbf": "0"},
        {"nbf": float("-inf")},
        {"sub": 7},
        {"sub": ["a"]},
        {"role": None},
        {"merchant_id": 5},
        {"iss": {}},
        {"jti": 1},
        {"aud": 5},
        {"aud": ["a", 5]},
    ],
)
def test_every_malformed_claim_is_unauthenticated_token_invalid(odd: dict[str, object]) -> None:
    # SPEC §3: a validly signed token whose claims have the wrong type or range is a bad token, never
    # an OverflowError (exp = 10**400 used to escape as UNKNOWN) nor a claim coerced to fit.
    claims = {"sub": "a", "role": "merchant", "merchant_id": "m", "exp": int(time.time()) + 60} | odd
    payload = json.dumps(claims, allow_nan=True)
    token = jwt.api_jws.encode(payload.encode(), SECRET, algorithm="HS256")
    with pytest.raises(errors.Unauthenticated) as caught:
        _verify(token)
    assert caught.value.reason == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "shape",
    [
        "Bearer {t}\n",
        "Bearer {t} ",
        "Bearer  {t}",
        " Bearer {t}",
        "Bearer\t{t}",
        "Bearer {t}\r\n",
        "Bearer {t}\u2028",
        "Bearer {t} {t}",
        "Bearer\n{t}",
        "{t}",
    ],
)
def test_the_authorization_value_matches_as_a_whole(shape: str) -> None:
    # SPEC §3: credentials parse strictly; "Bearer <jwt>\n" used to pass once stripped.
    token = auth.mint(key=SECRET, algorithm="HS256", subject="a1", role=auth.Role.OPS)
    verifier = auth.TokenVerifier(HS)
    assert verifier.verify(f"Bearer {token}").subject == "a1"
    assert verifier.verify(f"bearer {token}").subject == "a1"  # the scheme is case-insensitive (RFC 7235)
    with pytest.raises(errors.Unauthenticated) as caught:
        verifier.verify(shape.format(t=token))
    assert caught.value.reason == "TOKEN_MALFORMED"
