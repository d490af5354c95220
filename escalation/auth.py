"""Bearer-token identity: verification (server) and minting (development CLI).

Identity comes only from a verified token, never from request fields (SPEC §3).
"""

from __future__ import annotations

import enum
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import jwt

from escalation import errors, jwks
from escalation.config import JwtSettings
from escalation.domain.validation import IDENTIFIER, MAX_TIMESTAMP_SECONDS

_ID = IDENTIFIER  # matched whole (fullmatch): no trailing newline (SPEC §3)
# RFC 6750 §2.1: the scheme in any case, one space, a b64token. Matched whole: no surrounding or inner
# whitespace, nothing after the token. (Whether the token is a valid JWT is the decoder's verdict.)
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9._~+/-]+=*)")


class Role(enum.StrEnum):
    PLATFORM = "platform"
    PLATFORM_SUPERVISOR = "platform_supervisor"
    MERCHANT = "merchant"
    OPS = "ops"


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the verified token says."""

    subject: str
    role: Role
    merchant_id: str | None = None
    # Seconds since the epoch after which the token no longer authenticates: its exp plus the configured
    # leeway (ESCALATION_JWT_LEEWAY_SECONDS). Streams end then (SPEC §3); None for an identity not
    # made from a token. Not part of who the caller is, so not compared.
    valid_until: float | None = field(default=None, compare=False)

    @property
    def is_platform(self) -> bool:
        return self.role in (Role.PLATFORM, Role.PLATFORM_SUPERVISOR)


class TokenVerifier:
    """Verifies ``authorization: Bearer <JWT>`` values against the configured key.

    Clients send the same token on every call; a verified token is remembered until it expires, which
    saves the signature check (a noticeable share of a cheap RPC's CPU).
    """

    _CACHE_SIZE = 10_000

    def __init__(self, settings: JwtSettings, keys: jwks.JwksKeys | None = None) -> None:
        self._settings = settings
        self._verified: dict[str, tuple[Identity, float]] = {}
        self._keys = keys
        self._keys_generation = 0

    async def verify_async(self, authorization: str | None) -> Identity:
        """``verify``, after fetching the JWKS (off the event loop) if the token names an unknown ``kid``."""
        if self._keys is not None and authorization not in self._verified:
            kid = jwks.kid_of(authorization)
            if kid is not None:
                await self._keys.key_or_refresh(kid)
        return self.verify(authorization)

    def verify(self, authorization: str | None) -> Identity:
        if self._keys is not None and self._keys.generation != self._keys_generation:
            self._verified.clear()  # a key was rotated out: what it signed must be checked again
            self._keys_generation = self._keys.generation
        cached = self._verified.get(authorization or "")
        if cached is not None:
            identity, expires = cached
            if time.time() < expires + self._settings.leeway_seconds:
                return identity
            del self._verified[authorization or ""]
        identity, expires = self._verify(authorization)
        if len(self._verified) >= self._CACHE_SIZE:
            self._verified.clear()
        self._verified[authorization or ""] = (identity, expires)
        return identity

    def _verify(self, authorization: str | None) -> tuple[Identity, float]:
        if not authorization:
            raise errors.Unauthenticated("missing authorization metadata (Bearer token)", reason="TOKEN_MISSING")
        bearer = _BEARER.fullmatch(authorization)
        if bearer is None:
            raise errors.Unauthenticated("authorization must be 'Bearer <token>'", reason="TOKEN_MALFORMED")
        token = bearer.group(1)
        key, algorithm = self._signing_key(token)
        try:
            # The signature first, claim checks skipped: PyJWT's own checks coerce a claim with int()
            # (exp "4000000000" passes, exp 10**400 overflows later), so the shapes are ours to check.
            unchecked: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], options=_SIGNATURE_ONLY)
            check_claim_shapes(unchecked)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError as exc:
            raise errors.Unauthenticated(f"the token is invalid: {exc}", reason="TOKEN_INVALID") from None
        except (ValueError, TypeError, OverflowError, RecursionError):
            # Whatever a malformed token makes the decoder raise, it is the token's fault (SPEC §3).
            raise errors.Unauthenticated("the token is invalid", reason="TOKEN_INVALID") from None
        expires = float(claims["exp"])
        identity = replace(identity_from_claims(claims), valid_until=expires + self._settings.leeway_seconds)
        return identity, expires

    def _signing_key(self, token: str) -> tuple[Any, str]:
        """The JWKS key the token's ``kid`` names, else the static key; Unauthenticated when there is neither."""
        kid = jwks.kid_of(f"Bearer {token}") if self._keys is not None else None
        found = self._keys.key(kid) if self._keys is not None and kid is not None else None
        if found is not None:
            return found.key, found.algorithm_name
        if not self._settings.key:
            raise errors.Unauthenticated(f"the token's signing key (kid {kid!r}) is unknown", reason="TOKEN_INVALID")
        return self._settings.key, self._settings.algorithm


_SIGNATURE_ONLY: jwt.types.Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}
# JWT NumericDates we accept: JSON numbers (not strings or booleans), finite, 1970-01-01 through
# 9999-12-31 (google.protobuf.Timestamp's upper bound), so no later arithmetic can overflow.
_MAX_NUMERIC_DATE = MAX_TIMESTAMP_SECONDS
_DATE_CLAIMS = ("exp", "iat", "nbf")
_TEXT_CLAIMS = ("sub", "role", "merchant_id", "iss", "jti")


def _numeric_date(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # The range first: math.isfinite(10**400) itself raises OverflowError; NaN fails every comparison.
    return 0 <= value <= _MAX_NUMERIC_DATE and math.isfinite(value)


def check_claim_shapes(claims: object) -> None:
    """Refuses a payload whose registered or role claims have the wrong JSON type (SPEC §3, RFC 7519 §4.1).

    ``exp`` (required), ``iat`` and ``nbf`` must be numbers 0..253402300799 (seconds since the epoch);
    ``sub``, ``role``, ``merchant_id``, ``iss`` and ``jti`` strings when present; ``aud`` a string or a
    list of strings. Raises errors.Unauthenticated (reason TOKEN_INVALID), never anything else.
    """
    if not isinstance(claims, dict):
        raise errors.Unauthenticated("the token's payload is not a JSON object", reason="TOKEN_INVALID")
    if "exp" not in claims:
        raise errors.Unauthenticated("the token has no exp claim", reason="TOKEN_INVALID")
    for name in _DATE_CLAIMS:
        if name in claims and not _numeric_date(claims[name]):
            raise errors.Unauthenticated(f"the token's {name} claim is not a valid time", reason="TOKEN_INVALID")
    for name in _TEXT_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise errors.Unauthenticated(f"the token's {name} claim is not a string", reason="TOKEN_INVALID")
    audience = claims.get("aud")
    if audience is not None and not (
        isinstance(audience, str) or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
    ):
        raise errors.Unauthenticated("the token's aud claim is not a string or list of strings", reason="TOKEN_INVALID")


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    """Checks the claims' shape: sub and merchant_id identifiers, a known role."""
    subject, role_name, merchant_id = claims.get("sub"), claims.get("role"), claims.get("merchant_id")
    if not isinstance(subject, str) or not _ID.fullmatch(subject):
        raise errors.Unauthenticated("the token's sub is not a valid agent id", reason="TOKEN_INVALID")
    try:
        role = Role(str(role_name))
    except ValueError:
        raise errors.Unauthenticated(f"the token's role {role_name!r} is unknown", reason="TOKEN_INVALID") from None
    if role is Role.MERCHANT:
        if not isinstance(merchant_id, str) or not _ID.fullmatch(merchant_id):
            raise errors.Unauthenticated("a merchant token needs a valid merchant_id claim", reason="TOKEN_INVALID")
        return Identity(subject, role, merchant_id)
    return Identity(subject, role, None)


def mint(
    *,
    key: str,
    algorithm: str,
    subject: str,
    role: Role,
    merchant_id: str | None = None,
    ttl_seconds: int = 24 * 3600,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for development and tests; production tokens come from the platform's IdP."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": subject, "role": role.value, "iat": issued, "exp": issued + ttl_seconds}
    if merchant_id is not None:
        claims["merchant_id"] = merchant_id
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm)
